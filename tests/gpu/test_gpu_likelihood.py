"""The fused likelihood op ``lpc_fast::log_likelihood_grad`` on CUDA tensors (cuda and triton backends).

Expectations: the float64 reference (``pixel_log_likelihood_reference`` and autograd of it) on the
CPU, as in tests/test_likelihood_op.py; float32 against the float64 result within float32 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

from lpc_fast.dispatch import get_backend
from lpc_fast.models.likelihoods import pixel_log_likelihood_reference

CASES = [(0, True, 256), (0, False, 17), (1, True, 0), (1, False, 0), (2, False, 0)]


def _op(backend):
    reason = get_backend(backend).unsupported_reason(torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    return get_backend(backend)._op("log_likelihood_grad")


def _inputs(levels):
    gen = torch.Generator().manual_seed(5)
    k = max(levels, 17) - 1
    x = torch.randint(0, k + 1, (16, 3, 8, 8), generator=gen).double() / k
    o = 4 * torch.randn(16, 3, 8, 8, generator=gen, dtype=torch.float64)
    return x, o


def _reference(x, o, ls, kind, sigmoid, levels):
    oo = o.clone().requires_grad_(True)
    lsr = torch.full((o.shape[0],), ls, dtype=torch.float64, requires_grad=True)
    v = pixel_log_likelihood_reference(x, oo, lsr.view(-1, 1, 1, 1), kind, sigmoid, levels)
    lp = v.reshape(o.shape[0], -1).sum(1)
    g, gls = torch.autograd.grad(lp.sum(), [oo, lsr], allow_unused=True)
    return lp.detach(), g, torch.zeros_like(lsr) if gls is None else gls


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float64_matches_the_reference(backend, case):
    op = _op(backend)
    kind, sigmoid, levels = case
    x, o = _inputs(levels)
    ls = math.log(0.1)
    r_lp, r_g, r_gls = _reference(x, o, ls, kind, sigmoid, levels)
    lp, g, gls = (t.cpu() for t in op(x.cuda(), o.cuda(), None, ls, kind, sigmoid, levels))
    torch.testing.assert_close(lp, r_lp, rtol=1e-10, atol=0)
    scale = torch.maximum(r_g.abs(), 1e-3 * r_g.abs().flatten(1).amax(1).view(-1, 1, 1, 1))
    assert torch.all((g - r_g).abs() <= 1e-10 * scale)
    torch.testing.assert_close(gls, r_gls, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_and_learned_sigma(backend, case):
    op = _op(backend)
    kind, sigmoid, levels = case
    x, o = _inputs(levels)
    ls = torch.tensor(math.log(0.1), dtype=torch.float32, device="cuda")
    lp64, g64, gls64 = op(x.cuda(), o.cuda(), ls, 0.0, kind, sigmoid, levels)
    lp32, g32, gls32 = op(x.float().cuda(), o.float().cuda(), ls, 0.0, kind, sigmoid, levels)
    torch.testing.assert_close(lp32.double(), lp64, rtol=2e-6, atol=1e-4)
    scale = g64.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    assert torch.all((g32.double() - g64).abs() <= 1e-5 * scale + 1e-6 * g64.abs())
    torch.testing.assert_close(gls32.double(), gls64, rtol=2e-5, atol=1e-3)
