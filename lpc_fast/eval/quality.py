"""Distances between two sets of features: Fréchet distance, kernel distance, density and coverage.

All take ``[N, F]`` feature arrays (NumPy or torch) and compute in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["density_coverage", "frechet_distance", "kernel_distance"]

ArrayLike = np.ndarray | torch.Tensor


def _as_f64(a: ArrayLike, name: str) -> np.ndarray:
    arr = (
        a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    )
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be [N >= 2, F] features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values")
    return arr


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. The trace term is computed as the sum
    of square roots of the eigenvalues of the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)``, which has
    the same spectrum as ``S_a S_b``; this avoids the complex round-off of a general ``sqrtm``.
    """
    a, b = _as_f64(feats_a, "feats_a"), _as_f64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_distance(
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel (Inception) distance: unbiased MMD² with the kernel ``(x.y / F + 1)^3``.

    Averaged over ``num_subsets`` random subsets of ``min(subset_size, N_a, N_b)`` points from each set
    (Bińkowski et al. 2018). Returns ``(mean, std over subsets)``; unlike the Fréchet distance the
    estimate is unbiased, so it can be slightly negative when the two sets come from one distribution.
    When a subset is a whole set, every subset is the same and the std is 0.
    """
    a = torch.from_numpy(_as_f64(feats_a, "feats_a"))
    b = torch.from_numpy(_as_f64(feats_b, "feats_b"))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    off = m * (m - 1)
    for i in range(num_subsets):
        x = a[torch.from_numpy(rng.choice(a.shape[0], m, replace=False))]
        y = b[torch.from_numpy(rng.choice(b.shape[0], m, replace=False))]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / off
        values[i] = (within - 2.0 * kxy.sum() / (m * m)).item()
    return float(values.mean()), float(values.std(ddof=1) if num_subsets > 1 else 0.0)


def _pairwise(x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([torch.cdist(x[i : i + chunk], y) for i in range(0, x.shape[0], chunk)])


def density_coverage(real: ArrayLike, fake: ArrayLike, k: int = 5) -> tuple[float, float]:
    """Density and coverage of Naeem et al. (2020).

    With ``r_i`` the distance from real point ``X_i`` to its k-th nearest other real point:
    density = ``(1 / (k M)) sum_j sum_i 1[|Y_j - X_i| < r_i]`` over the M fake points, and
    coverage = ``(1 / N) sum_i 1[min_j |X_i - Y_j| < r_i]`` over the N real points.
    For two samples of one distribution E[density] = 1, and E[coverage] = 1 - prod_{i=1..k}
    (N - i) / (N + M - i) (about 1 - 2^-k for M = N).
    """
    x = torch.from_numpy(_as_f64(real, "real"))
    y = torch.from_numpy(_as_f64(fake, "fake"))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must lie in [1, N_real - 1], got {k}")
    d_xx = _pairwise(x, x)
    # k-th neighbour excluding the point itself (distance 0 at index 0 of the sorted row).
    radii = d_xx.kthvalue(k + 1, dim=1).values
    d_xy = _pairwise(x, y)  # [N, M]
    inside = d_xy < radii[:, None]
    density = inside.sum().item() / (k * y.shape[0])
    coverage = (d_xy.min(dim=1).values < radii).double().mean().item()
    return float(density), float(coverage)
