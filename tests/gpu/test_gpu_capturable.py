"""CUDA-graph capture: ``LangevinSampler(capturable=True)`` with the energy's forward and backward,
and the Triton eager bypass stepping aside for the op while a stream captures."""

from __future__ import annotations

import pytest
import torch
from _gpu_common import DEVICE, skip_unless_backend

from lpc_fast import LangevinSampler, _eager, rng

BACKENDS = ("cuda", "triton")
WARMUP, T = 3, 5


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 12)).to(DEVICE)


def _energy(model, x, z1, z2):
    z = torch.cat([z1, z2], dim=1)
    return 0.5 * ((x - model(z)) ** 2).sum(dim=1) + 0.5 * (z * z).sum(dim=1)


def _latents():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, 8, generator=gen).to(DEVICE).requires_grad_(),
            torch.randn(16, 4, generator=gen).to(DEVICE).requires_grad_()]  # fmt: skip


def _grads(model, x, zs):
    # Copied into .grad, so the gradients keep their addresses (a captured graph reads them, and
    # the Triton foreach table is keyed by them).
    gs = torch.autograd.grad(_energy(model, x, *zs).sum(), zs)
    for z, g in zip(zs, gs):
        if z.grad is None:
            z.grad = torch.zeros_like(z)
        z.grad.copy_(g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_captured_sampler_step_with_forward_and_backward_replays_the_eager_chain(backend):
    skip_unless_backend(backend)
    model = _model()
    x = torch.randn(16, 12, device=DEVICE)
    options = dict(lr=1e-2, mode="preconditioned", seed=2**63 + 9, offset=2**32 - 2, backend=backend)

    eager = _latents()
    s_eager = LangevinSampler(eager, **options)
    for _ in range(WARMUP + T):
        _grads(model, x, eager)
        s_eager.step()

    zs = _latents()
    sampler = LangevinSampler(zs, capturable=True, **options)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: allocations, Triton compiles, the foreach tables
        for _ in range(WARMUP):
            _grads(model, x, zs)
            sampler.step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _grads(model, x, zs)
        sampler.step()
    torch.cuda.synchronize()
    state0 = sampler._rng_state.tolist()
    assert state0[2] == WARMUP + 1  # capture recorded the step without running it
    for _ in range(T):
        graph.replay()
    torch.cuda.synchronize()

    total = rng.foreach_offsets(0, [z.numel() for z in zs])[1]
    assert sampler._rng_state.tolist() == [state0[0], state0[1] + T * total, WARMUP + T + 1]
    assert sampler.offset == s_eager.offset
    # The same kernels and noise; the forward/backward inside the graph may round differently
    # from eager cuBLAS calls only through algorithm choice: a float32 ulp-level tolerance.
    for a, b in zip(zs, eager):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_the_bypass_steps_aside_while_the_stream_captures():
    skip_unless_backend("triton")
    z = torch.zeros(4, device=DEVICE)
    assert _eager.plain_tensors([z])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        inside = _eager.plain_tensors([z])
        z.add_(1.0)
    assert not inside
    assert _eager.plain_tensors([z])
