"""Find the CUDA toolkit that builds ``lpc_fast._C``, before torch guesses one.

torch's ``cpp_extension`` takes ``CUDA_HOME`` (or ``CUDA_PATH``) from the environment, or else
the directory two levels above the first ``nvcc`` on ``PATH``. When that ``nvcc`` is a wrapper
script (``/usr/local/bin/nvcc`` running ``exec /opt/cuda-13.0/bin/nvcc "$@"``) or a link in a
symlink farm, that guess is not a toolkit: it has no ``include/crt/host_config.h``, and the build
stops at ``cuda_runtime.h`` with "crt/host_config.h: No such file or directory".

:func:`find_toolkit` looks, in this order, and takes the first directory that is a toolkit
(``bin/nvcc`` and ``include/crt/host_config.h``):

1. ``CUDA_HOME``, else ``CUDA_PATH``: when either is set it is the only candidate, so a wrong
   value is reported instead of being passed over;
2. the ``nvcc`` on ``PATH``: the directory above its ``bin/``, the same after resolving symbolic
   links, and the ``TOP`` that ``nvcc --dryrun`` reports (nvcc prints its own installation
   directory, which follows any wrapper);
3. ``/usr/local/cuda``.

If none is a toolkit, :class:`ToolkitNotFound` says what was tried, in one line.

setup.py imports this file by path; it uses only the standard library so that it can be unit
tested with fake toolkit trees (``tests/test_cuda_toolkit.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: Files whose presence makes a directory a CUDA toolkit root (relative paths).
MARKERS = (os.path.join("bin", "nvcc"), os.path.join("include", "crt", "host_config.h"))
#: Where the toolkit lives when nothing points elsewhere.
DEFAULT_ROOT = "/usr/local/cuda"
#: Seconds allowed for one ``nvcc --dryrun`` or ``nvcc --version``.
NVCC_TIMEOUT_S = 30.0

_RELEASE_RE = re.compile(r"release (\d+)\.(\d+)")
_TOP_RE = re.compile(r"^#\$ TOP=(.*)$", re.MULTILINE)


class ToolkitNotFound(RuntimeError):
    """No candidate directory is a CUDA toolkit.

    Attributes
    ----------
    tried : list of str
        One entry per candidate: where it came from, the path, and why it was rejected.
    """

    def __init__(self, tried: list[str]) -> None:
        self.tried = list(tried)
        super().__init__(
            "no CUDA toolkit found (a directory with bin/nvcc and include/crt/host_config.h); tried: "
            + "; ".join(self.tried)
            + "; set CUDA_HOME to the toolkit root"
        )


class ToolkitVersionMismatch(RuntimeError):
    """The toolkit's major CUDA version differs from the one torch was built with."""


@dataclass(frozen=True)
class Toolkit:
    """A CUDA toolkit installation.

    Attributes
    ----------
    root : str
        Toolkit root: holds ``bin/nvcc`` and ``include/crt/host_config.h``.
    found_by : str
        How it was found (``"CUDA_HOME"``, ``"nvcc on PATH (--dryrun TOP)"``, ...).
    """

    root: str
    found_by: str

    @property
    def nvcc(self) -> str:
        """Path of the toolkit's own ``nvcc``."""
        return os.path.join(self.root, "bin", "nvcc")

    @property
    def include(self) -> str:
        """The toolkit's include directory."""
        return os.path.join(self.root, "include")


def missing_markers(root: str) -> list[str]:
    """Marker files that ``root`` lacks (empty when ``root`` is a toolkit).

    Parameters
    ----------
    root : str
        Candidate toolkit root.

    Returns
    -------
    list of str
        The relative paths of :data:`MARKERS` that are not files under ``root``; ``bin/nvcc``
        must also be executable.
    """
    missing = []
    for rel in MARKERS:
        path = os.path.join(root, rel)
        ok = os.path.isfile(path)
        if ok and rel == MARKERS[0]:
            ok = os.access(path, os.X_OK)
        if not ok:
            missing.append(rel)
    return missing


def dryrun_top(nvcc: str, timeout: float = NVCC_TIMEOUT_S) -> str | None:
    """The installation directory that ``nvcc --dryrun`` reports (its ``#$ TOP=`` line).

    ``--dryrun`` lists the commands nvcc would run, without running them; nvcc needs an input
    file to get that far, and ``/dev/null`` compiled as CUDA is enough.

    Parameters
    ----------
    nvcc : str
        The ``nvcc`` to ask (a wrapper script is fine: it passes the arguments on).
    timeout : float
        Seconds to wait for it.

    Returns
    -------
    str or None
        The normalised ``TOP`` directory, or None when nvcc fails or prints none.
    """
    cmd = [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _TOP_RE.search(proc.stdout + "\n" + proc.stderr)
    if match is None:
        return None
    top = match.group(1).strip().strip('"')
    return os.path.normpath(top) if top else None


def _describe(root: str) -> str:
    if not os.path.isdir(root):
        return "does not exist"
    return "no " + " and no ".join(missing_markers(root))


def find_toolkit(
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    default_root: str = DEFAULT_ROOT,
) -> Toolkit:
    """Find the CUDA toolkit (see the module docstring for the order).

    Parameters
    ----------
    environ : mapping, optional
        Environment to read ``CUDA_HOME``/``CUDA_PATH`` from; ``os.environ`` by default.
    which : callable, optional
        Finds a program on ``PATH`` (``shutil.which``).
    default_root : str, optional
        The last candidate, ``/usr/local/cuda``.

    Returns
    -------
    Toolkit
        The first candidate that is a toolkit.

    Raises
    ------
    ToolkitNotFound
        When no candidate is; its message lists every candidate and why it was rejected.
    """
    env = os.environ if environ is None else environ
    tried: list[str] = []

    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = env.get(var)
        if value:
            root = os.path.normpath(value)
            if not missing_markers(root):
                return Toolkit(root, var)
            # An explicit setting is never passed over for a guess.
            raise ToolkitNotFound([f"{var}={value} ({_describe(root)})"])
    tried.append("CUDA_HOME and CUDA_PATH unset")

    nvcc = which("nvcc")
    if nvcc is None:
        tried.append("no nvcc on PATH")
    else:
        seen: set[str] = set()
        prefix = os.path.dirname(os.path.dirname(os.path.abspath(nvcc)))
        resolved = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        candidates = [(f"nvcc on PATH {nvcc}", prefix), (f"{nvcc} resolved to its target", resolved)]
        for label, root in candidates:
            if root in seen:
                continue
            seen.add(root)
            if not missing_markers(root):
                return Toolkit(root, label)
            tried.append(f"{label}: {root} ({_describe(root)})")
        top = dryrun_top(nvcc)
        if top is None:
            tried.append(f"{nvcc} --dryrun: printed no TOP")
        elif top not in seen:
            seen.add(top)
            if not missing_markers(top):
                return Toolkit(top, f"{nvcc} --dryrun TOP")
            tried.append(f"{nvcc} --dryrun TOP: {top} ({_describe(top)})")

    root = os.path.normpath(default_root)
    if not missing_markers(root):
        return Toolkit(root, "default location")
    tried.append(f"{root} ({_describe(root)})")
    raise ToolkitNotFound(tried)


def toolkit_version(toolkit: Toolkit, timeout: float = NVCC_TIMEOUT_S) -> tuple[int, int]:
    """The CUDA release of ``toolkit`` from ``nvcc --version`` (``release 13.0`` -> ``(13, 0)``).

    Raises
    ------
    RuntimeError
        When nvcc cannot be run or prints no release.
    """
    try:
        proc = subprocess.run([toolkit.nvcc, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{toolkit.nvcc} --version failed: {exc}") from exc
    match = _RELEASE_RE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{toolkit.nvcc} --version printed no CUDA release (exit {proc.returncode})")
    return int(match.group(1)), int(match.group(2))


def check_version(toolkit: Toolkit, torch_cuda: str, timeout: float = NVCC_TIMEOUT_S) -> tuple[int, int]:
    """Check that ``toolkit`` has the CUDA major version torch was built with.

    Parameters
    ----------
    toolkit : Toolkit
        The toolkit found by :func:`find_toolkit`.
    torch_cuda : str
        ``torch.version.cuda`` (e.g. ``"13.0"``).
    timeout : float
        Seconds allowed for ``nvcc --version``.

    Returns
    -------
    tuple of int
        The toolkit's (major, minor) release.

    Raises
    ------
    ToolkitVersionMismatch
        When the major versions differ (CUDA keeps binary compatibility within a major version
        only, and torch refuses such a build).
    """
    version = toolkit_version(toolkit, timeout)
    torch_major = int(torch_cuda.split(".")[0])
    if version[0] != torch_major:
        raise ToolkitVersionMismatch(
            f"the CUDA toolkit at {toolkit.root} (found by {toolkit.found_by}) is CUDA "
            f"{version[0]}.{version[1]} but torch was built with CUDA {torch_cuda}; install a CUDA "
            f"{torch_major}.x toolkit and set CUDA_HOME to it, or install a torch built for CUDA {version[0]}"
        )
    return version


def main() -> int:
    """Print the toolkit a build would use (``python build_tools/cuda_toolkit.py``)."""
    try:
        toolkit = find_toolkit()
        major, minor = toolkit_version(toolkit)
    except RuntimeError as exc:
        print(f"cuda_toolkit: {exc}", file=sys.stderr)
        return 1
    print(f"CUDA {major}.{minor} toolkit at {toolkit.root} (found by {toolkit.found_by})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
