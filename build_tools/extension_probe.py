"""Check a freshly built ``lpc_fast._C`` for a second copy of libstdc++ in the process.

An extension linked against another copy of libstdc++ than the one torch runs with (a compiler
from another prefix that links parts of its C++ runtime statically, or ``-static-libstdc++`` in
the link flags) formats numbers through the wrong locale facets: ``c10::str(42)`` in that library
gives an empty string or kills the process with SIGSEGV, so every error message with a number in
it crashes instead of raising. The ops' own checks avoid iostreams
(``csrc/include/check_message.h``), but ATen's inline checks compiled into the extension do not,
so setup.py refuses such a build (:func:`check_built_extension`) unless
``LPC_FAST_ALLOW_LIBSTDCXX_MISMATCH=1``.

The check imports the built file in a clean interpreter and compares
``_C._stream_format_probe(-1234567, 0.25)`` (``c10::str`` in the extension) with the expected text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

#: Imports the extension at argv[1] in a clean interpreter, formats numbers through its c10::str
#: and prints the result, then the libstdc++ files mapped into the process.
PROBE = r"""
import importlib.machinery, importlib.util, sys
import torch  # the extension links against torch's libraries
path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("lpc_fast._C", path)
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("lpc_fast._C", loader))
loader.exec_module(module)
print(module._stream_format_probe(-1234567, 0.25), flush=True)
with open("/proc/self/maps") as maps:
    libs = sorted({line.split()[-1] for line in maps if "libstdc++" in line})
print("libstdc++ files mapped: " + (", ".join(libs) or "none"))
"""
EXPECTED = "-1234567 0.25"
ALLOW_ENV = "LPC_FAST_ALLOW_LIBSTDCXX_MISMATCH"


class BrokenBuild(RuntimeError):
    """The built extension formats numbers wrongly: it would crash on its first error message."""


def check_built_extension(
    path: str, python: str = sys.executable, probe_command: Sequence[str] | None = None
) -> str:
    """Probe the extension at ``path``; return what was found, raise :class:`BrokenBuild` if broken.

    Parameters
    ----------
    path
        The built extension module (``.so``).
    python
        The interpreter to probe with (the one torch is installed in).
    probe_command
        The probe process's command line (tests); default ``python -c PROBE path``.

    Returns
    -------
    str
        ``"ok"``, or a warning (the extension could not be imported here, e.g. a build for another
        machine; or the mismatch, when ``LPC_FAST_ALLOW_LIBSTDCXX_MISMATCH=1`` accepts it).
    """
    cmd = list(probe_command) if probe_command is not None else [python, "-c", PROBE, path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    if lines and lines[0] == EXPECTED:
        return "ok"
    if proc.returncode > 0 and not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"WARNING: could not import the built extension to check it ({last})"
    if proc.returncode < 0:
        seen = f"the probe process died with signal {-proc.returncode}"
    else:
        seen = f"c10::str(-1234567, ' ', 0.25) gave {lines[0] if lines else ''!r}"
    compiler = os.environ.get("CXX") or "the default C++ compiler"
    mapped = f" {lines[1]}." if len(lines) > 1 else ""
    msg = (
        f"the built extension {path} formats numbers wrongly ({seen}; expected {EXPECTED!r}): it "
        f"runs against a second copy of libstdc++, linked in by the compiler ({compiler}) or the "
        f"link flags (LDFLAGS={os.environ.get('LDFLAGS', '')!r}), beside the one torch uses.{mapped} "
        "Error messages with numbers in them would crash the process. Build with the compiler "
        "that matches the system's libstdc++ (e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++) and without "
        f"-static-libstdc++, or set {ALLOW_ENV}=1 to keep this build anyway."
    )
    if os.environ.get(ALLOW_ENV) == "1":
        return f"WARNING: {msg}"
    raise BrokenBuild(msg)
