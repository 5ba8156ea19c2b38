"""Pixel likelihoods ``log p(x | z)`` from a decoder output, one value per data point.

Every likelihood takes data ``x`` in [0, 1] with shape ``[B, C, H, W]`` (any trailing shape works) and the raw
decoder output of the same shape, and sums over everything but the batch dimension, so the result is ``[B]``
in nats. Summing per data point (never over the batch) is what keeps Langevin chains of different data points
independent: the energy gradient of chain ``b`` then depends on ``x_b`` only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BernoulliLikelihood",
    "DiscretisedGaussianLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "log_normal_cdf_difference",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LN2 = math.log(2.0)


def _sum_per_point(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


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

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
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

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _sum_per_point(-F.binary_cross_entropy_with_logits(out, x.to(out.dtype), reduction="none"))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=generator)


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

        Two ``log_ndtr`` evaluations per pixel: the interior bins need ``log Phi`` at both ends of the
        (possibly mirrored) interval, and each edge bin's half-line probability is the upper end's one,
        ``log Phi(hi)`` at the bottom and ``log Phi(-lo)`` at the top, so the edge bins reuse it by
        taking the mirrored interval exactly at the top. Same values and gradients, bit for bit, as
        :meth:`log_prob_levels_reference` (which evaluates ``log_ndtr`` four times), at about half the
        cost.
        """
        k = self.num_levels - 1
        level = torch.round(x.to(out.dtype).clamp(0.0, 1.0) * k)
        y = 2.0 * level / k - 1.0
        inv_s = torch.exp(-(self._log_sigma(out) + _LN2))
        m = self.loc(out)
        half = 0.5 * self.bin_width
        lo = (y - half - m) * inv_s
        hi = (y + half - m) * inv_s
        bottom = level <= 0
        top = level >= k
        # The mirrored interval [-hi, -lo] where it lies mostly in the upper tail (as in
        # log_normal_cdf_difference); at the edges the choice is fixed so that b is the edge's bound.
        flip = ((lo + hi) > 0).logical_or_(top).logical_and_(bottom.logical_not())
        a = torch.where(flip, -hi, lo)
        b = torch.where(flip, -lo, hi)
        log_a = torch.special.log_ndtr(a)
        log_b = torch.special.log_ndtr(b)
        d = (log_a - log_b).clamp(max=-torch.finfo(log_a.dtype).tiny)
        return torch.where(bottom.logical_or_(top), log_b, log_b + _log1mexp(d))

    def log_prob_levels_reference(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob_levels` written branch by branch (four ``log_ndtr`` per pixel); for tests."""
        k = self.num_levels - 1
        level = torch.round(x.to(out.dtype).clamp(0.0, 1.0) * k)
        y = 2.0 * level / k - 1.0
        inv_s = torch.exp(-(self._log_sigma(out) + _LN2))
        m = self.loc(out)
        half = 0.5 * self.bin_width
        lo = (y - half - m) * inv_s
        hi = (y + half - m) * inv_s
        bottom = level <= 0
        top = level >= k
        # Edge bins are half-lines; give the interior formula finite stand-ins there (no NaN gradients).
        edge = bottom | top
        lo_safe = torch.where(edge, torch.zeros_like(lo), lo)
        hi_safe = torch.where(edge, torch.ones_like(hi), hi)
        interior = log_normal_cdf_difference(lo_safe, hi_safe)
        return torch.where(
            bottom,
            torch.special.log_ndtr(hi),
            torch.where(top, torch.special.log_ndtr(-lo), interior),
        )

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _sum_per_point(self.log_prob_levels(x, out))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The location mapped back to [0, 1] (the mean of the underlying Gaussian, not of the levels)."""
        return _link(out, self.mean_activation).clamp(0.0, 1.0)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of the level distribution: Gaussian on [-1, 1], snapped to the nearest level, in [0, 1]."""
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        y = self.loc(out) + 2.0 * torch.exp(self._log_sigma(out)) * noise
        return self.quantise((y + 1.0) * 0.5)
