"""Convergence diagnostics across parallel chains: split-R-hat and effective sample size.

Both take ``samples`` of shape ``[T, C, ...]`` (T draws of C chains; trailing dimensions are separate
scalar quantities, each diagnosed on its own) and return a tensor of the trailing shape, in float64.
Definitions follow Gelman et al., *Bayesian Data Analysis* (3rd ed., §11.4-11.5) and Stan's reference manual:
R-hat on split chains, ESS from the combined autocorrelation with Geyer's initial monotone sequence.
"""

from __future__ import annotations

import math

import torch

__all__ = ["effective_sample_size", "split_rhat"]


def _flatten(samples: torch.Tensor, min_draws: int) -> tuple[torch.Tensor, torch.Size]:
    if samples.dim() < 2:
        raise ValueError(f"samples must have shape [T, C, ...], got {tuple(samples.shape)}")
    if samples.shape[0] < min_draws:
        raise ValueError(f"need at least {min_draws} draws per chain, got {samples.shape[0]}")
    trailing = samples.shape[2:]
    x = samples.detach().to(torch.float64).reshape(samples.shape[0], samples.shape[1], -1)
    return x, trailing


def _split(x: torch.Tensor) -> torch.Tensor:
    """Halve every chain (dropping the middle draw when T is odd): ``[T, C, K] -> [T // 2, 2C, K]``."""
    n = x.shape[0] // 2
    return torch.cat([x[:n], x[x.shape[0] - n :]], dim=1)


def split_rhat(samples: torch.Tensor) -> torch.Tensor:
    """Potential scale reduction factor on split chains.

    ``R = sqrt(var_plus / W)`` with ``W`` the mean within-chain variance and
    ``var_plus = (n - 1)/n W + B/n`` (``B/n`` the variance of the chain means), computed on the 2C half-chains
    so that a trend within a chain also shows. Near 1 for mixed chains; above 1.01-1.1 means the chains have
    not forgotten their starting points or sit in different modes.

    Parameters
    ----------
    samples : Tensor
        ``[T, C, ...]`` with ``T >= 4`` and ``C >= 1``.

    Returns
    -------
    Tensor
        Shape ``samples.shape[2:]``, float64 (NaN where every chain is constant).
    """
    x, trailing = _flatten(samples, 4)
    halves = _split(x)
    n = halves.shape[0]
    means = halves.mean(dim=0)
    within = halves.var(dim=0, unbiased=True).mean(dim=0)
    between_over_n = means.var(dim=0, unbiased=True)
    var_plus = (n - 1) / n * within + between_over_n
    return torch.sqrt(var_plus / within).reshape(trailing)


def _autocovariance(x: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance of each chain along dim 0 via FFT (zero-padded: no wrap-around)."""
    t = x.shape[0]
    centred = x - x.mean(dim=0, keepdim=True)
    size = 1 << (2 * t - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=size, dim=0)[:t]
    return acov / t


def effective_sample_size(samples: torch.Tensor) -> torch.Tensor:
    """Effective sample size of the mean, pooled over chains (Stan's estimator, not rank-normalised).

    The combined autocorrelation is ``rho_t = 1 - (W - mean_c acov_c(t)) / var_plus``; the integrated time
    ``tau = -1 + 2 sum_k P_k`` sums the pair sums ``P_k = rho_2k + rho_2k+1`` up to the first negative one,
    made non-increasing (Geyer's initial monotone sequence). ``ESS = C T / tau``, capped at
    ``C T log10(C T)`` as in Stan.

    Parameters
    ----------
    samples : Tensor
        ``[T, C, ...]`` with ``T >= 4``.

    Returns
    -------
    Tensor
        Shape ``samples.shape[2:]``, float64.
    """
    x, trailing = _flatten(samples, 4)
    t, c, _ = x.shape
    acov = _autocovariance(x)  # [T, C, K]
    chain_var = acov[0] * t / (t - 1)
    within = chain_var.mean(dim=0)
    var_plus = within * (t - 1) / t
    if c > 1:
        var_plus = var_plus + x.mean(dim=0).var(dim=0, unbiased=True)
    rho = 1.0 - (within - acov.mean(dim=1)) / var_plus  # [T, K]
    pairs = rho[: 2 * (t // 2)].reshape(t // 2, 2, -1).sum(dim=1)  # [T//2, K]
    positive = torch.cumprod((pairs > 0).to(pairs.dtype), dim=0)
    monotone = torch.cummin(pairs, dim=0).values
    tau = -1.0 + 2.0 * (monotone * positive).sum(dim=0)
    total = c * t
    tau = torch.clamp(tau, min=1.0 / math.log10(total)) if total > 1 else tau
    return (total / tau).reshape(trailing)
