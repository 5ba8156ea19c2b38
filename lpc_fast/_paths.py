"""Path options of the command line: what each one names, checked before any work starts.

Every path option of ``lpc-fast`` carries a :class:`PathArg` (attached to its argparse action by
:func:`path_option` or :func:`mark_path`), which says whether it is read or written, whether it is a
file or a directory, and its file extension. :meth:`PathArg.resolve` turns the text into the path
that will be used, or raises :class:`PathArgError` with one line naming the option and what was
expected:

* an output file without its extension gets it appended (``--out s`` writes ``s.png``), with a note;
* an input file given without its extension is found with it (``--checkpoint run/checkpoint``);
* a directory where a file is expected, a file where a directory is expected, a missing input, a
  location that cannot be written (probed by creating and removing a temporary file, which is what
  counts even for root, unlike permission bits) are errors;
* missing parent directories of outputs are created by the writers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "NPZ_DATASET",
    "OUT_DIR",
    "PathArg",
    "PathArgError",
    "mark_path",
    "path_actions",
    "path_option",
    "resolve_path_args",
]

_ATTR = "lpc_fast_path"


class PathArgError(ValueError):
    """A path option names something unusable; the message is one line starting with the option."""


@dataclass(frozen=True)
class PathArg:
    """What a path option names.

    Attributes
    ----------
    kind : {"out-file", "out-dir", "in-file", "in-dir"}
        Written or read; a file or a directory.
    what : str
        How messages describe the expected thing ("a PNG image", "a checkpoint file"...).
    role : str
        A short name of the content ("png", "json", "checkpoint"...), the same for options that
        take the same kind of file.
    exts : tuple of str
        Accepted file extensions, the first one appended to an output without it; empty: any name.
    dir_entry : str or None
        Input files only: a directory stands for this file inside it (a run directory for its
        ``checkpoint.pt``).
    prefixes : tuple of str
        The path follows one of these prefixes of the option's value (``npz:PATH``); values without
        any of them are not paths and are left alone.
    """

    kind: Literal["out-file", "out-dir", "in-file", "in-dir"]
    what: str
    role: str
    exts: tuple[str, ...] = ()
    dir_entry: str | None = None
    prefixes: tuple[str, ...] = ()

    def resolve(self, value: str, flag: str, note: Callable[[str], None]) -> str:
        """The value to use for option ``flag`` given ``value``; ``note`` receives remarks.

        Raises
        ------
        PathArgError
            One line naming ``flag``, the path and what was expected.
        """
        prefix = ""
        if self.prefixes:
            prefix = next((p for p in self.prefixes if value.startswith(p)), "")
            if not prefix:
                return value
        text = value[len(prefix) :]
        if not text.strip():
            raise PathArgError(f"{flag}: empty path; expected {self.what}")
        path = Path(text).expanduser()
        resolver = {
            "out-file": self._out_file,
            "out-dir": self._out_dir,
            "in-file": self._in_file,
            "in-dir": self._in_dir,
        }[self.kind]
        resolved = resolver(path, text, flag, note)
        # Unchanged paths keep their spelling: it is recorded (config.json) and compared on --resume.
        return value if resolved == path else prefix + str(resolved)

    # -- the four kinds -----------------------------------------------------------------------------
    def _out_file(self, path: Path, text: str, flag: str, note: Callable[[str], None]) -> Path:
        ext = self.exts[0] if self.exts else ""
        if text.endswith(("/", os.sep)) or path.is_dir():
            raise PathArgError(
                f"{flag}: {path} is a directory; expected {self.what} (a file name such as "
                f"{path / ('name' + ext)})"
            )
        if self.exts and path.suffix.lower() not in self.exts:
            path = path.with_name(path.name + ext)
            note(f"{flag}: no {ext} extension given; writing {path}")
            if path.is_dir():
                raise PathArgError(f"{flag}: {path} is a directory; expected {self.what}")
        _check_creatable(path.parent, path, flag, self.what)
        return path

    def _out_dir(self, path: Path, text: str, flag: str, note: Callable[[str], None]) -> Path:
        if path.exists() and not path.is_dir():
            raise PathArgError(f"{flag}: {path} is a file; expected {self.what}")
        _check_creatable(path, path, flag, self.what)
        return path

    def _in_file(self, path: Path, text: str, flag: str, note: Callable[[str], None]) -> Path:
        if path.is_dir():
            inner = path / self.dir_entry if self.dir_entry else None
            if inner is not None and inner.is_file():
                note(f"{flag}: {path} is a directory; reading {inner}")
                return inner
            holds = f" holding no {self.dir_entry}" if self.dir_entry else ""
            raise PathArgError(f"{flag}: {path} is a directory{holds}; expected {self.what}")
        if not path.exists():
            for ext in self.exts:
                if path.suffix.lower() != ext and path.with_name(path.name + ext).is_file():
                    found = path.with_name(path.name + ext)
                    note(f"{flag}: no {ext} extension given; reading {found}")
                    return found
            raise PathArgError(f"{flag}: {path} does not exist{_why_missing(path)}; expected {self.what}")
        try:
            if path.is_file():  # opening a FIFO would wait for a writer
                with open(path, "rb"):
                    pass
        except OSError as exc:
            raise PathArgError(
                f"{flag}: cannot read {path} ({exc.strerror or exc}); expected {self.what}"
            ) from None
        return path

    def _in_dir(self, path: Path, text: str, flag: str, note: Callable[[str], None]) -> Path:
        if not path.exists():
            raise PathArgError(f"{flag}: {path} does not exist{_why_missing(path)}; expected {self.what}")
        if not path.is_dir():
            raise PathArgError(f"{flag}: {path} is not a directory; expected {self.what}")
        return path


def _why_missing(path: Path) -> str:
    """`` (no directory D)`` or `` (F is not a directory)`` when the parent is the reason, else ``""``."""
    missing = None
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing, parent = parent, parent.parent
    if not parent.is_dir():
        return f" ({parent} is not a directory)"
    return f" (no directory {missing})" if missing is not None else ""


def _check_creatable(directory: Path, target: Path, flag: str, what: str) -> None:
    """Check that ``directory`` exists and is writable, or can be created under a writable ancestor."""
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PathArgError(f"{flag}: cannot create {target}: {existing} is not a directory; expected {what}")
    try:  # permission bits do not tell (root ignores them; read-only mounts, /proc): try it
        fd, probe = tempfile.mkstemp(prefix=".lpc-fast-probe-", dir=existing)
    except OSError as exc:
        raise PathArgError(
            f"{flag}: cannot write {target}: creating a file in {existing} fails ({exc.strerror or exc}); "
            f"expected {what} in a writable location"
        ) from None
    os.close(fd)
    os.unlink(probe)


# -- argparse glue ------------------------------------------------------------------------------------


def mark_path(action: argparse.Action, spec: PathArg) -> argparse.Action:
    """Attach ``spec`` to an argparse action (found again by :func:`path_actions`)."""
    setattr(action, _ATTR, spec)
    return action


def path_option(parser: Any, *flags: str, path: PathArg, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` for a path option described by ``path``."""
    return mark_path(parser.add_argument(*flags, **kwargs), path)


def path_actions(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.Action, PathArg]]:
    """The path options of ``parser`` (not of its subcommands) with their :class:`PathArg`."""
    for action in parser._actions:
        spec = getattr(action, _ATTR, None)
        if spec is not None:
            yield action, spec


def resolve_path_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    note: Callable[[str], None],
    skip: Container[str] = (),
) -> None:
    """Resolve, in place, every path option of ``parser`` present in ``args`` (see :class:`PathArg`).

    Options whose ``dest`` is in ``skip`` are left to the caller.
    """
    for action, spec in path_actions(parser):
        if action.dest in skip:
            continue
        value = getattr(args, action.dest, None)
        if isinstance(value, str):
            setattr(args, action.dest, spec.resolve(value, action.option_strings[0], note))


#: An output directory (``--out`` of train, demo and reproduce).
OUT_DIR = PathArg("out-dir", "an output directory", "out-dir")
#: The ``npz:PATH`` form of a dataset name.
NPZ_DATASET = PathArg(
    "in-file", "an .npz or .npy file of images", "npz", exts=(".npz", ".npy"), prefixes=("npz:",)
)
