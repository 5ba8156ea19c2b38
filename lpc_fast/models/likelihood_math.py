"""The pixel likelihoods' reference forms, in plain differentiable torch (float64-capable).

A leaf module (it imports nothing of lpc_fast): the reference backend's ``log_likelihood_grad``
kernel and :mod:`lpc_fast.models.likelihoods` both use it, and the latter selects backends.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["LIKELIHOOD_KINDS", "log_normal_cdf_difference", "pixel_log_likelihood_reference"]

_LOG_2PI = math.log(2.0 * math.pi)
_LN2 = math.log(2.0)

#: The ``kind`` argument of ``lpc_fast::log_likelihood_grad`` for each likelihood.
LIKELIHOOD_KINDS = {"discretised_gaussian": 0, "gaussian": 1, "bernoulli": 2}


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(d))`` for ``d < 0``, accurate for all ``d`` (Maechler 2012).

    Both branches get safe inputs so that the unused one cannot inject NaN gradients through ``where``.
    """
    near = d > -_LN2
    d_near = torch.where(near, d, torch.full_like(d, -1.0))
    d_far = torch.where(near, torch.full_like(d, -1.0), d)
    return torch.where(near, torch.log(-torch.expm1(d_near)), torch.log1p(-torch.exp(d_far)))


def log_normal_cdf_difference(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi`` without cancellation, in either tail.

    When the interval lies mostly in the upper tail, the symmetric form ``Phi(-lo) - Phi(-hi)`` is used, so
    the larger CDF value is never rounded to 1; the difference is then ``log Phi(b) + log(1 - exp(log Phi(a) -
    log Phi(b)))`` with ``log Phi`` from :func:`torch.special.log_ndtr`.
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_a = torch.special.log_ndtr(a)
    log_b = torch.special.log_ndtr(b)
    # d < 0 strictly for a < b; the clamp only guards against a rounding tie in very narrow bins.
    d = (log_a - log_b).clamp(max=-torch.finfo(log_a.dtype).tiny)
    return log_b + _log1mexp(d)


def pixel_log_likelihood_reference(
    x: torch.Tensor, out: torch.Tensor, log_sigma: torch.Tensor, kind: int, sigmoid: bool, num_levels: int
) -> torch.Tensor:
    """Per-pixel ``log p(x | out)`` from the definitions, in plain differentiable torch (float64-capable).

    The reference of ``lpc_fast::log_likelihood_grad``: ``kind`` as in :data:`LIKELIHOOD_KINDS`,
    ``sigmoid`` the link of the Gaussian kinds, ``log_sigma`` a tensor broadcasting against ``out``
    (sigma in [0, 1] data units), ``num_levels`` the discretised Gaussian's levels. The discretised
    Gaussian evaluates ``log_ndtr`` four times per pixel (:func:`log_normal_cdf_difference`).
    """
    if kind == LIKELIHOOD_KINDS["bernoulli"]:
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none")
    link = torch.sigmoid(out) if sigmoid else out
    if kind == LIKELIHOOD_KINDS["gaussian"]:
        r = (x - link) * torch.exp(-log_sigma)
        return -0.5 * r * r - log_sigma - 0.5 * _LOG_2PI
    if kind != LIKELIHOOD_KINDS["discretised_gaussian"]:
        raise ValueError(f"kind must be one of {sorted(LIKELIHOOD_KINDS.values())}, got {kind}")
    k = num_levels - 1
    level = torch.round(x.clamp(0.0, 1.0) * k)
    y = 2.0 * level / k - 1.0
    inv_s = torch.exp(-(log_sigma + _LN2))
    m = 2.0 * link - 1.0
    half = 1.0 / k
    lo = (y - half - m) * inv_s
    hi = (y + half - m) * inv_s
    bottom, top = level <= 0, level >= k
    # Edge bins are half-lines; give the interior formula finite stand-ins there (no NaN gradients).
    edge = bottom | top
    interior = log_normal_cdf_difference(
        torch.where(edge, torch.zeros_like(lo), lo), torch.where(edge, torch.ones_like(hi), hi)
    )
    return torch.where(
        bottom, torch.special.log_ndtr(hi), torch.where(top, torch.special.log_ndtr(-lo), interior)
    )
