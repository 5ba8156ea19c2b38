"""Shared test helpers (imported by name: tests/gpu has a conftest.py of its own)."""

from __future__ import annotations

import pytest
import torch

from lpc_fast.dispatch import get_backend

#: Backends exercised on CPU tensors; unavailable ones are skipped with the reason.
CPU_BACKENDS = ("reference", "cpu", "triton")


def backend_param(name: str, device: str = "cpu"):
    """A pytest param for ``name`` that skips (with the reason) when it cannot run on ``device``."""
    reason = get_backend(name).unsupported_reason(torch.device(device))
    marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
    return pytest.param(name, marks=marks, id=name)


def cpu_backend_params():
    return [backend_param(name) for name in CPU_BACKENDS]


def make_layout(shape: tuple[int, ...], dtype: torch.dtype, contiguous: bool, fill) -> torch.Tensor:
    """A tensor of ``shape``; non-contiguous ones are every other element of a larger buffer."""
    if contiguous:
        return fill(shape).to(dtype)
    base = torch.zeros(*shape, 2, dtype=dtype)
    view = base[..., 0]
    view.copy_(fill(shape).to(dtype))
    assert not view.is_contiguous() or view.numel() <= 1
    return view


# Tolerances (rtol, atol) of a backend's result against the float64 reference given the same inputs:
# * float64 computes in double end to end (the uniforms are bit-exact float32 values, Box–Muller in
#   double): only the order of ~20 double operations differs -> 1e-10.
# * float32: ~20 float32 operations on magnitudes <= ~10 (half-ulp 6e-8 each) plus the normals' own
#   1e-6 relative error from float32 log/sqrt/sin/cos -> rtol 2e-5, atol 2e-5.
# * float16 / bfloat16: the result is rounded once to the storage type (half-ulp 2**-11 / 2**-8
#   relative), on top of the float32 error -> rtol 1e-3 / 8e-3 with a matching atol near zero.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
