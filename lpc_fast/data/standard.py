"""Readers for standard datasets in their distribution formats (no torchvision).

Each reader returns uint8 images ``[N, C, H, W]`` and int64 labels (or None). Files are looked up under
``ROOT/<dataset>/`` (and the folder names torchvision uses), see :data:`LOCATIONS`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import DatasetError

__all__ = [
    "LOCATIONS",
    "read_idx",
    "find_mnist_files",
    "read_mnist",
    "read_cifar10",
    "read_svhn",
    "read_celeba",
    "CELEBA_PARTITION",
]

# Sub-folders of ROOT searched for each dataset, in order.
LOCATIONS: dict[str, list[str]] = {
    "mnist": ["mnist", "MNIST/raw", "MNIST"],
    "fashion-mnist": ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"],
    "cifar10": ["cifar10", "cifar-10", "."],
    "svhn": ["svhn", "SVHN", "."],
    "celeba": ["celeba", "CelebA", "."],
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Raises
    ------
    DatasetError
        Bad magic number, unknown element type, or fewer bytes than the header declares.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read IDX file (corrupt or truncated gzip?): {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != need:
        raise DatasetError(
            f"{path}: IDX header declares shape {dims} ({need} bytes of data) but the file holds "
            f"{len(raw) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _first_existing(root: Path, dataset: str, names: list[str]) -> Path | None:
    for sub in LOCATIONS[dataset]:
        for name in names:
            p = root / sub / name
            if p.exists():
                return p
    return None


def _mnist_names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_mnist_files(root: Path, dataset: str, split: str) -> tuple[Path, Path] | None:
    """Locate the image and label IDX files of an MNIST-format dataset (gzipped or not)."""
    found = []
    for stem in _mnist_names(split):
        p = _first_existing(root, dataset, [stem + ".gz", stem])
        if p is None:
            return None
        found.append(p)
    return found[0], found[1]


def read_mnist(root: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST: 28x28 grey uint8 images ``[N, 1, 28, 28]`` and labels."""
    files = find_mnist_files(root, dataset, split)
    if files is None:
        img, lab = _mnist_names(split)
        raise DatasetError(
            f"{dataset}: expected {root / LOCATIONS[dataset][0] / (img + '.gz')} and "
            f"{lab}.gz (or the unzipped files, or under {', '.join(LOCATIONS[dataset][1:])}) under {root}; "
            "pass --data-root or set LPC_FAST_DATA, or use download=True"
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{files[0]}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{files[1]}: expected {images.shape[0]} labels, got shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only plain containers and NumPy arrays may be built.

    CIFAR's batches are pickles; refusing every other global keeps a tampered file from running code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("codecs", "encode"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _load_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(d[b"data"] if b"data" in d else d["data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"] if b"labels" in d else d["labels"], dtype=np.int64)
    except Exception as exc:  # any unpickling failure means a corrupt batch
        raise DatasetError(f"{where}: not a readable CIFAR-10 python batch: {exc}") from exc
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or labels.shape != (images.shape[0],):
        raise DatasetError(
            f"{where}: expected data [N, 3072] and N labels, got {images.shape} and {labels.shape}"
        )
    return images.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python version: ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    folder = _first_existing(root, "cifar10", ["cifar-10-batches-py"])
    archive = _first_existing(root, "cifar10", ["cifar-10-python.tar.gz"])
    parts = []
    if folder is not None:
        for n in names:
            p = folder / n
            if not p.exists():
                raise DatasetError(f"cifar10: {p} is missing from the extracted folder")
            parts.append(_load_cifar_batch(p.read_bytes(), str(p)))
    elif archive is not None:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for n in names:
                    if n not in members:
                        raise DatasetError(f"cifar10: {archive} has no member {n}")
                    f = tar.extractfile(members[n])
                    assert f is not None
                    parts.append(_load_cifar_batch(f.read(), f"{archive}:{n}"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"cifar10: cannot read {archive} (truncated or corrupt?): {exc}") from exc
    else:
        raise DatasetError(
            f"cifar10: expected {root / 'cifar10' / 'cifar-10-python.tar.gz'} or cifar-10-batches-py/ under "
            f"{root} (or {root / 'cifar10'}); pass --data-root or set LPC_FAST_DATA, or use download=True"
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 means digit 0)."""
    import scipy.io

    name = f"{split}_32x32.mat"
    path = _first_existing(root, "svhn", [name])
    if path is None:
        raise DatasetError(
            f"svhn: expected {root / 'svhn' / name} under {root}; pass --data-root or set LPC_FAST_DATA, "
            "or use download=True"
        )
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DatasetError(f"svhn: cannot read {path} (truncated or corrupt?): {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"svhn: {path} lacks the variables 'X' and 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DatasetError(f"svhn: {path}: expected X [32, 32, 3, N] and N labels, got {x.shape}, {y.shape}")
    labels = y.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), labels


# Official CelebA partition by file index (list_eval_partition.txt): train, valid, test.
CELEBA_PARTITION = {"train": (1, 162770), "valid": (162771, 182637), "test": (182638, 202599)}
_CELEBA_CROP = 148  # centre square crop of the 178x218 aligned faces before resizing


def _celeba_partition(folder: Path) -> dict[str, int] | None:
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        p = folder / name
        if p.exists():
            out = {}
            for line in p.read_text().splitlines():
                fields = re.split(r"[,\s]+", line.strip())
                if len(fields) == 2 and fields[1].isdigit():
                    out[fields[0]] = int(fields[1])
            return out
    return None


def _celeba_split_of(filename: str, partition: dict[str, int] | None) -> str | None:
    if partition is not None:
        code = partition.get(filename)
        return None if code is None else ("train", "valid", "test")[code]
    stem = Path(filename).stem
    if not stem.isdigit():
        return None
    idx = int(stem)
    for split, (lo, hi) in CELEBA_PARTITION.items():
        if lo <= idx <= hi:
            return split
    return None


def _crop_resize(data: bytes | Path, size: int, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as im:
            im = im.convert("RGB")
            w, h = im.size
            c = min(_CELEBA_CROP, w, h)
            left, top = (w - c) // 2, (h - c) // 2
            im = im.crop((left, top, left + c, top + c)).resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as exc:
        raise DatasetError(f"celeba: cannot decode image {where}: {exc}") from exc


def read_celeba(
    root: Path, split: str, size: int = 64, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """CelebA aligned faces, centre-cropped to 148x148 and resized to ``size`` (bicubic).

    Reads ``img_align_celeba/*.jpg`` or ``img_align_celeba.zip``; the split follows
    ``list_eval_partition.txt`` (or ``.csv``) when present, else the official index ranges
    :data:`CELEBA_PARTITION`. Decoding ~200k JPEGs takes minutes: callers cache the result.
    """
    folder_img = _first_existing(root, "celeba", ["img_align_celeba"])
    archive = _first_existing(root, "celeba", ["img_align_celeba.zip"])
    base = (folder_img or archive).parent if (folder_img or archive) else None
    if base is None:
        raise DatasetError(
            f"celeba: expected {root / 'celeba' / 'img_align_celeba'}/ (the aligned JPEGs), "
            f"img_align_celeba.zip or a preprocessed celeba{size}.npz under {root / 'celeba'}; "
            "pass --data-root or set LPC_FAST_DATA (CelebA cannot be downloaded without a mirror: "
            "set LPC_FAST_MIRROR and use download=True)"
        )
    partition = _celeba_partition(base)
    out: list[np.ndarray] = []
    if folder_img is not None and folder_img.is_dir():
        files = sorted(p for p in folder_img.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        chosen = [p for p in files if _celeba_split_of(p.name, partition) == split]
        for i, p in enumerate(chosen):
            out.append(_crop_resize(p, size, str(p)))
            if progress is not None:
                progress(i + 1, len(chosen))
    else:
        assert archive is not None
        try:
            with zipfile.ZipFile(archive) as zf:
                names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
                chosen = [n for n in names if _celeba_split_of(Path(n).name, partition) == split]
                for i, n in enumerate(chosen):
                    out.append(_crop_resize(zf.read(n), size, f"{archive}:{n}"))
                    if progress is not None:
                        progress(i + 1, len(chosen))
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DatasetError(f"celeba: cannot read {archive} (truncated or corrupt?): {exc}") from exc
    if not out:
        raise DatasetError(f"celeba: no images of split {split!r} found under {base}")
    return np.stack(out)
