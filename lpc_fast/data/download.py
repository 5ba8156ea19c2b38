"""Fetching standard dataset files from mirrors, with checksum verification.

Each file is tried at ``$LPC_FAST_MIRROR/<dataset>/<file>`` first (when the environment variable is
set; several bases may be given separated by commas), then at each known mirror in order. A file is
streamed to ``<file>.part``, hashed as it arrives and renamed into place only when its SHA-256
matches :data:`CHECKSUMS`. Where no SHA-256 of the official file could be confirmed, the MD5 that the
distributors publish (also used by torchvision) is checked instead; the table says which.
Only ``urllib`` is used, so ``file://`` URLs work too (useful for local mirrors and tests).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .base import DatasetError

__all__ = ["CHECKSUMS", "MIRRORS", "FileChecksum", "download_file", "file_digest", "verify_file"]


@dataclass(frozen=True)
class FileChecksum:
    """Known digest of one distributed file: SHA-256 where known, else MD5."""

    sha256: str | None = None
    md5: str | None = None


# Official archives' digests. SHA-256 values were cross-checked against several independent
# published sources; SVHN and CelebA are only published with MD5 digests.
CHECKSUMS: dict[str, dict[str, FileChecksum]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": FileChecksum(
            sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": FileChecksum(
            sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": FileChecksum(
            sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": FileChecksum(
            sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": FileChecksum(
            sha256="08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"
        ),
        "train-labels-idx1-ubyte.gz": FileChecksum(
            sha256="b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"
        ),
        "t10k-images-idx3-ubyte.gz": FileChecksum(
            sha256="78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"
        ),
        "t10k-labels-idx1-ubyte.gz": FileChecksum(
            sha256="42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"
        ),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": FileChecksum(
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
        ),
    },
    "svhn": {
        "train_32x32.mat": FileChecksum(md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test_32x32.mat": FileChecksum(md5="eb5a983be6a315427106f1b164d9cef3"),
    },
    "celeba": {
        "img_align_celeba.zip": FileChecksum(md5="00d2c5bc6d35e252742224ab0c1e8fcb"),
    },
}

# Base URLs; the file name is appended. CelebA is distributed through Google Drive, which plain
# urllib cannot fetch: it downloads only from LPC_FAST_MIRROR.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "svhn": ["http://ufldl.stanford.edu/housenumbers/"],
    "celeba": [],
}

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected(checksum: FileChecksum) -> tuple[str, str]:
    if checksum.sha256:
        return "sha256", checksum.sha256.lower()
    if checksum.md5:
        return "md5", checksum.md5.lower()
    raise DatasetError("no checksum known for this file: refusing to trust a download")


def verify_file(path: str | os.PathLike[str], checksum: FileChecksum) -> None:
    """Raise :class:`DatasetError` unless the file's digest matches ``checksum``."""
    algorithm, want = _expected(checksum)
    got = file_digest(path, algorithm)
    if got != want:
        raise DatasetError(
            f"{path}: {algorithm} mismatch (got {got}, expected {want}); the file is corrupt or "
            "truncated: delete it and download it again"
        )


def _candidate_urls(dataset: str, filename: str) -> list[str]:
    urls = []
    mirror_env = os.environ.get("LPC_FAST_MIRROR", "")
    for base in (b.strip() for b in mirror_env.split(",")):
        if base:
            urls.append(f"{base.rstrip('/')}/{dataset}/{filename}")
    urls.extend(base + filename for base in MIRRORS.get(dataset, []))
    return urls


def download_file(
    dataset: str, filename: str, dest_dir: str | os.PathLike[str], *, timeout: float = 60.0
) -> Path:
    """Download one known file of ``dataset`` into ``dest_dir`` and verify its checksum.

    Parameters
    ----------
    dataset
        Key of :data:`CHECKSUMS` (``"mnist"``, ``"cifar10"``, ...).
    filename
        File name as distributed (``"train-images-idx3-ubyte.gz"``).
    dest_dir
        Directory to write into (created).
    timeout
        Socket timeout per URL in seconds.

    Returns
    -------
    Path
        The verified file. An existing file that verifies is not downloaded again.

    Raises
    ------
    DatasetError
        No checksum is known, or every URL failed (each URL's failure is listed).
    """
    try:
        checksum = CHECKSUMS[dataset][filename]
    except KeyError:
        raise DatasetError(
            f"{dataset}: no known checksum for {filename}; cannot download it safely"
        ) from None
    algorithm, want = _expected(checksum)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / filename
    if target.exists() and file_digest(target, algorithm) == want:
        return target
    urls = _candidate_urls(dataset, filename)
    if not urls:
        raise DatasetError(
            f"{dataset}: no download mirror for {filename}; set LPC_FAST_MIRROR to a base URL serving "
            f"<base>/{dataset}/{filename}, or place the file at {target}"
        )
    failures = []
    part = dest / (filename + ".part")
    for url in urls:
        try:
            h = hashlib.new(algorithm)
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                while chunk := response.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            got = h.hexdigest()
            if got != want:
                failures.append(f"{url}: {algorithm} mismatch (got {got}, expected {want})")
                continue
            os.replace(part, target)
            return target
        except OSError as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            if part.exists():
                part.unlink()
    raise DatasetError(f"{dataset}: could not download {filename} into {dest}:\n  " + "\n  ".join(failures))
