"""``load_dataset``: one entry point for every dataset (see the package docstring for splits)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import download as _download
from . import shapes as _shapes
from . import standard as _standard
from .base import DatasetError, ImageDataset, cache_dir, data_root, uint8_to_float
from .npz import read_npz_images, to_nchw_float

__all__ = ["DATASETS", "SPLIT_SEED", "DIGITS_NUM_TEST", "NPZ_TEST_FRACTION", "load_dataset"]

SPLIT_SEED = 0  # splits never depend on the user's seed: test sets stay comparable across runs
DIGITS_NUM_TEST = 297
NPZ_TEST_FRACTION = 0.1
SHAPES_DEFAULT_SIZES = {"train": 20000, "test": 2000}
_SHAPES_VERSION = 1
_CELEBA_VERSION = 1

DATASETS = (
    "digits",
    "shapes32",
    "shapes64",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "svhn",
    "celeba",
    "npz:PATH",
)


def _split_indices(n: int, n_test: int, split: str, name: str) -> np.ndarray:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    if split == "train":
        return np.sort(perm[: n - n_test])
    if split == "test":
        return np.sort(perm[n - n_test :])
    if split == "all":
        return np.arange(n)
    raise DatasetError(f"{name}: unknown split {split!r}; expected 'train', 'test' or 'all'")


def _load_digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float32) / 16.0
    idx = _split_indices(images.shape[0], DIGITS_NUM_TEST, split, "digits")
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images[idx, None])),
        torch.from_numpy(np.asarray(d.target, dtype=np.int64)[idx]),
        num_levels=17,
        name="digits",
        split=split,
        spec={"name": "digits"},
    )


def _load_shapes(name: str, split: str, seed: int, num_examples: int | None, cache: bool) -> ImageDataset:
    size = 32 if name == "shapes32" else 64
    if split not in SHAPES_DEFAULT_SIZES:
        raise DatasetError(f"{name}: unknown split {split!r}; expected 'train' or 'test'")
    n = SHAPES_DEFAULT_SIZES[split] if num_examples is None else int(num_examples)
    stream = 0 if split == "train" else 1
    path = cache_dir("data", "shapes") / f"shapes{size}_v{_SHAPES_VERSION}_seed{seed}_{split}_n{n}.npz"
    images = factors = None
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                images, factors = f["images"], f["factors"]
        except (OSError, ValueError, EOFError, KeyError):
            images = None  # a damaged cache file is regenerated
    if images is None:
        images, factors = _shapes.generate_shapes(n, size, seed, stream)
        if cache:
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, factors=factors)
            os.replace(tmp, path)
    assert factors is not None
    return ImageDataset(
        uint8_to_float(images),
        torch.from_numpy(factors[:, 0].astype(np.int64)),
        num_levels=256,
        name=name,
        split=split,
        factors=torch.from_numpy(factors),
        factor_names=_shapes.FACTOR_NAMES,
        spec={"name": name, "seed": seed, "num_examples": num_examples},
    )


def _download_all(name: str, root: Path, split: str) -> None:
    dest = root / _standard.LOCATIONS[name][0]
    for filename in _download.CHECKSUMS[name]:
        if name == "svhn" and not filename.startswith(f"{split}_"):
            continue  # each SVHN split is its own large file
        _download.download_file(name, filename, dest)
    if name == "celeba":
        import zipfile

        with zipfile.ZipFile(dest / "img_align_celeba.zip") as zf:
            zf.extractall(dest)


def _have_files(name: str, root: Path, split: str) -> bool:
    if name in ("mnist", "fashion-mnist"):
        return _standard.find_mnist_files(root, name, split) is not None
    if name == "cifar10":
        return any(
            (root / sub / f).exists()
            for sub in _standard.LOCATIONS["cifar10"]
            for f in ("cifar-10-python.tar.gz", "cifar-10-batches-py")
        )
    if name == "svhn":
        return any((root / sub / f"{split}_32x32.mat").exists() for sub in _standard.LOCATIONS["svhn"])
    return any(
        (root / sub / f).exists()
        for sub in _standard.LOCATIONS["celeba"]
        for f in ("img_align_celeba", "img_align_celeba.zip", "celeba64.npz")
    )


def _load_celeba(root: Path, split: str) -> np.ndarray:
    for sub in _standard.LOCATIONS["celeba"]:
        pre = root / sub / "celeba64.npz"
        if pre.exists():
            arrays = read_npz_images(pre)
            if split not in arrays:
                raise DatasetError(
                    f"celeba: {pre} must hold 'train' and 'test' arrays of uint8 [N, 64, 64, 3]"
                )
            return arrays[split]
    # Decoding the JPEGs is slow: keep the result, keyed by the source folder.
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    cached = cache_dir("data", "celeba") / f"celeba64_v{_CELEBA_VERSION}_{key}_{split}.npy"
    if cached.exists():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            pass

    def progress(i: int, n: int) -> None:
        if i % 5000 == 0 or i == n:
            print(f"celeba: preprocessed {i}/{n} images", file=sys.stderr)

    images = _standard.read_celeba(root, split, 64, progress)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, images)
    os.replace(tmp, cached)
    return images


def _load_standard(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    allowed = ("train", "test", "valid") if name == "celeba" else ("train", "test")
    if split not in allowed:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {', '.join(allowed)}")
    if download and not _have_files(name, root, split):
        _download_all(name, root, split)
    labels = None
    if name in ("mnist", "fashion-mnist"):
        images, labels = _standard.read_mnist(root, name, split)
    elif name == "cifar10":
        images, labels = _standard.read_cifar10(root, split)
    elif name == "svhn":
        images, labels = _standard.read_svhn(root, split)
    else:
        images = _load_celeba(root, split)
        if images.ndim != 4 or images.shape[1:] not in ((3, 64, 64), (64, 64, 3)):
            raise DatasetError(f"celeba: expected uint8 images [N, 64, 64, 3], got {images.shape}")
        if images.shape[-1] == 3:
            images = images.transpose(0, 3, 1, 2)
    return ImageDataset(
        uint8_to_float(images),
        None if labels is None else torch.from_numpy(labels),
        num_levels=256,
        name=name,
        split=split,
        spec={"name": name, "root": str(root)},
    )


def _load_npz(name: str, split: str) -> ImageDataset:
    path = Path(name[len("npz:") :]).expanduser()
    arrays = read_npz_images(path)
    labels = None
    if "train" in arrays:
        if split not in ("train", "test"):
            raise DatasetError(f"{name}: unknown split {split!r}; the file holds 'train' and 'test'")
        images, levels = to_nchw_float(arrays[split], f"{path}['{split}']")
        raw_labels = arrays.get(f"{split}_labels")
    else:
        images, levels = to_nchw_float(arrays["images"], str(path))
        n = images.shape[0]
        n_test = int(round(NPZ_TEST_FRACTION * n)) if n >= 2 else 0
        n_test = max(n_test, 1) if n >= 2 else 0
        idx = _split_indices(n, n_test, split, name)
        images = images[torch.from_numpy(idx)]
        raw_labels = arrays.get("labels")
        if raw_labels is not None:
            raw_labels = np.asarray(raw_labels)[idx] if len(raw_labels) == n else None
    if raw_labels is not None and np.issubdtype(np.asarray(raw_labels).dtype, np.integer):
        if len(raw_labels) == images.shape[0]:
            labels = torch.from_numpy(np.asarray(raw_labels, dtype=np.int64))
    return ImageDataset(images, labels, num_levels=levels, name=name, split=split, spec={"name": name})


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    num_examples: int | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Load a dataset split as an :class:`ImageDataset`.

    Parameters
    ----------
    name
        One of :data:`DATASETS`: ``digits``, ``shapes32``, ``shapes64``, ``mnist``, ``fashion-mnist``,
        ``cifar10``, ``svhn``, ``celeba``, or ``npz:PATH``.
    split
        ``"train"`` or ``"test"`` (``digits`` and ``npz:`` without own splits also accept ``"all"``;
        ``celeba`` also ``"valid"``).
    root
        Directory of the standard datasets' files; default ``$LPC_FAST_DATA`` or
        ``~/.cache/lpc_fast/data``.
    download
        Fetch missing standard files from the mirrors (checksum-verified) into ``root``.
    seed
        Seed of the procedural ``shapes`` data (splits of real data are fixed and ignore it).
    num_examples
        Number of procedural images (default 20000 train / 2000 test).
    cache
        Keep generated or preprocessed arrays in the cache directory (``$LPC_FAST_CACHE``).

    Raises
    ------
    DatasetError
        Unknown name or split, missing or corrupt files (the message says what was expected where).
    """
    key = name.strip()
    if key.startswith("npz:"):
        return _load_npz(key, split)
    key = key.lower()
    if key == "digits":
        return _load_digits(split)
    if key in ("shapes32", "shapes64"):
        return _load_shapes(key, split, seed, num_examples, cache)
    if key in ("mnist", "fashion-mnist", "cifar10", "svhn", "celeba"):
        return _load_standard(key, split, data_root(root), download)
    raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
