"""Ahead-of-time compilation of every Triton kernel variant for sm_90, without a GPU.

The interpreter runs the kernels as NumPy code and never lowers them, so errors
that only the GPU compiler sees (types, layouts, unsupported ops in a dtype)
would otherwise surface first on a GPU machine. ``triton.compile`` needs no
device: it lowers to PTX and assembles a cubin with the bundled ``ptxas``. It
runs in a subprocess whose environment lacks ``TRITON_INTERPRET``, because
Triton reads that variable once, when it is first imported.

``triton.compiler.ASTSource(fn, signature, constexprs=...)`` of Triton 3.9 takes
a signature naming every argument (constexprs marked ``"constexpr"``) and the
constexpr values by name. Older 3.x releases took ``constants=`` keyed by
argument index; if the GPU machine's 3.6 rejects ``constexprs=``, this test
reports the TypeError for every variant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'lpc_fast[triton]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FLOAT_PARAMS = ("eta", "beta", "omb", "eps", "ns")
_PTR = {"f16": "*fp16", "bf16": "*bf16", "f32": "*fp32", "f64": "*fp64"}


def _variants() -> dict[str, dict]:
    """name -> {"kernel", "signature" (non-constexpr arguments), "constexprs"}."""
    floats = {f"{p}_{part}": "fp32" for p in _FLOAT_PARAMS for part in ("hi", "lo")}
    ints = {"n": "i64", "seed": "i64", "offset": "i64", "step": "i64"}
    out: dict[str, dict] = {}

    def fwd(dt, use_state=False, precondition=True, store_v=True):
        sig = {
            "z_ptr": _PTR[dt],
            "g_ptr": _PTR[dt],
            "v_ptr": "*fp32",
            "z_out_ptr": _PTR[dt],
            "v_out_ptr": "*fp32",
            "state_ptr": "*i64",
            **ints,
            **floats,
        }
        const = {
            "BLOCK": 1024,
            "F64": dt == "f64",
            "BIAS_CORRECTION": precondition,
            "PRECONDITION": precondition,
            "PRIOR_GRAD": True,
            "USE_STATE": use_state,
            "STORE_V": store_v,
        }
        name = f"fwd-{dt}" + ("-state" if use_state else "") + ("" if precondition else "-ula")
        out[name] = {"kernel": "langevin_fwd_kernel", "signature": sig, "constexprs": const}

    def bwd(dt, has_gv=True, precondition=True):
        sig = {
            "gz_ptr": _PTR[dt],
            "gv_ptr": "*fp32" if has_gv else _PTR[dt],
            "z_ptr": _PTR[dt],
            "g_ptr": _PTR[dt],
            "v_ptr": "*fp32",
            "grad_z_ptr": _PTR[dt],
            "grad_g_ptr": _PTR[dt],
            **ints,
            **floats,
        }
        const = {
            "BLOCK": 1024,
            "F64": dt == "f64",
            "BIAS_CORRECTION": precondition,
            "PRECONDITION": precondition,
            "PRIOR_GRAD": True,
            "HAS_GV": has_gv,
        }
        name = f"bwd-{dt}" + ("" if has_gv else "-nogv") + ("" if precondition else "-ula")
        out[name] = {"kernel": "langevin_bwd_kernel", "signature": sig, "constexprs": const}

    for dt in ("f16", "bf16", "f32", "f64"):
        fwd(dt)
        bwd(dt)
    fwd("f32", use_state=True)
    fwd("f64", use_state=True)
    fwd("f32", precondition=False, store_v=False)
    bwd("f32", has_gv=False, precondition=False)
    for dt in ("f32", "f64"):
        out[f"normal-{dt}"] = {
            "kernel": "philox_normal_kernel",
            "signature": {"out_ptr": _PTR[dt], "n": "i64", "seed": "i64", "offset": "i64"},
            "constexprs": {"BLOCK": 1024, "F64": dt == "f64"},
        }
    out["uint32"] = {
        "kernel": "philox_uint32_kernel",
        "signature": {"out_ptr": "*i64", "n": "i64", "seed": "i64", "offset": "i64"},
        "constexprs": {"BLOCK": 1024},
    }
    out["advance-state"] = {
        "kernel": "advance_state_kernel",
        "signature": {"state_ptr": "*i64", "increment": "i64"},
        "constexprs": {},
    }
    return out


VARIANTS = _variants()

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from lpc_fast.triton import kernels

    variants = json.loads(sys.argv[1])
    target = GPUTarget("cuda", 90, 32)
    results = {}
    for name, spec in variants.items():
        fn = getattr(kernels, spec["kernel"])
        signature = dict(spec["signature"])
        signature.update({k: "constexpr" for k in spec["constexprs"]})
        signature = {k: signature[k] for k in fn.arg_names}  # declaration order
        try:
            src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=spec["constexprs"])
            compiled = triton.compile(src, target=target, options={"num_warps": 4})
            ptx = compiled.asm.get("ptx", "")
            cubin = compiled.asm.get("cubin", b"")
            results[name] = {
                "ok": True,
                "ptx_target": ".target sm_90" in ptx,
                "cubin_bytes": len(cubin),
                "shared": getattr(compiled.metadata, "shared", None),
            }
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def compiled() -> dict:
    try:
        from triton.backends import backends
    except ImportError:
        backends = {}
    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend to compile for sm_90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(VARIANTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS")]
    assert proc.returncode == 0 and lines, f"compile script failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS") :])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kernel_compiles_for_sm90(compiled, name):
    result = compiled[name]
    assert result["ok"], result.get("error")
    assert result["ptx_target"], "PTX does not target sm_90"
    assert result["cubin_bytes"] > 0, "no cubin"
