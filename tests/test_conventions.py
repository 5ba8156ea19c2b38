"""The README's conventions table, row by row: a hand-written update and its ``LangevinSampler`` line.

Each test runs the update as such code writes it (float64 tensors, plain torch) next to the
sampler built as the table says, for several steps on a small network's tensors (a weight matrix
and a bias: the multi-tensor op), feeding the hand-written update the sampler's own noise: the
contract normals of ``lpc_fast.rng`` at the sampler's seed and offsets (tensor ``i`` of a step at
``offset + sum_{j<i} ceil(numel_j / 4)``). Hand-written code of the Welling & Teh / Li et al. kind
*subtracts* its noise term (``theta -= lr * (... + xi / sqrt(lr))``); the normal law is symmetric,
so it is fed ``-xi`` for the sampler's ``xi``. The trajectories must then agree to rounding:
float64 everywhere except the preconditioner state, which the sampler keeps in float32 (relative
error ~6e-8 in ``v``, ~3e-8 in ``p``), hence 1e-6 for the preconditioned rows and 1e-12 otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lpc_fast import rng
from lpc_fast.sampler import LangevinSampler

STEPS = 5
N_DATA = 200  # data-set size N of the N x mean-loss rows


def _problem(seed: int = 0):
    """A 12 -> 3 softmax classifier's weights and a data set: the gradient source of every row."""
    g = torch.Generator().manual_seed(seed)
    w = 0.3 * torch.randn(3, 12, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(N_DATA, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N_DATA,), generator=g)
    return [w, b], x, y


def _mean_loss_grads(params, x, y, batch: int) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy of minibatch ``batch`` (16 examples) at ``params``."""
    idx = torch.arange(16) + 16 * (batch % (N_DATA // 16))
    ps = [p.detach().requires_grad_() for p in params]
    loss = F.cross_entropy(x[idx] @ ps[0].T + ps[1], y[idx])
    return list(torch.autograd.grad(loss, ps))


def _sampler_noise(sampler: LangevinSampler, params) -> list[torch.Tensor]:
    """The normals the sampler's next step draws for each tensor (one run: one group's tensors)."""
    offsets, _ = rng.foreach_offsets(sampler.offset, [p.numel() for p in params])
    return [
        rng.philox_normal_reference(p.numel(), seed=sampler.seed, offset=o).view(p.shape)
        for p, o in zip(params, offsets)
    ]


def _run(sampler_params, hand_params, make_sampler, hand_step, grads_for_sampler, tol):
    """Step both side by side; ``hand_step(params, grads, noise)`` updates the hand-written copy."""
    params, x, y = sampler_params
    sampler = make_sampler(params)
    for t in range(STEPS):
        noise = _sampler_noise(sampler, params)
        for p, gr in zip(params, grads_for_sampler(params, x, y, t)):
            p.grad = gr
        sampler.step()
        hand_step(hand_params, _mean_loss_grads(hand_params, x, y, t), noise)
        for p, q in zip(params, hand_params):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def _copies(seed: int = 0):
    params, x, y = _problem(seed)
    return (params, x, y), [p.clone() for p in params]


def test_sgld_welling_teh_style_is_lr_half():
    """``theta -= lr * (g / 2 + xi / sqrt(lr))`` is ``LangevinSampler(params, lr=lr / 2)``."""
    lr = 0.01
    problem, hand = _copies()

    def hand_step(params, grads, noise):
        for p, g, xi in zip(params, grads, noise):
            p.add_(-lr * (0.5 * g + (-xi) / math.sqrt(lr)))

    _run(
        problem, hand, lambda ps: LangevinSampler(ps, lr=lr / 2, seed=11), hand_step,
        lambda ps, x, y, t: _mean_loss_grads(ps, x, y, t), 1e-12,
    )  # fmt: skip


def test_psgld_li_et_al_style_is_preconditioned_without_bias_correction():
    """RMSprop-preconditioned SGLD (``V = alpha V + (1 - alpha) g^2``, ``G = 1 / (eps + sqrt(V))``,
    ``theta -= lr * (G g / 2 + sqrt(G) xi / sqrt(lr))``) is ``LangevinSampler(params, lr=lr / 2,
    mode="preconditioned", bias_correction=False, beta=alpha, eps=eps)``."""
    lr, alpha, eps = 0.01, 0.99, 1e-5
    problem, hand = _copies(1)
    square_avg = [torch.zeros_like(p) for p in hand]

    def hand_step(params, grads, noise):
        for p, g, xi, v in zip(params, grads, noise, square_avg):
            v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            avg = v.sqrt().add_(eps)
            p.add_(-lr * (0.5 * g / avg + (-xi) / (math.sqrt(lr) * avg.sqrt())))

    def make(ps):
        return LangevinSampler(
            ps, lr=lr / 2, mode="preconditioned", bias_correction=False, beta=alpha, eps=eps, seed=12
        )

    _run(problem, hand, make, hand_step, lambda ps, x, y, t: _mean_loss_grads(ps, x, y, t), 1e-6)


def test_gaussian_prior_added_to_the_gradient_is_weight_decay():
    """A prior N(0, sigma^2 I) added by hand (``g += theta / sigma^2``) is ``weight_decay=1 / sigma**2``."""
    lr, sigma = 0.01, 0.5
    problem, hand = _copies(2)

    def hand_step(params, grads, noise):
        for p, g, xi in zip(params, grads, noise):
            g = g + p / sigma**2
            p.add_(-lr * (0.5 * g + (-xi) / math.sqrt(lr)))

    _run(
        problem, hand, lambda ps: LangevinSampler(ps, lr=lr / 2, weight_decay=1 / sigma**2, seed=13),
        hand_step, lambda ps, x, y, t: _mean_loss_grads(ps, x, y, t), 1e-12,
    )  # fmt: skip


def test_n_times_mean_loss_equals_mean_loss_with_scaled_lr_temperature_and_weight_decay():
    """SGLD on the data set's energy ``N * mean loss + |theta|^2 / (2 sigma^2)`` (by hand) equals the
    sampler on the plain mean loss with ``lr=N * lr / 2, temperature=1 / N, weight_decay=1 / (N sigma^2)``."""
    lr, sigma = 1e-4, 0.5
    problem, hand = _copies(3)

    def hand_step(params, grads, noise):
        for p, g, xi in zip(params, grads, noise):
            g = N_DATA * g + p / sigma**2
            p.add_(-lr * (0.5 * g + (-xi) / math.sqrt(lr)))

    def make(ps):
        return LangevinSampler(
            ps, lr=N_DATA * lr / 2, temperature=1 / N_DATA, weight_decay=1 / (N_DATA * sigma**2), seed=14
        )

    _run(problem, hand, make, hand_step, lambda ps, x, y, t: _mean_loss_grads(ps, x, y, t), 1e-12)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_cold_posterior_temperature(temperature):
    """A tempered posterior ``p(theta | D)^(1/T)`` by hand (noise ``sqrt(T)`` times SGLD's) is
    ``temperature=T``; on the ``N * mean loss`` energy, as such code writes it."""
    lr = 1e-4
    problem, hand = _copies(4)

    def hand_step(params, grads, noise):
        for p, g, xi in zip(params, grads, noise):
            p.add_(-lr * (0.5 * N_DATA * g + math.sqrt(temperature) * (-xi) / math.sqrt(lr)))

    _run(
        problem, hand, lambda ps: LangevinSampler(ps, lr=lr / 2, temperature=temperature, seed=15),
        hand_step, lambda ps, x, y, t: [N_DATA * g for g in _mean_loss_grads(ps, x, y, t)], 1e-12,
    )  # fmt: skip
