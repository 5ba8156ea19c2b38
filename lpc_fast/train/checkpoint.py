"""Atomic, checksummed checkpoints with one previous generation kept.

File layout (``checkpoint.pt``)::

    b"LPCFAST-CKPT\\n" + 64 hex digits of SHA-256(payload) + b"\\n" + payload

where ``payload`` is ``torch.save`` of a dict of tensors, numbers, strings and nested
dicts/lists (loaded back with ``weights_only=True``). A torn or bit-flipped file fails the checksum
and is reported as :class:`CheckpointError`.

Writing (:func:`save_checkpoint`): the bytes go to a temporary file in the same directory, which is
flushed and ``fsync``-ed; the current ``checkpoint.pt`` is renamed to ``checkpoint.prev.pt``; the
temporary file is renamed to ``checkpoint.pt``; the directory is ``fsync``-ed. Each rename is atomic,
so at every instant at least one complete checkpoint exists under one of the two names (a crash
between the renames leaves only ``checkpoint.prev.pt``, which :func:`load_latest` falls back to).
Temporary files left by a killed writer are removed by the next write.

Testing hook: with ``LPC_FAST_CHECKPOINT_TEST_PAUSE=SECONDS`` (or ``PHASE:SECONDS`` for one phase only)
in the environment, the writer prints
``checkpoint-pause: temp-written`` (after the temporary file is durable) and
``checkpoint-pause: between-renames`` (after ``checkpoint.pt`` became ``checkpoint.prev.pt``) to stderr
and sleeps that long after each, so a test can kill it inside either window.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "PREVIOUS_NAME",
    "CheckpointError",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
_MAGIC = b"LPCFAST-CKPT\n"
_DIGEST_LEN = 64
_TMP_PREFIX = ".checkpoint-"
_PAUSE_ENV = "LPC_FAST_CHECKPOINT_TEST_PAUSE"


def _test_pause(phase: str) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    only, _, seconds = spec.rpartition(":")
    if only and only != phase:
        return
    print(f"checkpoint-pause: {phase}", file=sys.stderr, flush=True)
    time.sleep(float(seconds))


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt (checksum mismatch) or unreadable."""


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the renames durable; some filesystems do not support it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """Serialise ``state`` with the header and checksum."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    return _MAGIC + digest + b"\n" + payload


def decode_checkpoint(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Verify and deserialise bytes written by :func:`encode_checkpoint`."""
    head = len(_MAGIC) + _DIGEST_LEN + 1
    if len(data) < head or not data.startswith(_MAGIC):
        raise CheckpointError(f"{source}: not an lpc_fast checkpoint (bad header or truncated)")
    expected = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_LEN].decode("ascii", errors="replace")
    payload = data[head:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{source}: checksum mismatch (file is corrupt or truncated): "
            f"expected sha256 {expected}, got {actual}"
        )
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a valid checksum over bytes torch cannot read: report, do not crash
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{source}: unreadable payload: {first_line}") from exc


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` atomically as ``directory/checkpoint.pt``, keeping the previous one.

    Returns
    -------
    Path
        The path of the new checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = encode_checkpoint(state)
    for stale in directory.glob(_TMP_PREFIX + "*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _test_pause("temp-written")
        current = directory / CHECKPOINT_NAME
        if current.exists():
            os.replace(current, directory / PREVIOUS_NAME)
            _test_pause("between-renames")
        os.replace(tmp_name, current)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
    return current


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load one checkpoint file, verifying its checksum.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    return decode_checkpoint(data, str(path))


def load_latest(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], Path] | None:
    """Load ``checkpoint.pt`` or, if it is missing or corrupt, ``checkpoint.prev.pt``.

    A corrupt newest checkpoint is reported with a :class:`UserWarning` naming the file and the
    reason. Returns ``None`` when the directory holds no checkpoint at all.

    Raises
    ------
    CheckpointError
        When checkpoints exist but none of them is valid.
    """
    directory = Path(directory)
    errors = []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = directory / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            warnings.warn(f"{exc}; trying the previous checkpoint", stacklevel=2)
            continue
        return state, path
    if errors:
        raise CheckpointError("no valid checkpoint in " + str(directory) + ": " + "; ".join(errors))
    return None
