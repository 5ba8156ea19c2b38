"""Atomic, checksummed checkpoints that ``torch.load`` reads, with one previous generation kept.

File layout (``checkpoint.pt``): an ordinary ``torch.save`` file of one dict of tensors, numbers,
strings and nested dicts/lists/tuples, so ``torch.load(path, weights_only=True)`` reads it::

    {"format": "lpc_fast.checkpoint", "format_version": 2,
     ...the state (for training runs: "trainer", "config", "data", "versions", "decoder")...,
     "sha256": SHA-256 of the canonical encoding of every other entry}

PyTorch's archive reader does not verify the CRCs of its records, so a flipped bit in a tensor or
the pickle would load silently; the checksum makes it an error. It is computed over a canonical
encoding of the values (:func:`state_digest`: type tags, lengths, strings, exact float bits, tensor
dtypes, shapes and bytes), not over the file's bytes, so it can live inside the file it checks. A
torn or bit-flipped file fails either ``torch.load`` or the checksum and is reported as
:class:`CheckpointError`.

Files of the previous format (``b"LPCFAST-CKPT\\n"`` + SHA-256 of the payload + ``b"\\n"`` + a
``torch.save`` payload) still load, with a one-line :class:`LegacyCheckpointWarning`; the next save
of a resumed run writes the current format, and :func:`convert_checkpoint` rewrites one in place.

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
    "FORMAT",
    "FORMAT_VERSION",
    "PREVIOUS_NAME",
    "CheckpointError",
    "LegacyCheckpointWarning",
    "convert_checkpoint",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
    "state_digest",
]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
#: Value of the ``"format"`` entry of every checkpoint file.
FORMAT = "lpc_fast.checkpoint"
#: Value of the ``"format_version"`` entry (1 was the header + payload format).
FORMAT_VERSION = 2
_DIGEST_KEY = "sha256"
_RESERVED = ("format", "format_version", _DIGEST_KEY)
_LEGACY_MAGIC = b"LPCFAST-CKPT\n"
_LEGACY_DIGEST_LEN = 64
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


class LegacyCheckpointWarning(UserWarning):
    """A checkpoint of the previous (header + payload) format was loaded."""


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


# -- the checksum -----------------------------------------------------------------------------------


def _feed(h: Any, obj: Any, where: str) -> None:
    """Add the canonical encoding of ``obj`` to hash ``h``: a type tag, then lengths and contents.

    Tags keep values of different types apart (``1``, ``1.0``, ``True``, ``"1"`` and ``tensor(1)``
    encode differently); lengths make the encoding of a container unambiguous.
    """
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        h.update(b"I%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"F" + obj.hex().encode("ascii") + b";")  # exact bits, nan and inf included
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(obj, bytes):
        h.update(b"Y%d:" % len(obj) + obj)
    elif isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise TypeError(f"checkpoint state at {where}: a {obj.layout} tensor; expected dense tensors")
        t = obj.detach().resolve_conj().resolve_neg().cpu().contiguous()
        h.update(f"X{t.dtype}{tuple(t.shape)}:".encode("ascii"))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d:" % len(obj))
        for key, value in obj.items():
            _feed(h, key, where)
            _feed(h, value, f"{where}[{key!r}]")
        meta = getattr(obj, "_metadata", None)  # a module state_dict's version records
        if meta is not None:
            h.update(b"M")
            _feed(h, dict(meta), f"{where}._metadata")
    elif isinstance(obj, tuple):  # torch.Size included: it is saved and loaded as itself
        h.update(b"T%d:" % len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(obj, list):
        h.update(b"L%d:" % len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(obj, (torch.dtype, torch.device)):
        h.update(b"t" + str(obj).encode("ascii") + b";")
    else:
        raise TypeError(
            f"checkpoint state at {where}: {type(obj).__name__} is not a tensor, number, string, None "
            "or a dict/list/tuple of those"
        )


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of ``state`` without its ``"sha256"`` entry.

    The same values give the same digest whatever the pickling, device or memory layout.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != _DIGEST_KEY}, "state")
    return h.hexdigest()


# -- bytes <-> state ------------------------------------------------------------------------------------


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """Serialise ``state`` as a checksummed ``torch.save`` file (see the module docstring)."""
    clash = [k for k in _RESERVED if k in state]
    if clash:
        raise ValueError(f"checkpoint state may not hold the reserved key(s) {', '.join(map(repr, clash))}")
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    payload[_DIGEST_KEY] = state_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception's message (torch's archive errors run on)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].split('. ')[0]}" if text else type(exc).__name__


def _decode_legacy(data: bytes, source: str) -> dict[str, Any]:
    """Read the previous format: ``LPCFAST-CKPT\\n`` + hex SHA-256 of the payload + ``\\n`` + payload."""
    head = len(_LEGACY_MAGIC) + _LEGACY_DIGEST_LEN + 1
    if len(data) < head:
        raise CheckpointError(f"{source}: truncated checkpoint (shorter than its header)")
    expected = data[len(_LEGACY_MAGIC) : head - 1].decode("ascii", errors="replace")
    payload = data[head:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{source}: checksum mismatch (file is corrupt or truncated): "
            f"expected sha256 {expected}, got {actual}"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a valid checksum over bytes torch cannot read: report, do not crash
        raise CheckpointError(f"{source}: unreadable payload: {_first_line(exc)}") from exc
    warnings.warn(
        f"{source}: checkpoint of the previous lpc_fast format (loaded; "
        "lpc_fast.train.checkpoint.convert_checkpoint(path) rewrites it so that torch.load reads it)",
        LegacyCheckpointWarning,
        stacklevel=3,
    )
    return state


def decode_checkpoint(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Verify and deserialise bytes written by :func:`encode_checkpoint` (or the previous format).

    Returns the state without the ``format``, ``format_version`` and ``sha256`` entries.

    Raises
    ------
    CheckpointError
        If the bytes are empty, truncated, corrupt (checksum mismatch) or not an lpc_fast checkpoint.
    """
    if data.startswith(_LEGACY_MAGIC):
        return _decode_legacy(data, source)
    if not data:
        raise CheckpointError(f"{source}: empty file (truncated checkpoint)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or damaged archive: report, do not crash
        raise CheckpointError(
            f"{source}: corrupt or truncated checkpoint (torch.load failed: {_first_line(exc)})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{source}: a torch file, but not an lpc_fast checkpoint (no 'format': {FORMAT!r})"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version!r}; this lpc_fast reads version {FORMAT_VERSION}"
        )
    expected = payload.get(_DIGEST_KEY)
    try:
        actual = state_digest(payload)
    except TypeError as exc:  # a value no checkpoint holds: the pickle was altered
        raise CheckpointError(f"{source}: corrupt checkpoint: {exc}") from None
    if actual != expected:
        raise CheckpointError(
            f"{source}: checksum mismatch (file is corrupt or truncated): "
            f"expected sha256 {expected}, got {actual}"
        )
    return {k: v for k, v in payload.items() if k not in _RESERVED}


# -- files ----------------------------------------------------------------------------------------------


def _write_atomic(data: bytes, directory: Path, name: str, keep_previous: bool) -> Path:
    for stale in directory.glob(_TMP_PREFIX + "*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
    current = directory / name
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _test_pause("temp-written")
        if keep_previous and current.exists():
            os.replace(current, directory / PREVIOUS_NAME)
            _test_pause("between-renames")
        os.replace(tmp_name, current)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
    return current


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` atomically as ``directory/checkpoint.pt``, keeping the previous one.

    Parameters
    ----------
    state : dict
        Tensors, numbers, strings, None and dicts/lists/tuples of those (what
        ``torch.load(..., weights_only=True)`` reads back); not the keys ``format``,
        ``format_version`` or ``sha256``.
    directory : path
        Created if missing.

    Returns
    -------
    Path
        The path of the new checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return _write_atomic(encode_checkpoint(state), directory, CHECKPOINT_NAME, keep_previous=True)


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


def convert_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Rewrite a checkpoint of the previous format in place (atomically) in the current format.

    A checkpoint already in the current format is verified and left as it is.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyCheckpointWarning)
        state = load_checkpoint(path)
    if not path.read_bytes().startswith(_LEGACY_MAGIC):
        return path
    return _write_atomic(encode_checkpoint(state), path.parent, path.name, keep_previous=False)


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
