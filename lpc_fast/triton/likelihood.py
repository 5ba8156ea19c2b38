"""Triton kernel of the ``log_likelihood_grad`` op (schema in :mod:`lpc_fast._schemas`).

One program per data point (row): it walks the row in blocks, writes the derivative of each
pixel's log-likelihood with respect to the decoder output and sums the log-likelihood and its
derivative with respect to log sigma over the row. The maths is that of
``csrc/include/likelihood_math.h`` (see there), evaluated in float64 for every input dtype: the
kernel is not the CPU fast path (that is the C++ kernel), and float64 keeps one code path exact
enough for the float64 contract.

Triton has no ``erfc`` (libdevice's is not available under the interpreter), so it is built here:
``1 - erf(x)`` below ``_CF_FROM`` (erfc(2) = 4.7e-3, so the subtraction loses at most ~50 ulp) and
Laplace's continued fraction for ``erfcx`` from there on (60 terms: below 3e-16 relative for every
``x >= 2``, measured against 40-digit values), which also gives the scaled tail form.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch
import triton
import triton.language as tl

from ._interpret import interpreter_enabled

__all__ = ["log_likelihood_grad"]

# Globals a jitted function reads must be constexpr. A Python float may be materialised as a float32
# constant: the irrational ones enter the float64 arithmetic through tl.full(..., tl.float64) (_f64).
_CF_FROM = tl.constexpr(2.0)
_CF_TERMS = tl.constexpr(60)
_TAIL = tl.constexpr(25.0)  # the double tail threshold of likelihood_math.h
_SQRT_PI = tl.constexpr(math.sqrt(math.pi))
_TWO_OVER_SQRT_PI = tl.constexpr(2.0 / math.sqrt(math.pi))
_LN2 = tl.constexpr(math.log(2.0))
_HALF_LOG_2PI = tl.constexpr(0.5 * math.log(2.0 * math.pi))
_SQRT_HALF = tl.constexpr(math.sqrt(0.5))


@triton.jit
def _f64(value):
    """A float64 scalar holding the constexpr ``value`` exactly."""
    return tl.full([], value, tl.float64)


@triton.jit
def _erfcx_cf(x):
    """``erfcx(x)`` for ``x >= 2`` (float64) by the continued fraction, evaluated bottom-up."""
    t = x
    for i in tl.static_range(_CF_TERMS):
        t = x + ((_CF_TERMS - i) * 0.5) / t
    return 1.0 / (t * _f64(_SQRT_PI))


@triton.jit
def _erfc(x):
    small = x < _CF_FROM
    xl = tl.where(small, _CF_FROM, x)
    return tl.where(small, 1.0 - tl.math.erf(x), tl.exp(-xl * xl) * _erfcx_cf(xl))


@triton.jit
def _discretised(x, m, u, levels):
    """Value, d/dm and d/dlog sigma of the discretised Gaussian (float64 tensors)."""
    xc = tl.minimum(tl.maximum(x, 0.0), 1.0)
    # Round half to even, as torch.round (a tie only arises off the level grid).
    scaled = xc * levels
    level = tl.floor(scaled + 0.5)
    tie = (level - scaled) == 0.5
    level = tl.where(tie & ((level - 2.0 * tl.floor(level * 0.5)) == 1.0), level - 1.0, level)
    y = 2.0 * level / levels - 1.0
    c = y - m
    half = 1.0 / levels
    bottom = level <= 0.0
    top = level >= levels
    edge = bottom | top
    hu = half * u
    zb = tl.where(bottom, (-c - half) * u, tl.where(top, (c - half) * u, tl.abs(c) * u - hu))
    # +-1 in float64: a where() of two Python floats would be float32, and the products after it too.
    one = tl.full(c.shape, 1.0, tl.float64)
    sign = tl.where(bottom, -one, tl.where(top, one, tl.where(c > 0.0, one, -one)))
    za = zb + 2.0 * hu
    far = zb > _TAIL
    # Main path (erfc of both ends); its arguments are clamped where the tail path takes over.
    zbm = tl.minimum(zb, _TAIL)
    zam = tl.minimum(za, _TAIL + 1.0)
    pb = tl.exp(-zbm * zbm)
    pa = tl.where(edge, 0.0, tl.exp(-zam * zam))
    two_p = _erfc(zbm) - tl.where(edge, 0.0, _erfc(zam))
    v_main = tl.log(two_p) - _f64(_LN2)
    gm_main = (pb - pa) / two_p
    gs_main = (zam * pa - zbm * pb) / two_p
    # Tail path: everything divided by exp(-z_b**2).
    zbt = tl.maximum(zb, _TAIL)
    zat = zbt + 2.0 * hu
    prod = 2.0 * hu * (zat + zbt)
    r = tl.where(edge, 0.0, tl.exp(-prod))
    sc = _erfcx_cf(zbt) - r * _erfcx_cf(zat)
    one_minus_r = tl.where(edge, 1.0, 1.0 - r)
    # 1 - r without cancellation where prod is small: -expm1(-prod) from its series.
    one_minus_r = tl.where(
        (~edge) & (prod < 1e-3),
        prod * (1.0 - prod * (0.5 - prod * (1.0 / 6.0 - prod * (1.0 / 24.0 - prod / 120.0)))),
        one_minus_r,
    )
    v_tail = tl.log(sc) - zbt * zbt - _f64(_LN2)
    gm_tail = one_minus_r / sc
    gs_tail = (zat * r - zbt) / sc
    value = tl.where(far, v_tail, v_main)
    d_m = sign * _f64(_TWO_OVER_SQRT_PI) * u * tl.where(far, gm_tail, gm_main)
    d_ls = -_f64(_TWO_OVER_SQRT_PI) * tl.where(far, gs_tail, gs_main)
    return value, d_m, d_ls


@triton.jit
def _element(x, o, ls, levels, KIND: tl.constexpr, SIGMOID: tl.constexpr):
    if KIND == 2:  # Bernoulli with logits o
        value = x * o - tl.maximum(o, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(o)))
        d_out = x - 1.0 / (1.0 + tl.exp(-o))
        d_ls = tl.zeros_like(o)
    else:
        if SIGMOID:
            s = 1.0 / (1.0 + tl.exp(-o))
            link = s
            d_link = s * (1.0 / (1.0 + tl.exp(o)))
        else:
            link = o
            d_link = tl.full(o.shape, 1.0, tl.float64)
        if KIND == 1:  # Gaussian
            inv_sigma = tl.exp(-ls)
            r = (x - link) * inv_sigma
            value = -0.5 * r * r - ls - _f64(_HALF_LOG_2PI)
            d_out = r * inv_sigma * d_link
            d_ls = r * r - 1.0
        else:  # discretised Gaussian
            u = tl.exp(-(ls + _f64(_LN2))) * _f64(_SQRT_HALF)
            value, d_m, d_ls = _discretised(x, 2.0 * link - 1.0, u, levels)
            d_out = d_m * 2.0 * d_link
    return value, d_out, d_ls


@triton.jit
def _likelihood_kernel(
    x_ptr,
    o_ptr,
    lp_ptr,
    go_ptr,
    gls_ptr,
    ls_ptr,
    ls_a,
    ls_b,
    ls_c,
    levels,
    row_len,
    KIND: tl.constexpr,
    SIGMOID: tl.constexpr,
    HAS_LS: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = tl.cast(row_len, tl.int64)
    base = row * n
    if HAS_LS:
        ls = tl.load(ls_ptr).to(tl.float64)
    else:  # the exact float64 value, carried as three float32 parts
        ls = tl.cast(ls_a, tl.float64) + tl.cast(ls_b, tl.float64) + tl.cast(ls_c, tl.float64)
    lv = tl.cast(levels, tl.float64)
    acc_v = tl.zeros([BLOCK], tl.float64)
    acc_s = tl.zeros([BLOCK], tl.float64)
    # A compile-time trip count: Triton 3.6's interpreter cannot loop to a run-time bound.
    for blk in range(NUM_BLOCKS):
        idx = blk * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float64)
        o = tl.load(o_ptr + base + idx, mask=mask, other=0.0).to(tl.float64)
        value, d_out, d_ls = _element(x, o, ls, lv, KIND, SIGMOID)
        tl.store(go_ptr + base + idx, d_out.to(go_ptr.dtype.element_ty), mask=mask)
        acc_v += tl.where(mask, value, 0.0)
        acc_s += tl.where(mask, d_ls, 0.0)
    tl.store(lp_ptr + row, tl.sum(acc_v, axis=0).to(lp_ptr.dtype.element_ty))
    tl.store(gls_ptr + row, tl.sum(acc_s, axis=0).to(gls_ptr.dtype.element_ty))


def _f32_parts(value: float) -> tuple[float, float, float]:
    """Three float32 values whose float64 sum is ``value`` (Triton passes float scalars as float32)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"log_sigma_value must be finite, got {value}")
    parts = []
    rest = value
    for _ in range(3):
        p = struct.unpack("f", struct.pack("f", rest))[0]
        parts.append(p)
        rest -= p
    return parts[0], parts[1], parts[2]


def log_likelihood_grad(
    x: torch.Tensor,
    out: torch.Tensor,
    log_sigma: torch.Tensor | None,
    log_sigma_value: float,
    kind: int,
    sigmoid: bool,
    num_levels: int,
    *,
    wrap: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher of the op (arguments as in the schema; ``wrap`` as in :mod:`lpc_fast.triton.launch`)."""
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    if x.dtype != out.dtype or x.shape != out.shape:
        raise ValueError(
            f"x must have out's dtype and shape ({out.dtype}, {tuple(out.shape)}), got {x.dtype}, "
            f"{tuple(x.shape)}"
        )
    if out.dim() < 1:
        raise ValueError("out must have a batch dimension")
    if kind not in (0, 1, 2):
        raise ValueError(f"kind must be 0 (discretised Gaussian), 1 (Gaussian) or 2 (Bernoulli), got {kind}")
    if kind == 0 and num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if log_sigma is not None and (log_sigma.numel() != 1 or not log_sigma.is_floating_point()):
        raise ValueError("log_sigma must be a one-element floating tensor")
    rows = out.shape[0]
    row_len = out.numel() // rows if rows else 0
    log_prob = torch.empty(rows, dtype=out.dtype, device=out.device)
    grad_out = torch.empty(out.shape, dtype=out.dtype, device=out.device)
    grad_ls = torch.empty(rows, dtype=out.dtype, device=out.device)
    if rows == 0:
        return log_prob, grad_out, grad_ls
    cap = 65536 if (out.device.type == "cpu" or interpreter_enabled()) else 1024
    block = min(cap, max(16, triton.next_power_of_2(max(row_len, 1))))
    kernel = _likelihood_kernel if wrap is None else wrap(_likelihood_kernel)
    a, b, c = _f32_parts(log_sigma_value)
    args = (
        x.contiguous(),
        out.contiguous(),
        log_prob,
        grad_out,
        grad_ls,
        log_sigma if log_sigma is not None else log_prob,
        a,
        b,
        c,
        float(max(num_levels - 1, 1)),
        row_len,
    )
    meta = dict(
        KIND=int(kind),
        SIGMOID=bool(sigmoid),
        HAS_LS=log_sigma is not None,
        BLOCK=block,
        NUM_BLOCKS=-(-row_len // block),
    )
    if out.device.type == "cuda":
        with torch.cuda.device(out.device):
            kernel[(rows,)](*args, **meta)
    else:
        kernel[(rows,)](*args, **meta)
    return log_prob, grad_out, grad_ls
