"""Images from a user's ``.npz`` / ``.npy`` file (the ``npz:PATH`` dataset)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError

__all__ = ["IMAGE_KEYS", "read_npz_images", "to_nchw_float"]

IMAGE_KEYS = ("images", "x", "arr_0")
_LABEL_KEYS = ("labels", "y")


def to_nchw_float(array: np.ndarray, where: str) -> tuple[torch.Tensor, int | None]:
    """Convert an image array to float32 ``[N, C, H, W]`` in ``[0, 1]``.

    Layouts: ``[N, H, W]`` (grey), ``[N, H, W, C]`` (channels last: the last axis is 1, 3 or 4 and
    is checked first), ``[N, C, H, W]`` (axis 1 is 1, 3 or 4). Integer data must lie in 0..255 and
    is divided by 255 (256 levels); float data must already lie in ``[0, 1]`` (continuous); boolean
    data becomes 0/1 (2 levels).

    Returns
    -------
    images : Tensor
    num_levels : int or None
    """
    a = np.asarray(array)
    layouts = "uint8 or float images [N, H, W], [N, H, W, C] or [N, C, H, W] with C in {1, 3, 4}"
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[3] in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
        elif a.shape[1] not in (1, 3, 4):
            raise DatasetError(f"{where}: expected {layouts}; got shape {a.shape}")
    else:
        raise DatasetError(f"{where}: expected {layouts}; got shape {a.shape}")
    if a.shape[0] == 0:
        raise DatasetError(f"{where}: holds no images (shape {a.shape})")
    if a.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), 2
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: integer images must lie in 0..255, found {lo}..{hi}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).div_(255.0)
        return t, 256
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not (np.isfinite(a).all() and lo >= 0.0 and hi <= 1.0):
            raise DatasetError(f"{where}: float images must be finite and lie in [0, 1], found {lo}..{hi}")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), None
    raise DatasetError(f"{where}: unsupported dtype {a.dtype}; expected {layouts}")


def read_npz_images(path: str | Path) -> dict[str, np.ndarray]:
    """Read the arrays of an ``.npz`` or ``.npy`` file (no pickles).

    Returns a dict with ``"train"``/``"test"`` (and optional ``"train_labels"``/``"test_labels"``) when the
    file has those keys, else ``"images"`` (and optional ``"labels"``).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"npz: expected an .npz or .npy file at {path} holding images under key "
            f"{' / '.join(IMAGE_KEYS)} (or 'train' and 'test')"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"images": loaded}
        with loaded as f:
            keys = set(f.files)
            if {"train", "test"} <= keys:
                wanted = ["train", "test", "train_labels", "test_labels"]
                return {k: f[k] for k in wanted if k in keys}
            key = next((k for k in IMAGE_KEYS if k in keys), None)
            if key is None:
                raise DatasetError(
                    f"npz: {path} has keys {sorted(keys)}; expected one of {', '.join(IMAGE_KEYS)} "
                    "or both 'train' and 'test'"
                )
            out = {"images": f[key]}
            label_key = next((k for k in _LABEL_KEYS if k in keys), None)
            if label_key is not None:
                out["labels"] = f[label_key]
            return out
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"npz: cannot read {path} (truncated or corrupt?): {exc}") from exc
