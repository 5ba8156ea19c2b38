"""Shared pieces of the GPU tests: skips, inputs, the float64 oracle and tolerances.

Expectations come from :mod:`lpc_fast.reference` evaluated in float64 on the CPU with the noise
of :func:`lpc_fast.rng.philox_normal_reference`, never from another backend's output.
"""

from __future__ import annotations

import pytest
import torch

import lpc_fast
from lpc_fast import reference, rng

DEVICE = "cuda"
#: Backends that run on CUDA tensors; each test skips (with the reason) those that cannot run.
GPU_BACKENDS = ("cuda", "triton", "reference")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (rtol, atol) of a forward result against the float64 oracle. float64 computes in double end to
# end; float32 adds ~20 rounded float32 operations and the normals' own ~1e-6 relative error (GPU
# sqrt/log/sin/cos); float16 / bfloat16 round the result once to 2**-11 / 2**-8 relative.
FORWARD_TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
# The backward has a few more operations (p**2, a cancellation in p + s*dp/ds): tolerances are
# relative to the largest expected magnitude.
BACKWARD_TOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}

HYPER = dict(step_size=1e-2, beta=0.99, eps=1e-3, temperature=1.0)


def skip_unless_backend(name: str) -> None:
    """Skip the calling test when ``name`` cannot run on CUDA tensors here, saying why."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    table = {info.name: info for info in lpc_fast.backends()}
    info = table.get(name)
    if info is None:
        pytest.skip(f"backend {name!r} is not registered")
    if not info.available:
        pytest.skip(f"{name}: {info.reason}")


def make_inputs(n_shape, dtype, layout: str, seed: int = 0):
    """(z, grad, v) on the GPU with ``layout`` in contiguous / strided / misaligned.

    ``strided`` takes every other element of a larger buffer; ``misaligned`` is contiguous but
    starts one element into its storage, so the kernels cannot use 16-byte vector accesses.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(n_shape)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.5

    def place(x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        x = x.to(dt)
        if layout == "contiguous":
            return x.to(DEVICE)
        if layout == "strided":
            buf = torch.zeros(*shape, 2, dtype=dt, device=DEVICE)
            view = buf[..., 0]
            view.copy_(x)
            return view
        if layout == "misaligned":
            buf = torch.zeros(x.numel() + 1, dtype=dt, device=DEVICE)
            view = buf[1:].view(shape)
            view.copy_(x)
            return view
        raise ValueError(layout)

    return place(z, dtype), place(g, dtype), place(v, torch.float32)


def oracle_noise(n: int, seed: int, offset: int) -> torch.Tensor:
    return rng.philox_normal_reference(n, seed=seed, offset=offset, dtype=torch.float64)


def oracle_forward(z, grad, v, *, step, seed, offset, **hyper):
    """float64 CPU reference of the step from the (already rounded) inputs."""
    z64, g64, v64 = (t.detach().cpu().double() for t in (z, grad, v))
    noise = oracle_noise(z64.numel(), seed, offset).view(z64.shape)
    return reference.langevin_update(z64, g64, v64, noise, step=step, **hyper)


def oracle_backward(gz, gv, z, grad, v, *, step, seed, offset, **hyper):
    z64, g64, v64 = (t.detach().cpu().double() for t in (z, grad, v))
    gz64 = gz.detach().cpu().double()
    gv64 = None if gv is None else gv.detach().cpu().double()
    noise = oracle_noise(z64.numel(), seed, offset).view(z64.shape)
    return reference.langevin_update_backward(gz64, gv64, z64, g64, v64, noise, step=step, **hyper)


def assert_forward_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = FORWARD_TOL[dtype]
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=rtol, atol=atol)


def assert_backward_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = BACKWARD_TOL[dtype]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=tol, atol=tol * scale)
