"""Marginal log-likelihood by importance sampling, the ELBO and bits per dimension.

For a latent-variable model with joint ``log p(x, z)`` and a proposal ``r(z | x)``,

    log p(x) ~= log (1/K) sum_k exp(w_k),   w_k = log p(x, z_k) - log r(z_k | x),   z_k ~ r(. | x).

The estimate is computed in chunks of samples with a running log-sum-exp in float64, so K can be
large. Its standard error is the delta-method one: with normalised weights
``v_k = exp(w_k) / sum_j exp(w_j)``,

    se(log p_hat) ~= sd(exp(w)) / (sqrt(K) mean(exp(w))) = sqrt((K sum_k v_k^2 - 1) / (K - 1)).

The log of an unbiased estimate is biased low by about ``se^2 / 2`` (Jensen); it is a stochastic
lower bound that tightens as K grows or the proposal improves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "PROPOSAL_WIDEN",
    "ProposalFn",
    "bits_per_dim",
    "elbo",
    "fit_gaussian_proposal",
    "gaussian_proposal",
    "importance_log_likelihood",
]

#: ``proposal(num_samples, generator) -> (z [K, B, D], log_q [K, B])``
ProposalFn = Callable[[int, "torch.Generator | None"], tuple[torch.Tensor, torch.Tensor]]
LogJointFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Factor applied to a fitted posterior's std: a proposal with lighter tails than the posterior gives
#: an estimator with unbounded variance, a slightly wider one only costs a little efficiency.
PROPOSAL_WIDEN = 1.2

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_proposal(mu: torch.Tensor, log_sigma: torch.Tensor) -> ProposalFn:
    """A diagonal-Gaussian proposal ``r(z | x) = N(mu, diag(exp(log_sigma))^2)`` per data point.

    Parameters
    ----------
    mu, log_sigma
        Tensors ``[B, D]``: one Gaussian per data point.

    Returns
    -------
    callable
        ``proposal(k, generator) -> (z [k, B, D], log_q [k, B])``.
    """
    if mu.shape != log_sigma.shape or mu.dim() != 2:
        raise ValueError(
            f"mu and log_sigma must both be [B, D], got {tuple(mu.shape)}, {tuple(log_sigma.shape)}"
        )
    mu = mu.detach()
    log_sigma = log_sigma.detach()
    sigma = log_sigma.exp()
    const = -0.5 * mu.shape[1] * _LOG_2PI - log_sigma.sum(dim=1)

    def proposal(k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Draw on the generator's device so a CPU generator can drive a model on an accelerator.
        dev = generator.device if generator is not None else mu.device
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype, device=dev).to(mu.device)
        z = mu + sigma * eps
        log_q = const - 0.5 * eps.square().sum(dim=2)
        return z, log_q

    return proposal


def fit_gaussian_proposal(
    chain_samples: torch.Tensor, *, widen: float = PROPOSAL_WIDEN, min_std: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a diagonal Gaussian to Markov-chain samples of the posterior (encoder-free models).

    Parameters
    ----------
    chain_samples
        ``[T, B, D]``: T samples of the latents of each of B data points (burn-in already removed).
    widen
        Multiplier of the fitted std (default :data:`PROPOSAL_WIDEN` = 1.2) for heavier tails than
        the posterior.
    min_std
        Floor of the std, for chains that barely moved.

    Returns
    -------
    mu, log_sigma : Tensor
        ``[B, D]`` each.
    """
    if chain_samples.dim() != 3 or chain_samples.shape[0] < 2:
        raise ValueError(f"chain_samples must be [T >= 2, B, D], got {tuple(chain_samples.shape)}")
    s = chain_samples.detach()
    mu = s.mean(dim=0)
    std = s.std(dim=0, unbiased=True).clamp_min(min_std) * widen
    return mu, std.log()


def _check_log_joint(values: torch.Tensor, n: int) -> torch.Tensor:
    if values.shape != (n,):
        raise ValueError(f"log_joint must return a tensor [B] per call, got shape {tuple(values.shape)}")
    return values


def _log_weights(
    log_joint: LogJointFn, proposal: ProposalFn, x: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``[k, B]`` log weights; the model is evaluated once on ``k * B`` rows."""
    z, log_q = proposal(k, generator)
    b = x.shape[0]
    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    lj = _check_log_joint(log_joint(xs, z.reshape(k * b, z.shape[-1])), k * b).reshape(k, b)
    return lj.double() - log_q.double()


@torch.no_grad()
def importance_log_likelihood(
    log_joint: LogJointFn,
    proposal_sample_and_logq: ProposalFn,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled ``log p(x)`` with a per-data-point standard error.

    Parameters
    ----------
    log_joint
        ``log_joint(x, z) -> Tensor[B]``: ``log p(x, z)`` in nats for rows of ``x`` and ``z [B, D]``.
    proposal_sample_and_logq
        ``proposal(k, generator) -> (z [k, B, D], log_q [k, B])``, e.g. :func:`gaussian_proposal`.
    x
        Data ``[B, ...]``.
    num_samples
        K, the number of importance samples per data point (>= 2).
    batch_size
        Samples drawn per model call (each call evaluates ``batch_size * B`` rows).
    generator
        Source of the proposal noise.

    Returns
    -------
    logpx : Tensor
        float64 ``[B]``, the estimate of ``log p(x)`` in nats.
    se : Tensor
        float64 ``[B]``, its delta-method standard error.
    """
    if num_samples < 2:
        raise ValueError("num_samples must be at least 2 (the standard error needs two samples)")
    b = x.shape[0]
    log_s1 = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)  # log sum exp(w)
    log_s2 = log_s1.clone()  # log sum exp(2 w)
    done = 0
    while done < num_samples:
        k = min(batch_size, num_samples - done)
        w = _log_weights(log_joint, proposal_sample_and_logq, x, k, generator)
        log_s1 = torch.logaddexp(log_s1, torch.logsumexp(w, dim=0))
        log_s2 = torch.logaddexp(log_s2, torch.logsumexp(2.0 * w, dim=0))
        done += k
    logpx = log_s1 - math.log(num_samples)
    sum_v2 = (log_s2 - 2.0 * log_s1).exp()  # sum of squared normalised weights, in [1/K, 1]
    se = ((num_samples * sum_v2 - 1.0).clamp_min(0.0) / (num_samples - 1)).sqrt()
    return logpx, se


@torch.no_grad()
def elbo(
    log_joint: LogJointFn,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    x: torch.Tensor,
    num_samples: int = 1,
    *,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte-Carlo ELBO ``E_q[log p(x, z) - log q(z | x)]`` of a diagonal Gaussian ``q``.

    Returns float64 ``[B]`` (nats), the average over ``num_samples`` draws per data point.
    """
    proposal = gaussian_proposal(mu, log_sigma)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    done = 0
    while done < num_samples:
        k = min(batch_size, num_samples - done)
        total += _log_weights(log_joint, proposal, x, k, generator).sum(dim=0)
        done += k
    return total / num_samples


def bits_per_dim(
    nll_nats: float | torch.Tensor,
    num_dims: int,
    num_levels: int | None = None,
    *,
    continuous: bool = False,
) -> float | torch.Tensor:
    """Convert a negative log-likelihood in nats per data point to bits per dimension.

    Convention: for discretised data (``num_levels`` given) the nats are those of the discrete pmf
    over pixel values (e.g. the discretised-Gaussian likelihood), and bits/dim = nll / (D ln 2), so
    a uniform model scores ``log2(num_levels)``. With ``continuous=True`` the nats are of a density
    over the ``[0, 1]``-scaled pixels, whose grid spacing is ``1 / (num_levels - 1)``; the pmf is
    approximated by density x spacing, i.e. ``D ln(num_levels - 1)`` nats are added before
    converting. Without ``num_levels`` (continuous data) bits/dim is nll / (D ln 2) of the density.
    """
    nll = nll_nats
    if continuous:
        if num_levels is None or num_levels < 2:
            raise ValueError("continuous=True needs num_levels >= 2 to convert a density to a pmf")
        nll = nll + num_dims * math.log(num_levels - 1)
    return nll / (num_dims * math.log(2.0))
