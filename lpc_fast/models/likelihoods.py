"""Pixel likelihoods ``log p(x | z)`` from a decoder output, one value per data point.

Every likelihood takes data ``x`` in [0, 1] with shape ``[B, C, H, W]`` (any trailing shape works) and the raw
decoder output of the same shape, and sums over everything but the batch dimension, so the result is ``[B]``
in nats. Summing per data point (never over the batch) is what keeps Langevin chains of different data points
independent: the energy gradient of chain ``b`` then depends on ``x_b`` only.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LIKELIHOOD_KINDS",
    "BernoulliLikelihood",
    "DiscretisedGaussianLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "log_normal_cdf_difference",
    "pixel_log_likelihood_reference",
]

from .likelihood_math import (  # noqa: F401 - re-exported: the reference forms live there
    _LN2,
    _LOG_2PI,
    LIKELIHOOD_KINDS,
    _log1mexp,
    log_normal_cdf_difference,
    pixel_log_likelihood_reference,
)


def _sum_per_point(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


#: Dtypes the fused op computes in (others take the unfused forms below).
_FUSED_DTYPES = (torch.float32, torch.float64)


def _fused_op(device: torch.device):
    from lpc_fast.dispatch import select_backend

    return select_backend(device)._op("log_likelihood_grad")


class Likelihood(nn.Module):
    """Base class: ``log_prob(x, out) -> [B]``, ``mean(out)`` and ``sample(out, generator)`` in [0, 1]."""

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``log p(x | decoder output)`` summed over pixels, shape ``[B]``."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Mean image in [0, 1]."""
        raise NotImplementedError

    def sample(
        self, out: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """One draw from ``p(x | z)``, as an image in [0, 1]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, out)

    def _fused_args(self, out: torch.Tensor) -> tuple | None:
        """The likelihood arguments of ``lpc_fast::log_likelihood_grad`` (after ``x, out``), or None
        where the fused op does not apply (another dtype, or a likelihood it does not know)."""
        return None

    def log_prob_and_grad(
        self, x: torch.Tensor, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``log p(x | out)`` per data point, its derivative with respect to ``out`` and, for a learned
        sigma, the per-point derivative with respect to ``log sigma`` (else None), without a graph.

        One kernel (``lpc_fast::log_likelihood_grad``) where the fused op applies, on the backend that
        :func:`lpc_fast.dispatch.select_backend` picks for ``out``'s device; otherwise autograd of
        :meth:`log_prob`. Used by the Langevin chain, which needs the gradient at every step.
        """
        args = self._fused_args(out)
        if args is None:
            with torch.enable_grad():
                o = out.detach().requires_grad_(True)
                lp = self.log_prob(x, o)
                (g,) = torch.autograd.grad(lp.sum(), [o])
            return lp.detach(), g, None
        log_sigma = args[0]
        learned = log_sigma is not None
        lp, g, g_ls = _fused_op(out.device)(
            x.to(out.dtype), out.detach(), log_sigma.detach() if learned else None, *args[1:]
        )
        return lp, g, g_ls if learned else None

    def _fused_log_prob(self, x: torch.Tensor, out: torch.Tensor, args: tuple) -> torch.Tensor:
        from lpc_fast._likelihood_autograd import FusedLikelihood

        lp, _, _ = FusedLikelihood.apply(_fused_op(out.device), x.to(out.dtype), out, *args)
        return lp


class _ScaleMixin(nn.Module):
    """A fixed or learned shared ``log sigma`` (one scalar for all pixels).

    A learned value is the parameter ``log_sigma``; a fixed one is kept as a Python float so that float64
    evaluations use the exact value rather than its float32 rounding.
    """

    def _init_scale(self, sigma: float, learn_sigma: bool) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.learn_sigma = bool(learn_sigma)
        self._fixed_log_sigma = math.log(sigma)
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(torch.tensor(self._fixed_log_sigma, dtype=torch.float32))

    def _log_sigma(self, ref: torch.Tensor) -> torch.Tensor:
        """``log sigma`` as a 0-d tensor in ``ref``'s dtype and device."""
        if self.learn_sigma:
            return self.log_sigma.to(ref.dtype)
        return torch.tensor(self._fixed_log_sigma, dtype=ref.dtype, device=ref.device)

    @property
    def sigma(self) -> torch.Tensor:
        """Current standard deviation (in [0, 1] data units)."""
        if self.learn_sigma:
            return self.log_sigma.detach().exp()
        return torch.tensor(math.exp(self._fixed_log_sigma))


def _link(out: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation == "identity":
        return out
    raise ValueError(f"mean_activation must be 'sigmoid' or 'identity', got {activation!r}")


class GaussianLikelihood(_ScaleMixin, Likelihood):
    """``x ~ N(loc, sigma**2)`` per pixel on [0, 1] data, ``loc = link(decoder output)``.

    Parameters
    ----------
    sigma : float
        Standard deviation (initial value if learned), in [0, 1] data units.
    learn_sigma : bool
        Learn one shared ``log sigma`` (sigma-VAE).
    mean_activation : {"sigmoid", "identity"}
        Link from decoder output to ``loc``; ``"identity"`` with a linear decoder is linear-Gaussian.
    """

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False, mean_activation: str = "sigmoid"):
        super().__init__()
        self._init_scale(sigma, learn_sigma)
        _link(torch.zeros(()), mean_activation)  # validate early
        self.mean_activation = mean_activation

    def loc(self, out: torch.Tensor) -> torch.Tensor:
        """Location of the Gaussian in data units."""
        return _link(out, self.mean_activation)

    def _fused_args(self, out: torch.Tensor) -> tuple | None:
        if out.dtype not in _FUSED_DTYPES:
            return None
        return (
            self.log_sigma if self.learn_sigma else None,
            self._fixed_log_sigma,
            LIKELIHOOD_KINDS["gaussian"],
            self.mean_activation == "sigmoid",
            0,
        )

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        args = self._fused_args(out)
        if args is not None:
            return self._fused_log_prob(x, out, args)
        log_sigma = self._log_sigma(out)
        r = (x - self.loc(out)) * torch.exp(-log_sigma)
        return _sum_per_point(-0.5 * r * r - log_sigma - 0.5 * _LOG_2PI)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.loc(out).clamp(0.0, 1.0)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A Gaussian draw, clipped to [0, 1] so that it is a displayable image."""
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return (self.loc(out) + torch.exp(self._log_sigma(out)) * noise).clamp(0.0, 1.0)


class BernoulliLikelihood(Likelihood):
    """``x ~ Bernoulli(sigmoid(logits))`` per pixel; continuous ``x`` in [0, 1] is allowed (cross-entropy)."""

    def _fused_args(self, out: torch.Tensor) -> tuple | None:
        if out.dtype not in _FUSED_DTYPES:
            return None
        return (None, 0.0, LIKELIHOOD_KINDS["bernoulli"], False, 0)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        args = self._fused_args(out)
        if args is not None:
            return self._fused_log_prob(x, out, args)
        return _sum_per_point(-F.binary_cross_entropy_with_logits(out, x.to(out.dtype), reduction="none"))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=generator)


# -- discretised Gaussian: value and slopes of log(Phi(b) - Phi(a)) from erfc --------------------------------
#
# Work in the units of erfc: with inv_s' = inv_s / sqrt(2), a pixel whose (mirrored) bin is [a, b] has
# z_b = -b / sqrt(2) <= z_a = -a / sqrt(2), and P = Phi(b) - Phi(a) = (erfc(z_b) - erfc(z_a)) / 2.
# The mirrored interval of log_normal_cdf_difference is [-|c| inv_s - h, -|c| inv_s + h] for c = y - m,
# so z_b = t - h' and z_a = t + h' with t = |c| inv_s' and h' = half * inv_s'. An edge bin is a half-line:
# its lower half-width is _EDGE_HALF_WIDTH, which puts z_a so far out that erfc(z_a) and exp(-z_a**2) are
# negligible (the bound stays finite, so that z_a * exp(-z_a**2) is 0 rather than inf * 0; the main path
# evaluates them at the clamp _Z_CLAMP, the tail path exactly).
#
# Main path, z_b <= _ERFC_TAIL[dtype]: erfc (vectorised, about 1 ulp) of both ends. erfc(z_b) is then far
# above the smallest normal number (erfc(7.5) = 2.7e-26 in float32, erfc(25) = 8e-274 in float64), so even
# an erfc(z_a) that is subnormal or flushed to zero changes P by less than 1e-12 relative. The difference of
# two erfc values loses relative precision as eps * Phi(b) / P for narrow bins, the same order as the
# log1mexp(log Phi(a) - log Phi(b)) of the log_ndtr form (whose loss grows further by |log Phi(b)| in the
# lower tail).
# Tail, z_b > _ERFC_TAIL[dtype] (b < -10.6 sd in float32): the scaled form
# P = exp(-z_b**2) (erfcx(z_b) - r erfcx(z_a)) / 2 with r = exp(-(z_a - z_b)(z_a + z_b)), which neither
# underflows nor cancels; erfcx is slow but few pixels, if any, are that far from their location.
#
# Slopes with respect to the standardised bounds: dL/db = phi(b) / P, dL/da = -phi(a) / P, i.e. in erfc
# units sqrt(2/pi) exp(-z_b**2) / (2P) and the same at z_a. With a = -sqrt(2) z_a and b = -sqrt(2) z_b
# proportional to inv_s, and both moving by -inv_s (non-mirrored) or +inv_s (mirrored) per unit of m:
#   dL/dm     = sign * inv_s * sqrt(2/pi) * (exp(-z_b**2) - exp(-z_a**2)) / (2P)
#   dL/dinv_s = (2/sqrt(pi)) * (z_a exp(-z_a**2) - z_b exp(-z_b**2)) / (2P * inv_s)
# where sign is +1 where the bin is mirrored (c > 0), -1 where not; the tail path uses the same formulas
# with every exp(-z**2) and 2P divided by exp(-z_b**2).

_EDGE_HALF_WIDTH = 1.0e4  # data units; bins are at most 2 wide
_ERFC_TAIL = {torch.float32: 7.5, torch.float64: 25.0}
# Bound clamp of the main path, above _ERFC_TAIL: erfc and exp(-z**2) there are still normal numbers
# (float32: erfc(9) = 4.1e-37, exp(-81) = 6.6e-36; float64: erfc(26) = 5.7e-296, exp(-676) = 2.5e-294),
# at least 1e-11 (float32) and 1e-21 (float64) times erfc(z_b) and exp(-z_b**2) of any main-path pixel,
# so replacing a farther z_a (an edge bin's far end, a wide bin at small sigma) by the clamp changes P and
# both slopes by less than that relative amount, far below rounding; and z_b >= -h can only be very
# negative where P is close to 1, where the same replacement is an absolute change below 1e-35.
_Z_CLAMP = {torch.float32: 9.0, torch.float64: 26.0}
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _bin_tail(z_b, z_a, width):
    """Value and the two slopes before their constant factors (see above), far in the lower tail."""
    prod = width * (z_a + z_b)  # (z_a - z_b)(z_a + z_b), the difference taken exactly from the bin width
    r = torch.exp(-prod)
    scaled = torch.special.erfcx(z_b) - r * torch.special.erfcx(z_a)  # 2P / exp(-z_b**2)
    value = torch.log(scaled) - z_b * z_b - _LN2
    slope_m = -torch.expm1(-prod) / scaled
    slope_s = (z_a * r - z_b) / scaled
    return value, slope_m, slope_s


def _discretised_gaussian_bins(m, inv_s, y, half_lo, side, half, bounded, need_grad, need_sigma):
    """``log(Phi(b) - Phi(a))`` per pixel and, if ``need_grad``, its slopes in ``m`` and ``inv_s``.

    ``y`` is the level on [-1, 1], ``half_lo`` the bin's lower half-width (``_EDGE_HALF_WIDTH`` at the edges),
    ``side`` is -tiny at the bottom level, +tiny at the top and 0 inside (it only fixes the direction of the
    slope of an edge bin whose location sits exactly on the edge). ``bounded``: ``m`` lies in [-1, 1], so
    every edge bin already has the sign of ``c`` that the mirrored form assumes.
    """
    inv_s2 = inv_s * _SQRT_HALF
    c = torch.sub(y, m)
    if bounded:
        direction = torch.addcmul(side, c, inv_s2)  # c * inv_s', nudged off zero only at the edges
        t = direction.abs()
    else:
        direction = c.mul_(inv_s2)
        edge = side != 0
        t = torch.where(edge, torch.sign(side) * direction, direction.abs())
        direction = torch.where(edge, side, direction)
    h = half * inv_s2
    z_b = t - h
    z_a = torch.addcmul(t, half_lo, inv_s2)
    del t
    # The main path on bounds clamped to +-_Z_CLAMP: its pixels need no more (see above), and the rest
    # (edge bins' far ends, pixels the tail path recomputes) would otherwise send erfc and exp into their
    # underflowing range, where they run about 10 times slower on x86 CPUs.
    z_clamp = _Z_CLAMP[m.dtype]
    zb_main = z_b.clamp(-z_clamp, z_clamp)
    za_main = z_a.clamp(-z_clamp, z_clamp)
    two_p = torch.special.erfc(zb_main)
    two_p.sub_(torch.special.erfc(za_main)).clamp_min_(torch.finfo(m.dtype).tiny)
    value = torch.log(two_p).sub_(_LN2)
    slope_m = slope_s = None
    if need_grad:
        if need_sigma:
            p_b = torch.square(zb_main).neg_().exp_()
            p_a = torch.square(za_main).neg_().exp_()
            slope_s = torch.mul(za_main, p_a).sub_(torch.mul(zb_main, p_b)).div_(two_p)
        else:  # the clamped bounds are not needed again: exponentiate them in place
            p_b = zb_main.square_().neg_().exp_()
            p_a = za_main.square_().neg_().exp_()
        slope_m = p_b.sub_(p_a).div_(two_p)
        del p_a
    tail_at = _ERFC_TAIL[m.dtype]
    if m.device.type == "cpu" and not torch.compiler.is_compiling():
        # Typically no pixel is this far out; then the check is one reduction.
        if z_b.numel() and bool(z_b.max() > tail_at):
            far = z_b > tail_at
            zb, za = z_b[far], z_a[far]
            width = (half_lo.expand_as(z_b)[far] + half) * inv_s2
            v, sm, ss = _bin_tail(zb, za, width)
            value[far] = v
            if need_grad:
                slope_m[far] = sm
                if need_sigma:
                    slope_s[far] = ss
    else:  # no data-dependent shapes or host reads: evaluate the tail everywhere and select
        far = z_b > tail_at
        zb = torch.where(far, z_b, tail_at)
        width = (half_lo + half) * inv_s2
        v, sm, ss = _bin_tail(zb, zb + width, width)
        value = torch.where(far, v, value)
        if need_grad:
            slope_m = torch.where(far, sm, slope_m)
            if need_sigma:
                slope_s = torch.where(far, ss, slope_s)
    if need_grad:
        slope_m = slope_m.mul_(inv_s * _SQRT_2_OVER_PI).copysign_(direction)
        if need_sigma:
            slope_s = slope_s.mul_(_TWO_OVER_SQRT_PI / inv_s)
    return value, slope_m, slope_s


class _FirstOrderOnly(torch.autograd.Function):
    """``grad * slope`` (summed when ``reduce``) as a graph node of ``m`` and ``inv_s`` whose own derivative
    raises: the slopes are the likelihood's first derivatives, and their derivatives are not implemented.

    Used when a backward builds a graph (``create_graph=True``, as ``torch.func.grad`` always does), so that a
    second derivative fails loudly instead of silently treating the slopes as constants.
    """

    @staticmethod
    def forward(grad, slope, m, inv_s, reduce):
        out = torch.mul(grad, slope)
        return out.sum() if reduce else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "second derivatives of the discretised Gaussian likelihood are not implemented (its backward is "
            "hand-derived); use DiscretisedGaussianLikelihood.log_prob_levels_reference where they are needed"
        )


class _DiscretisedGaussianBins(torch.autograd.Function):
    """Per-pixel ``log P(level)`` as a function of ``m`` and ``inv_s = 1 / s``, with a hand-derived backward.

    The forward computes the slopes along with the value (a Langevin pass always differentiates), keeps only
    them, and the backward is one product (and one sum for ``inv_s``). First derivatives only: a second
    derivative through this node raises (:class:`_FirstOrderOnly`); nothing in the package needs one.
    Works under ``torch.func.grad`` and ``torch.compile``.
    """

    @staticmethod
    def forward(m, inv_s, y, half_lo, side, half, bounded, need_sigma):
        value, slope_m, slope_s = _discretised_gaussian_bins(
            m, inv_s, y, half_lo, side, half, bounded, True, need_sigma
        )
        if slope_s is None:
            slope_s = m.new_empty(0)
        return value, slope_m, slope_s

    @staticmethod
    def setup_context(ctx, inputs, output):
        m, inv_s = inputs[0], inputs[1]
        _, slope_m, slope_s = output
        ctx.mark_non_differentiable(slope_m, slope_s)
        ctx.save_for_backward(slope_m, slope_s, m, inv_s)

    @staticmethod
    def backward(ctx, grad, _grad_slope_m, _grad_slope_s):
        slope_m, slope_s, m, inv_s = ctx.saved_tensors
        # Grad mode is on in a backward only when it builds a graph (create_graph=True).
        build_graph = torch.is_grad_enabled()
        grad_m = grad_inv_s = None
        if ctx.needs_input_grad[0]:
            if build_graph:
                grad_m = _FirstOrderOnly.apply(grad, slope_m, m, inv_s, False)
            else:
                grad_m = grad * slope_m
        if ctx.needs_input_grad[1]:
            if slope_s.numel() != slope_m.numel():
                raise RuntimeError("the slope in sigma was not computed (inv_s did not require grad)")
            if build_graph:
                grad_inv_s = _FirstOrderOnly.apply(grad, slope_s, m, inv_s, True)
            else:
                grad_inv_s = torch.mul(grad, slope_s).sum()
        return grad_m, grad_inv_s, None, None, None, None, None, None


class DiscretisedGaussianLikelihood(_ScaleMixin, Likelihood):
    """Gaussian integrated over intensity bins on [-1, 1] (DDPM's decoder likelihood; the paper's choice).

    Data ``x`` in [0, 1] has ``num_levels`` values ``k / (num_levels - 1)``; internally ``y = 2x - 1`` lies on
    a grid of spacing ``w = 2 / (num_levels - 1)`` in [-1, 1]. Level ``y`` gets the probability of
    ``[y - w/2, y + w/2]`` under ``N(m, s**2)``, with the lowest bin extended to ``-inf`` and the highest to
    ``+inf``, so the probabilities of all levels sum to exactly 1 per pixel. ``m = 2 * link(out) - 1`` and
    ``s = 2 * sigma`` (``sigma`` is given in [0, 1] units like the other likelihoods).

    Parameters
    ----------
    num_levels : int
        Intensity levels (256 for 8-bit images, 17 for sklearn's digits).
    sigma, learn_sigma, mean_activation
        As in :class:`GaussianLikelihood`.
    """

    def __init__(
        self,
        num_levels: int = 256,
        sigma: float = 0.1,
        learn_sigma: bool = False,
        mean_activation: str = "sigmoid",
    ):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.num_levels = int(num_levels)
        self._init_scale(sigma, learn_sigma)
        _link(torch.zeros(()), mean_activation)
        self.mean_activation = mean_activation
        # The last batch's level data: a Langevin chain evaluates the same x about T + 2 times in a row.
        self._level_cache: tuple | None = None

    @property
    def bin_width(self) -> float:
        """Width of one level on the [-1, 1] scale."""
        return 2.0 / (self.num_levels - 1)

    def loc(self, out: torch.Tensor) -> torch.Tensor:
        """Gaussian location on the [-1, 1] scale."""
        return 2.0 * _link(out, self.mean_activation) - 1.0

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Snap [0, 1] data to the nearest level (still in [0, 1])."""
        k = self.num_levels - 1
        return torch.round(x.clamp(0.0, 1.0) * k) / k

    def log_prob_levels(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Per-pixel log-probability of the level of ``x`` (same shape as ``x``).

        Evaluated from ``erfc`` of both ends of the (mirrored) bin, with a scaled ``erfcx`` form far in the
        lower tail, and differentiated by a hand-derived backward (``_DiscretisedGaussianBins``); ``loc``
        and ``log sigma`` enter through ordinary autograd. Agrees with :meth:`log_prob_levels_reference`
        to rounding (see the tests for the measured errors against float64), at a fraction of the cost.
        """
        if out.dtype not in _ERFC_TAIL:
            return self._log_prob_levels_two_log_ndtr(x, out)
        y, half_lo, side = self._level_data(x, out.dtype)
        inv_s = torch.exp(-(self._log_sigma(out) + _LN2))
        m = self.loc(out)
        half = 0.5 * self.bin_width
        bounded = self.mean_activation == "sigmoid"  # m = 2 sigmoid - 1 lies in [-1, 1]
        if torch.is_grad_enabled() and (m.requires_grad or inv_s.requires_grad):
            value, _, _ = _DiscretisedGaussianBins.apply(
                m, inv_s, y, half_lo, side, half, bounded, inv_s.requires_grad
            )
            return value
        value, _, _ = _discretised_gaussian_bins(m, inv_s, y, half_lo, side, half, bounded, False, False)
        return value

    def _level_data(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level ``y`` on [-1, 1], lower half-width of its bin and the edge marker ``side`` (see
        ``_discretised_gaussian_bins``).

        Kept for the last ``x`` (a weak reference, its version counter, the dtype): recomputed when ``x`` is
        another tensor or was modified in place. The returned tensors are shared: callers must not modify
        them.
        """
        if torch.compiler.is_compiling():
            return self._compute_level_data(x, dtype)
        hit = self._level_cache
        if hit is not None and hit[0]() is x and hit[1] == x._version and hit[2] == dtype:
            return hit[3]
        data = self._compute_level_data(x, dtype)
        self._level_cache = (weakref.ref(x), x._version, dtype, data)
        return data

    def __getstate__(self) -> dict:
        # A weak reference cannot be pickled, and the cache is only a shortcut.
        state = dict(self.__dict__)
        state["_level_cache"] = None
        return state

    def _compute_level_data(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.num_levels - 1
        level = torch.round(x.to(dtype).clamp(0.0, 1.0) * k)
        y = 2.0 * level / k - 1.0
        bottom = level <= 0
        top = level >= k
        tiny = torch.finfo(dtype).tiny
        side = top.to(dtype).sub_(bottom.to(dtype)).mul_(tiny)
        half_lo = torch.full_like(y, 0.5 * self.bin_width).masked_fill_(
            bottom.logical_or_(top), _EDGE_HALF_WIDTH
        )
        return y, half_lo, side

    def _log_prob_levels_two_log_ndtr(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob_levels` from ``log_ndtr`` (used for dtypes other than float32 and float64).

        Two ``log_ndtr`` evaluations per pixel: the interior bins need ``log Phi`` at both ends of the
        (possibly mirrored) interval, and each edge bin's half-line probability is the upper end's one,
        ``log Phi(hi)`` at the bottom and ``log Phi(-lo)`` at the top, so the edge bins reuse it by
        taking the mirrored interval exactly at the top. Same values and gradients, bit for bit, as
        :meth:`log_prob_levels_reference` (which evaluates ``log_ndtr`` four times), at about half the
        cost.
        """
        lo, hi, bottom, top = self._standardised_bin(x, out)
        # The mirrored interval [-hi, -lo] where it lies mostly in the upper tail (as in
        # log_normal_cdf_difference); at the edges the choice is fixed so that b is the edge's bound.
        flip = ((lo + hi) > 0).logical_or_(top).logical_and_(bottom.logical_not())
        a = torch.where(flip, -hi, lo)
        b = torch.where(flip, -lo, hi)
        log_a = torch.special.log_ndtr(a)
        log_b = torch.special.log_ndtr(b)
        d = (log_a - log_b).clamp(max=-torch.finfo(log_a.dtype).tiny)
        return torch.where(bottom.logical_or_(top), log_b, log_b + _log1mexp(d))

    def _standardised_bin(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Bounds ``(lo, hi)`` of each pixel's bin in standard deviations from the location, and the
        bottom / top level masks (the log_ndtr forms' common start)."""
        k = self.num_levels - 1
        level = torch.round(x.to(out.dtype).clamp(0.0, 1.0) * k)
        y = 2.0 * level / k - 1.0
        inv_s = torch.exp(-(self._log_sigma(out) + _LN2))
        m = self.loc(out)
        half = 0.5 * self.bin_width
        lo = (y - half - m) * inv_s
        hi = (y + half - m) * inv_s
        return lo, hi, level <= 0, level >= k

    def log_prob_levels_reference(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob_levels` written branch by branch (four ``log_ndtr`` per pixel); for tests."""
        return pixel_log_likelihood_reference(
            x.to(out.dtype),
            out,
            self._log_sigma(out),
            LIKELIHOOD_KINDS["discretised_gaussian"],
            self.mean_activation == "sigmoid",
            self.num_levels,
        )

    def _fused_args(self, out: torch.Tensor) -> tuple | None:
        if out.dtype not in _FUSED_DTYPES:
            return None
        return (
            self.log_sigma if self.learn_sigma else None,
            self._fixed_log_sigma,
            LIKELIHOOD_KINDS["discretised_gaussian"],
            self.mean_activation == "sigmoid",
            self.num_levels,
        )

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``log p(x | out)`` per data point: one fused kernel (``lpc_fast::log_likelihood_grad``) for
        float32 and float64, the sum of :meth:`log_prob_levels` otherwise."""
        args = self._fused_args(out)
        if args is not None:
            return self._fused_log_prob(x, out, args)
        return _sum_per_point(self.log_prob_levels(x, out))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The location mapped back to [0, 1] (the mean of the underlying Gaussian, not of the levels)."""
        return _link(out, self.mean_activation).clamp(0.0, 1.0)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of the level distribution: Gaussian on [-1, 1], snapped to the nearest level, in [0, 1]."""
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        y = self.loc(out) + 2.0 * torch.exp(self._log_sigma(out)) * noise
        return self.quantise((y + 1.0) * 0.5)
