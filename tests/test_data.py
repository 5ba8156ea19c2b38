"""Datasets: fixed splits, procedural determinism, file formats, downloads and their errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lpc_fast.data import DatasetError, ImageDataset, load_dataset
from lpc_fast.data import download as dl
from lpc_fast.data.shapes import FACTOR_NAMES, POS_RANGE, SCALE_RANGE, SHAPE_NAMES, generate_shapes
from lpc_fast.data.standard import read_idx


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    # Never touch the user's cache or data, nor the network.
    monkeypatch.setenv("LPC_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LPC_FAST_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("LPC_FAST_MIRROR", raising=False)
    monkeypatch.setattr(dl, "MIRRORS", {k: [] for k in dl.MIRRORS})


def _rows(ds: ImageDataset) -> set[bytes]:
    return {img.numpy().tobytes() + bytes([int(lab)]) for img, lab in zip(ds.images, ds.labels)}


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_and_levels():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.shape == (1, 8, 8) and train.num_levels == 17 and train.name == "digits"
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    for ds in (train, test):
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        # values are k / 16 exactly, k in 0..16
        k = ds.images * 16
        assert torch.equal(k, k.round())
    assert torch.equal(train[3], train.images[3])
    assert len(train) == 1500


def test_digits_split_is_fixed_disjoint_and_complete():
    a, b = load_dataset("digits", "train"), load_dataset("digits", "train", seed=123)
    assert torch.equal(a.images, b.images)  # the split never depends on the seed
    test, full = load_dataset("digits", "test"), load_dataset("digits", "all")
    assert len(full) == 1797
    # The sklearn digits contain duplicate images, so compare as multisets of (image, label) rows.
    rows = sorted(
        r
        for ds in (a, test)
        for r in [x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(ds.images, ds.labels)]
    )
    rows_full = sorted(x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(full.images, full.labels))
    assert rows == rows_full
    perm = np.random.default_rng(0).permutation(1797)
    assert torch.equal(test.images, full.images[np.sort(perm[1500:])])


# ---------------------------------------------------------------- procedural shapes


def test_shapes_deterministic_from_seed_and_cached(tmp_path):
    a = load_dataset("shapes32", "train", seed=3, num_examples=300)
    cache_files = list((tmp_path / "cache" / "data" / "shapes").glob("*.npz"))
    assert len(cache_files) == 1
    b = load_dataset("shapes32", "train", seed=3, num_examples=300)  # from the cache
    c = load_dataset("shapes32", "train", seed=3, num_examples=300, cache=False)  # regenerated
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert torch.equal(a.factors, c.factors)
    d = load_dataset("shapes32", "train", seed=4, num_examples=300)
    assert not torch.equal(a.images, d.images)
    test = load_dataset("shapes32", "test", seed=3, num_examples=300)
    assert not torch.equal(a.factors, test.factors)  # independent streams
    assert a.shape == (3, 32, 32) and a.num_levels == 256 and a.factor_names == FACTOR_NAMES
    assert torch.equal(a.labels, a.factors[:, 0].long())


def test_shapes_factor_coverage_and_rendering():
    n, size = 4000, 32
    images, factors = generate_shapes(n, size, seed=0)
    shape = factors[:, 0].astype(int)
    # Each of the 4 shapes: expected n/4 = 1000, binomial sd ~27; 850 is > 5 sd away.
    counts = np.bincount(shape, minlength=len(SHAPE_NAMES))
    assert counts.min() > 850
    # Continuous factors cover their ranges: with 4000 uniform draws the extreme order statistics
    # lie within 0.5% of the range ends except with probability ~2e-9.
    for col, (lo, hi) in ((1, SCALE_RANGE), (2, (0, 2 * np.pi)), (3, POS_RANGE), (4, POS_RANGE), (5, (0, 1))):
        v = factors[:, col]
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.005 * (hi - lo) and v.max() > hi - 0.005 * (hi - lo)
    # Rendering follows the factors: the ink's centroid sits at the drawn position (triangles and
    # crosses are symmetric about their centre up to rotation; allow one pixel), and the brightest
    # channel matches the hue sector.
    mass = images.astype(np.float64).sum(axis=1)
    grid = (np.arange(size) + 0.5) / size
    total = mass.sum(axis=(1, 2))
    assert (total > 0).all()
    cx = (mass.sum(axis=1) * grid).sum(axis=1) / total
    cy = (mass.sum(axis=2) * grid).sum(axis=1) / total
    sym = shape != 2  # a triangle's centroid is its centre too, but its pixelation is coarser
    assert np.abs(cx - factors[:, 3])[sym].max() < 1.0 / size
    assert np.abs(cy - factors[:, 4])[sym].max() < 1.0 / size
    assert np.abs(cx - factors[:, 3]).max() < 1.5 / size
    peak = images.reshape(n, 3, -1).max(axis=2).argmax(axis=1)
    sector = np.floor(factors[:, 5] * 6).astype(int) % 6
    primary = np.array([0, 1, 1, 2, 2, 0])[sector]  # red, green, green, blue, blue, red
    ambiguous = np.abs(factors[:, 5] * 6 - np.round(factors[:, 5] * 6)) < 0.05
    assert (peak == primary)[~ambiguous].all()


def test_shapes_generation_is_fast():
    t = time.perf_counter()
    ds = load_dataset("shapes32", "train", cache=False)
    assert len(ds) == 20000
    # Measured ~0.5 s on 2 cores; 10 s leaves room for a loaded machine.
    assert time.perf_counter() - t < 10.0


# ---------------------------------------------------------------- npz:


def _imgs(n=30, h=5, w=7, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "nhwc1"])
def test_npz_layouts(tmp_path, layout):
    base = _imgs(c=None if layout == "nhw" else (1 if layout == "nhwc1" else 3))
    arr = base.transpose(0, 3, 1, 2) if layout == "nchw" else base
    np.savez(tmp_path / "d.npz", images=arr)
    tr = load_dataset(f"npz:{tmp_path / 'd.npz'}", "train")
    te = load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")
    c = 1 if layout in ("nhw", "nhwc1") else 3
    assert tr.shape == (c, 5, 7) and tr.num_levels == 256
    assert len(tr) == 27 and len(te) == 3  # round(0.1 * 30) test
    full = base if base.ndim == 4 else base[..., None]
    expect = torch.from_numpy(full.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    perm = np.random.default_rng(0).permutation(30)
    assert torch.equal(te.images, expect[np.sort(perm[27:])])
    assert torch.equal(tr.images, expect[np.sort(perm[:27])])


def test_npz_keys_float_npy_and_own_splits(tmp_path):
    f = np.random.default_rng(1).random((20, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=f, y=np.arange(20))
    ds = load_dataset(f"npz:{tmp_path / 'x.npz'}", "all")
    assert ds.num_levels is None and torch.allclose(ds.images, torch.from_numpy(f.transpose(0, 3, 1, 2)))
    assert torch.equal(ds.labels, torch.arange(20))
    np.savez(tmp_path / "a.npz", _imgs(n=10))  # stored as arr_0
    assert len(load_dataset(f"npz:{tmp_path / 'a.npz'}", "all")) == 10
    np.save(tmp_path / "b.npy", _imgs(n=10))
    assert load_dataset(f"npz:{tmp_path / 'b.npy'}", "train").shape == (1, 5, 7)
    np.savez(tmp_path / "s.npz", train=_imgs(n=8), test=_imgs(n=3, seed=1), test_labels=np.arange(3))
    tr = load_dataset(f"npz:{tmp_path / 's.npz'}", "train")
    te = load_dataset(f"npz:{tmp_path / 's.npz'}", "test")
    assert len(tr) == 8 and len(te) == 3 and tr.labels is None and torch.equal(te.labels, torch.arange(3))


def test_npz_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DatasetError, match="nope.npz"):
        load_dataset(f"npz:{missing}")
    np.savez(tmp_path / "bad_shape.npz", images=np.zeros((4, 5, 6, 7), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"bad_shape.*got shape \(4, 5, 6, 7\)"):
        load_dataset(f"npz:{tmp_path / 'bad_shape.npz'}")
    np.savez(tmp_path / "bad_ndim.npz", images=np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(DatasetError, match="expected uint8 or float images"):
        load_dataset(f"npz:{tmp_path / 'bad_ndim.npz'}")
    np.savez(tmp_path / "range.npz", images=np.full((4, 5, 5), 2.0, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"lie in \[0, 1\]"):
        load_dataset(f"npz:{tmp_path / 'range.npz'}")
    np.savez(tmp_path / "nokey.npz", foo=_imgs())
    with pytest.raises(DatasetError, match="has keys"):
        load_dataset(f"npz:{tmp_path / 'nokey.npz'}")
    np.savez(tmp_path / "full.npz", images=_imgs(n=200))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="trunc.npz.*truncated or corrupt"):
        load_dataset(f"npz:{tmp_path / 'trunc.npz'}")
    np.save(tmp_path / "full.npy", _imgs(n=200))
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="trunc.npy.*truncated or corrupt"):
        load_dataset(f"npz:{tmp_path / 'trunc.npy'}")


def test_unknown_name_and_split():
    with pytest.raises(DatasetError, match="unknown dataset 'foo'"):
        load_dataset("foo")
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("digits", "valid")
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- standard formats on tiny files


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train=12, n_test=5, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize(
    "name,sub,gz",
    [("mnist", "mnist", True), ("mnist", "MNIST/raw", False), ("fashion-mnist", "fashion-mnist", True)],
)
def test_mnist_format(tmp_path, name, sub, gz):
    arrays = _write_mnist(tmp_path / "data" / sub, gz=gz)
    tr = load_dataset(name, "train")
    te = load_dataset(name, "test")
    assert tr.images.shape == (12, 1, 28, 28) and te.images.shape == (5, 1, 28, 28)
    assert torch.equal(tr.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"] / 255.0).float())
    assert torch.equal(te.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert tr.num_levels == 256


def test_idx_truncated_and_bad_magic(tmp_path):
    data = _idx_bytes(np.zeros((3, 28, 28)))
    (tmp_path / "t.gz").write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DatasetError, match=r"t.gz: IDX header declares shape \(3, 28, 28\)"):
        read_idx(tmp_path / "t.gz")
    (tmp_path / "g.gz").write_bytes(gzip.compress(data)[:-20])  # a cut gzip stream
    with pytest.raises(DatasetError, match="g.gz"):
        read_idx(tmp_path / "g.gz")
    (tmp_path / "m").write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(tmp_path / "m")


def test_missing_standard_dataset_message(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=str(tmp_path / "r"))
    msg = str(exc.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path / "r") in msg
    assert "LPC_FAST_DATA" in msg and "download=True" in msg
    for name in ("mnist", "fashion-mnist", "svhn", "celeba"):
        with pytest.raises(DatasetError, match=f"{name}: expected"):
            load_dataset(name)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return {b"batch_label": b"x", b"labels": labels, b"data": data}, data, labels


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar10_format(tmp_path, as_archive):
    folder = tmp_path / "data" / "cifar10"
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    if as_archive:
        folder.mkdir(parents=True)
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, (d, _, _) in batches.items():
                blob = pickle.dumps(d, protocol=2)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (folder / "cifar-10-batches-py").mkdir(parents=True)
        for name, (d, _, _) in batches.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(d))
    tr, te = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")
    assert tr.images.shape == (15, 3, 32, 32) and te.images.shape == (4, 3, 32, 32)
    expect = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(tr.images, torch.from_numpy(expect / 255.0).float())
    assert te.labels.tolist() == batches["test_batch"][2]


def test_cifar10_rejects_foreign_pickles_and_truncation(tmp_path):
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(2, i)[0]))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR-10"):
        load_dataset("cifar10", "test")
    archive = tmp_path / "a" / "cifar10"
    archive.mkdir(parents=True)
    (archive / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08" + b"\0" * 40)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", root=str(tmp_path / "a"))


def test_svhn_format(tmp_path):
    import scipy.io

    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 6)).astype(np.uint8)
    y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)
    scipy.io.savemat(folder / "test_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", "test")
    assert ds.images.shape == (6, 3, 32, 32)
    assert ds.labels.tolist() == [0, 1, 2, 0, 9, 5]
    assert torch.equal(ds.images[2], torch.from_numpy(x[..., 2].transpose(2, 0, 1) / 255.0).float())
    raw = (folder / "test_32x32.mat").read_bytes()
    (folder / "test_32x32.mat").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", "test")


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (218, 178, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["folder", "zip", "npz"])
def test_celeba_formats(tmp_path, kind):
    folder = tmp_path / "data" / "celeba"
    folder.mkdir(parents=True)
    names = ["000001.jpg", "000002.jpg", "000003.jpg", "182640.jpg"]
    if kind == "folder":
        (folder / "img_align_celeba").mkdir()
        for i, n in enumerate(names):
            (folder / "img_align_celeba" / n).write_bytes(_jpeg(i))
        # The partition file overrides the index ranges: 000003 becomes a test image.
        (folder / "list_eval_partition.txt").write_text(
            "000001.jpg 0\n000002.jpg 0\n000003.jpg 2\n182640.jpg 2\n"
        )
        n_train, n_test = 2, 2
    elif kind == "zip":
        with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as zf:
            for i, n in enumerate(names):
                zf.writestr(f"img_align_celeba/{n}", _jpeg(i))
        n_train, n_test = 3, 1  # official index ranges
    else:
        rng = np.random.default_rng(0)
        np.savez(
            folder / "celeba64.npz",
            train=rng.integers(0, 256, (3, 64, 64, 3)).astype(np.uint8),
            test=rng.integers(0, 256, (1, 64, 64, 3)).astype(np.uint8),
        )
        n_train, n_test = 3, 1
    tr, te = load_dataset("celeba", "train"), load_dataset("celeba", "test")
    assert tr.images.shape == (n_train, 3, 64, 64) and te.images.shape == (n_test, 3, 64, 64)
    assert tr.labels is None and tr.num_levels == 256
    assert 0.3 < tr.images.mean() < 0.7  # random pixels survive crop and resize
    if kind != "npz":
        assert len(list((tmp_path / "cache" / "data" / "celeba").glob("*.npy"))) == 2
        assert torch.equal(load_dataset("celeba", "train").images, tr.images)  # from the cache


# ---------------------------------------------------------------- downloads


def _mirror_with_fake_mnist(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    arrays = _write_mnist(mirror / "mnist", n_train=7, n_test=3)
    table = {
        f.name: dl.FileChecksum(sha256=hashlib.sha256(f.read_bytes()).hexdigest())
        for f in (mirror / "mnist").iterdir()
    }
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", table)
    monkeypatch.setenv("LPC_FAST_MIRROR", mirror.as_uri())
    return mirror, arrays


def test_download_from_file_mirror(tmp_path, monkeypatch):
    _, arrays = _mirror_with_fake_mnist(tmp_path, monkeypatch)
    root = tmp_path / "fresh"
    with pytest.raises(DatasetError, match="download=True"):
        load_dataset("mnist", root=str(root))
    ds = load_dataset("mnist", "train", root=str(root), download=True)
    assert ds.images.shape == (7, 1, 28, 28)
    assert torch.equal(ds.labels, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(dl.CHECKSUMS["mnist"])
    assert len(load_dataset("mnist", "test", root=str(root), download=True)) == 3


def test_download_checksum_mismatch_is_rejected(tmp_path, monkeypatch):
    mirror, _ = _mirror_with_fake_mnist(tmp_path, monkeypatch)
    bad = mirror / "mnist" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-3] + b"xyz")
    root = tmp_path / "fresh"
    with pytest.raises(DatasetError) as exc:
        load_dataset("mnist", root=str(root), download=True)
    msg = str(exc.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "sha256 mismatch" in msg
    assert dl.CHECKSUMS["mnist"]["train-labels-idx1-ubyte.gz"].sha256 in msg
    assert not (root / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((root / "mnist").glob("*.part"))


def test_download_without_mirror_or_checksum(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="could not download"):
        monkeypatch.setenv("LPC_FAST_MIRROR", (tmp_path / "empty").as_uri())
        dl.download_file("mnist", "train-images-idx3-ubyte.gz", tmp_path / "d")
    with pytest.raises(DatasetError, match="no known checksum"):
        dl.download_file("mnist", "other.gz", tmp_path / "d")
    monkeypatch.delenv("LPC_FAST_MIRROR")
    with pytest.raises(DatasetError, match="LPC_FAST_MIRROR"):
        dl.download_file("celeba", "img_align_celeba.zip", tmp_path / "d")


def test_checksum_table_is_well_formed():
    for files in dl.CHECKSUMS.values():
        for c in files.values():
            assert (c.sha256 and len(c.sha256) == 64) or (c.md5 and len(c.md5) == 32)
