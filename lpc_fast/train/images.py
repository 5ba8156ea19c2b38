"""A small PNG grid writer on pillow (no torchvision dependency)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "save_image_grid"]


def image_grid(
    images: torch.Tensor, *, nrow: int | None = None, pad: int = 1, min_size: int = 32, pad_value: float = 0.5
) -> np.ndarray:
    """Tile images into one uint8 array.

    Parameters
    ----------
    images : Tensor
        ``[N, C, H, W]`` with values in ``[0, 1]`` (clamped); C is 1 or 3.
    nrow : int, optional
        Images per row (default: ``ceil(sqrt(N))``).
    pad : int
        Pixels of ``pad_value`` between tiles (after upscaling).
    min_size : int
        Tiles smaller than this are enlarged by an integer nearest-neighbour factor so that tiny
        images (8x8 digits) stay legible.

    Returns
    -------
    numpy.ndarray
        ``[H', W']`` (grey) or ``[H', W', 3]`` (colour) uint8.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0.0, 1.0)
    n, c, h, w = x.shape
    factor = max(1, math.ceil(min_size / max(h, w)))
    if factor > 1:
        x = x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        h, w = h * factor, w * factor
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = max(1, math.ceil(n / nrow))
    grid = torch.full((c, ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return arr[0] if c == 1 else np.transpose(arr, (1, 2, 0))


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    nrow: int | None = None,
    pad: int = 1,
    min_size: int = 32,
) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG and return its path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image_grid(images, nrow=nrow, pad=pad, min_size=min_size)
    Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB").save(path)
    return path
