"""The Triton likelihood kernel compiles ahead of time for sm_90 (no GPU needed), in every variant.

The interpreter never compiles a kernel, so code that only fails in Triton's compiler (a ``.to`` on
an integer argument that the launcher turned into the constant 1, a name the installed Triton does
not export) passes every CPU test. As in tests/test_triton_aot.py, the compile runs in a subprocess
without ``TRITON_INTERPRET``; each variant takes about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'lpc_fast[triton]')")

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import itertools, json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from lpc_fast.triton.likelihood import _likelihood_kernel as fn

    results = {}
    for dtype, kind, sigmoid, has_ls, row_len_one in itertools.product(
        ("fp32", "fp64"), (0, 1, 2), (True, False), (True, False), (True, False)
    ):
        if kind == 2 and (not sigmoid or has_ls):
            continue  # Bernoulli has neither a link choice nor a scale
        ptr = "*" + dtype
        sig = {"x_ptr": ptr, "o_ptr": ptr, "lp_ptr": ptr, "go_ptr": ptr, "gls_ptr": ptr, "ls_ptr": ptr,
               "ls_a": "fp32", "ls_b": "fp32", "ls_c": "fp32", "levels": "fp32", "row_len": "i32"}
        const = {"KIND": kind, "SIGMOID": sigmoid, "HAS_LS": has_ls, "BLOCK": 64, "NUM_BLOCKS": 3}
        if row_len_one:  # what the launcher makes of a row of one element
            sig["row_len"] = "constexpr"
            const.update(row_len=1, NUM_BLOCKS=1)
        sig.update({k: "constexpr" for k in const})
        sig = {k: sig[k] for k in fn.arg_names}
        name = f"{dtype} kind={kind} sigmoid={sigmoid} has_ls={has_ls} row_len_one={row_len_one}"
        try:
            src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
            ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
            results[name] = "ok" if ".target sm_90" in ptx else "no sm_90 PTX"
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {str(exc)[-800:]}"
    print("RESULTS" + json.dumps({"triton": triton.__version__, "results": results}))
    """
)


def test_likelihood_kernel_compiles_for_sm90_in_every_variant():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS")]
    assert lines, f"the compile process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1][len("RESULTS") :])
    failed = {name: why for name, why in report["results"].items() if why != "ok"}
    assert len(report["results"]) == 36
    assert not failed, f"Triton {report['triton']}: " + json.dumps(failed, indent=1)
