"""Datasets: the embedded default, procedural sprites, standard datasets from local files, ``npz:``.

Every dataset is returned as an :class:`ImageDataset` of float32 images ``[N, C, H, W]`` in ``[0, 1]``.

Names and fixed splits
----------------------
``digits``
    scikit-learn's bundled 8x8 digits (1797 real images, values 0..16, stored as ``k / 16``,
    ``num_levels = 17``). Offline; the default dataset. Split: ``numpy.random.default_rng(0)``
    permutes the 1797 indices; the last 297 of the permutation are ``test``, the first 1500
    ``train`` (each sorted back into the original order); ``all`` gives all 1797.
``shapes32``, ``shapes64``
    Procedural RGB sprites (square/circle/triangle/cross) with known factors (shape, scale,
    rotation, position, hue) in ``factors`` and the shape index in ``labels``; 256 levels.
    ``train`` and ``test`` are independent draws (streams 0 and 1 of ``seed``), default 20000 and
    2000 images; cached as ``.npz`` under ``$LPC_FAST_CACHE/data/shapes`` keyed by the parameters.
``mnist``, ``fashion-mnist``
    IDX files (``train-images-idx3-ubyte[.gz]`` ...) under ``ROOT/mnist`` or ``ROOT/fashion-mnist``
    (or torchvision's ``ROOT/MNIST/raw``); official 60000/10000 split.
``cifar10``
    ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/`` under ``ROOT/cifar10`` or ``ROOT``;
    official 50000/10000 split (``data_batch_1..5`` / ``test_batch``).
``svhn``
    ``train_32x32.mat`` / ``test_32x32.mat`` under ``ROOT/svhn``; official 73257/26032 split
    (``extra`` is not used); label 10 is mapped to digit 0.
``celeba``
    ``img_align_celeba/`` (or ``img_align_celeba.zip``) under ``ROOT/celeba``, centre-cropped to
    148x148 and resized to 64x64 (bicubic, Pillow), cached after the first pass; or a preprocessed
    ``ROOT/celeba/celeba64.npz`` with uint8 ``train``/``test`` arrays ``[N, 64, 64, 3]``. Official
    partition: ``list_eval_partition.txt`` if present, else image numbers 1-162770 ``train``,
    162771-182637 ``valid``, 182638-202599 ``test``. No labels.
``npz:PATH``
    An ``.npz``/``.npy`` file of uint8 (0..255) or float (``[0, 1]``) images ``[N, H, W]``,
    ``[N, H, W, C]`` or ``[N, C, H, W]`` under key ``images``, ``x`` or ``arr_0`` (optional integer
    ``labels``/``y``). Splits: the file's own ``train``/``test`` arrays (with optional
    ``train_labels``/``test_labels``) if present; else ``default_rng(0)`` permutes the N indices and
    the last ``round(0.1 N)`` (at least 1) are ``test``.

``ROOT`` is the ``root`` argument, else ``$LPC_FAST_DATA``, else ``~/.cache/lpc_fast/data``. With
``download=True`` missing standard files are fetched (``$LPC_FAST_MIRROR`` first) and verified against
known checksums (:mod:`lpc_fast.data.download`). Every failure raises :class:`DatasetError`.
"""

from __future__ import annotations

from .base import DatasetError, ImageDataset, cache_dir, data_root
from .loaders import DATASETS, DIGITS_NUM_TEST, load_dataset

__all__ = [
    "DATASETS",
    "DIGITS_NUM_TEST",
    "DatasetError",
    "ImageDataset",
    "cache_dir",
    "data_root",
    "load_dataset",
]
