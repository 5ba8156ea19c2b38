"""The dataset container, the error type and the data/cache directory rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DatasetError", "ImageDataset", "cache_dir", "data_root", "uint8_to_float"]


class DatasetError(ValueError):
    """A dataset is missing, corrupt or has an unexpected layout.

    The message names the file that was expected (or read), where, and how to get it.
    """


class ImageDataset(Dataset):
    """Images as one float32 tensor ``[N, C, H, W]`` with values in ``[0, 1]``.

    Parameters
    ----------
    images
        Float32 tensor ``[N, C, H, W]`` in ``[0, 1]``.
    labels
        Int64 tensor ``[N]`` or None.
    num_levels
        Number of intensity levels of the raw data (17 for digits, 256 for 8-bit images), None for
        continuous data. Pixel ``k`` of an ``L``-level image is stored as ``k / (L - 1)``.
    name
        Dataset name as accepted by :func:`lpc_fast.data.load_dataset`.
    split
        ``"train"``, ``"test"``, ...
    factors
        Optional float32 tensor ``[N, F]`` of generative factors (procedural data).
    factor_names
        Names of the ``F`` factor columns.
    spec
        Keyword arguments that reload this dataset with ``load_dataset(**spec, split=...)``
        (used to fetch the training split that matches a test split).

    Notes
    -----
    ``dataset[i]`` returns the image tensor ``[C, H, W]`` only; the label is ``dataset.labels[i]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        num_levels: int | None,
        name: str,
        split: str,
        factors: torch.Tensor | None = None,
        factor_names: tuple[str, ...] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise DatasetError(f"{name}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if images.dtype != torch.float32:
            raise DatasetError(f"{name}: images must be float32, got {images.dtype}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{name}: {labels.shape[0]} labels for {images.shape[0]} images")
        self.images = images
        self.labels = labels
        self.num_levels = num_levels
        self.name = name
        self.split = split
        self.factors = factors
        self.factor_names = factor_names
        self.spec = dict(spec) if spec is not None else {"name": name}

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_dims(self) -> int:
        """Number of pixel values ``C * H * W`` of one image."""
        c, h, w = self.shape
        return c * h * w

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
            f"num_levels={self.num_levels})"
        )


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding users' dataset files.

    First match wins: ``root``, the environment variable ``LPC_FAST_DATA``, ``~/.cache/lpc_fast/data``.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("LPC_FAST_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lpc_fast" / "data"


def cache_dir(*parts: str) -> Path:
    """Directory for derived files (procedural data, preprocessed images, feature networks).

    ``LPC_FAST_CACHE`` if set, else ``~/.cache/lpc_fast``; ``parts`` are appended and created.
    """
    env = os.environ.get("LPC_FAST_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "lpc_fast"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def uint8_to_float(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 tensor in ``[0, 1]`` (``k / 255``)."""
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(torch.float32).div_(255.0)
