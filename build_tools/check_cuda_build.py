"""Check an installed CUDA build of ``lpc_fast`` (no GPU needed).

Fails (exit 1, one line per problem) unless

* torch is a CUDA build and ``lpc_fast._C`` imports and reports ``with_cuda()``;
* every public ``lpc_fast::`` op (the C++ schemas; the Python-defined ``triton_*`` and
  ``reference_*`` ops are not part of ``lpc_fast._C``) has a kernel for both the ``CPU`` and the
  ``CUDA`` dispatch keys;
* ``lpc_fast.backends()`` reports the ``cuda`` backend as built with CUDA kernels: available when
  a device is visible, otherwise unavailable with a reason that says it was built with CUDA but
  no device is visible (not "built without CUDA");
* with ``--expect-under DIR``, ``lpc_fast`` was imported from under ``DIR`` (an installed wheel,
  not a source checkout on ``sys.path``).

Usage: ``python build_tools/check_cuda_build.py [--expect-under DIR]``
"""

from __future__ import annotations

import argparse
import os
import sys

#: Prefixes of the ops defined in Python (Triton launchers and the float64 reference).
PYTHON_OP_PREFIXES = ("triton_", "reference_")
NAMESPACE = "lpc_fast::"


def public_ops() -> list[str]:
    """Qualified names of the ``lpc_fast::`` ops defined by the C++ extension."""
    import torch

    names = (n for n in torch._C._dispatch_get_all_op_names() if n.startswith(NAMESPACE))
    return sorted(n for n in names if not n[len(NAMESPACE) :].startswith(PYTHON_OP_PREFIXES))


def check(expect_under: str | None = None) -> list[str]:
    """Run every check; returns the problems found (empty when the build is good)."""
    import torch

    problems: list[str] = []
    if torch.version.cuda is None:
        return [f"torch {torch.__version__} is a CPU build: this checks a CUDA build"]
    import lpc_fast
    from lpc_fast import _C as C

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), lpc_fast from {lpc_fast.__file__}")
    print(f"lpc_fast._C: {C.__file__}")
    if expect_under is not None:
        root = os.path.realpath(expect_under)
        for mod in (lpc_fast, C):
            if not os.path.realpath(mod.__file__).startswith(root + os.sep):
                problems.append(f"{mod.__name__} imported from {mod.__file__}, not from under {root}")
    if not C.with_cuda():
        problems.append("lpc_fast._C.with_cuda() is False: the extension was built without CUDA kernels")

    ops = public_ops()
    if not ops:
        problems.append("no lpc_fast:: op is registered")
    for op in ops:
        keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(op, k)]
        print(f"  {op:40s} kernels: {', '.join(keys) or 'none'}")
        for key in ("CPU", "CUDA"):
            if key not in keys:
                problems.append(f"{op} has no kernel for the {key} dispatch key")

    rows = {row.name: row for row in lpc_fast.backends()}
    cuda = rows.get("cuda")
    if cuda is None:
        problems.append("lpc_fast.backends() has no 'cuda' row")
    else:
        print(f"backends(): cuda available={cuda.available}: {cuda.reason}")
        if torch.cuda.is_available():
            if not cuda.available:
                problems.append(
                    f"a CUDA device is visible but the cuda backend is not available: {cuda.reason}"
                )
        elif cuda.available:
            problems.append("no CUDA device is visible but the cuda backend reports itself available")
        elif "built with CUDA" not in cuda.reason or "no CUDA device" not in cuda.reason:
            problems.append(
                "the cuda backend's reason should say it was built with CUDA but no device is visible; "
                f"got: {cuda.reason!r}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect-under", help="lpc_fast must be imported from under this directory")
    args = parser.parse_args(argv)
    problems = check(args.expect_under)
    for problem in problems:
        print(f"check-cuda-build: {problem}", file=sys.stderr)
    if not problems:
        print("check-cuda-build: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
