"""Ahead-of-time compilation of every Triton kernel variant for sm_90, without a GPU.

The interpreter runs the kernels as NumPy code and never lowers them, so errors
that only the GPU compiler sees (types, layouts, unsupported ops in a dtype,
specialised arguments) would otherwise surface first on a GPU machine.
``triton.compile`` needs no device: it lowers to PTX and assembles a cubin with the
bundled ``ptxas``. It runs in a subprocess whose environment lacks
``TRITON_INTERPRET``, because Triton reads that variable once, when it is first
imported.

Integer arguments. Triton's launcher turns an integer argument equal to 1 into a
compile-time constant, and the code ``torch.compile`` generates does so for any
integer kernel argument whatever ``do_not_specialize`` says; other values arrive
as ``i32`` when they fit, else ``i64``. So every flag combination the launchers
of :mod:`lpc_fast.triton.launch` use is compiled with all integer arguments
``i64``. How a kernel treats its integer arguments depends only on the flags that
decide which code reads them (:data:`INT_FLAGS`: ``USE_STATE`` replaces the scalars
with loads, ``BIAS_CORRECTION`` and ``PRECONDITION`` gate the reads of ``step`` and
of the noise key); for each distinct setting of those flags one launch's variant is
also compiled with the integer arguments all ``i32``, each one alone as the
constant 1, and all of them 1. That keeps the cold run near 120 compiles (about
half a minute on two idle cores; Triton's cache makes reruns take seconds).

``triton.compiler.ASTSource(fn, signature, constexprs=...)`` takes a signature
naming every argument (constexprs marked ``"constexpr"``) and the constexpr values
by name (Triton 3.3 and later, 3.6 and 3.9 included). The compiles run in
``LPC_FAST_AOT_JOBS`` processes (default 2). To run them under Triton 3.6, the
release on the GPU machines, from the repository root::

    python -m venv /tmp/venv-triton36
    /tmp/venv-triton36/bin/pip install torch==2.13.0 'triton==3.6.*' pytest
    PYTHONPATH=$PWD /tmp/venv-triton36/bin/python -m pytest -p no:cacheprovider tests/test_triton_aot.py
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

_FLOAT_PARAMS = ("eta", "beta", "omb", "eps", "ns", "wd")
_PTR = {"f16": "*fp16", "bf16": "*bf16", "f32": "*fp32", "f64": "*fp64"}
_UPDATE_INTS = ("n", "seed", "offset", "step")
_FLAG_TAGS = {
    "BIAS_CORRECTION": "bc",
    "PRECONDITION": "pc",
    "PRIOR_GRAD": "pg",
    "USE_STATE": "state",
    "STORE_V": "sv",
    "HAS_GV": "gv",
}


def _tag(const: dict) -> str:
    """The variant's set flags, e.g. ``bc.pc.pg.sv``."""
    return ".".join(tag for flag, tag in _FLAG_TAGS.items() if const.get(flag)) or "none"


_RNG_INTS = ("n", "seed", "offset")


def _int_modes(names: tuple[str, ...]) -> dict[str, dict[str, str | int]]:
    """label -> {argument: "i64" | "i32" | 1}: the ways a launch can pass the integer arguments."""
    modes: dict[str, dict[str, str | int]] = {
        "i64": dict.fromkeys(names, "i64"),
        "i32": dict.fromkeys(names, "i32"),
    }
    for name in names:
        modes[f"{name}=1"] = {other: 1 if other == name else "i64" for other in names}
    if len(names) > 1:
        modes["all=1"] = dict.fromkeys(names, 1)
    return modes


def _flag_variants() -> dict[str, dict]:
    """name -> {"kernel", "signature" (pointers and floats), "ints", "constexprs"}: every launch."""
    floats = {f"{p}_{part}": "fp32" for p in _FLOAT_PARAMS for part in ("hi", "lo")}
    out: dict[str, dict] = {}
    # (precondition, bias_correction) as launch._fwd_meta passes them: no bias correction without
    # a preconditioner.
    pc_bc = ((True, True), (True, False), (False, False))

    def fwd(dt, pc, bc, pg, use_state, store_v):
        sig = {
            "z_ptr": _PTR[dt],
            "g_ptr": _PTR[dt],
            "v_ptr": "*fp32",
            "z_out_ptr": _PTR[dt],
            "v_out_ptr": "*fp32",
            "state_ptr": "*i64",
            **floats,
        }
        const = {
            "BLOCK": 1024,
            "F64": dt == "f64",
            "BIAS_CORRECTION": bc,
            "PRECONDITION": pc,
            "PRIOR_GRAD": pg,
            "USE_STATE": use_state,
            "STORE_V": store_v,
        }
        out[f"fwd-{dt}-{_tag(const)}"] = {
            "kernel": "langevin_fwd_kernel",
            "signature": sig,
            "ints": _UPDATE_INTS,
            "constexprs": const,
        }

    def bwd(dt, pc, bc, pg, has_gv):
        sig = {
            "gz_ptr": _PTR[dt],
            "gv_ptr": "*fp32" if has_gv else _PTR[dt],
            "z_ptr": _PTR[dt],
            "g_ptr": _PTR[dt],
            "v_ptr": "*fp32",
            "grad_z_ptr": _PTR[dt],
            "grad_g_ptr": _PTR[dt],
            **floats,
        }
        const = {
            "BLOCK": 1024,
            "F64": dt == "f64",
            "BIAS_CORRECTION": bc,
            "PRECONDITION": pc,
            "PRIOR_GRAD": pg,
            "HAS_GV": has_gv,
        }
        out[f"bwd-{dt}-{_tag(const)}"] = {
            "kernel": "langevin_bwd_kernel",
            "signature": sig,
            "ints": _UPDATE_INTS,
            "constexprs": const,
        }

    for dt in ("f32", "f64"):
        for pc, bc in pc_bc:
            for pg in (True, False):
                # (USE_STATE, STORE_V): langevin_step_ stores v only when preconditioned,
                # langevin_step_state_ likewise, langevin_fwd always.
                for use_state, store_v in sorted({(False, pc), (True, pc), (False, True)}):
                    fwd(dt, pc, bc, pg, use_state, store_v)
                for has_gv in (True, False):
                    bwd(dt, pc, bc, pg, has_gv)
    for dt in ("f16", "bf16"):  # storage types: pointer element types only, one flag set each
        fwd(dt, True, True, True, False, True)
        bwd(dt, True, True, True, True)
    for dt in ("f32", "f64"):
        out[f"normal-{dt}"] = {
            "kernel": "philox_normal_kernel",
            "signature": {"out_ptr": _PTR[dt]},
            "ints": _RNG_INTS,
            "constexprs": {"BLOCK": 1024, "F64": dt == "f64"},
        }
    out["uint32"] = {
        "kernel": "philox_uint32_kernel",
        "signature": {"out_ptr": "*i64"},
        "ints": _RNG_INTS,
        "constexprs": {"BLOCK": 1024},
    }
    for pc, bc in pc_bc:  # the multi-tensor step: all dtypes in one kernel (a run-time branch)
        for pg in (True, False):
            for use_state in (False, True):
                const = {
                    "BLOCK": 1024,
                    "BIAS_CORRECTION": bc,
                    "PRECONDITION": pc,
                    "PRIOR_GRAD": pg,
                    "USE_STATE": use_state,
                }
                out[f"foreach-{_tag(const)}"] = {
                    "kernel": "langevin_foreach_kernel",
                    "signature": {
                        "tensors_ptr": "*i64",
                        "programs_ptr": "*i64",
                        "state_ptr": "*i64",
                        **floats,
                    },
                    "ints": ("seed", "offset", "step"),
                    "constexprs": const,
                }
    out["advance-state"] = {
        "kernel": "advance_state_kernel",
        "signature": {"state_ptr": "*i64"},
        "ints": ("increment",),
        "constexprs": {},
    }
    return out


VARIANTS = _flag_variants()

#: The constexpr flags that change which code reads a kernel's integer arguments.
INT_FLAGS = {
    "langevin_fwd_kernel": ("USE_STATE", "BIAS_CORRECTION"),
    "langevin_bwd_kernel": ("PRECONDITION", "BIAS_CORRECTION"),
    "philox_normal_kernel": (),
    "philox_uint32_kernel": (),
    "advance_state_kernel": (),
    "langevin_foreach_kernel": ("USE_STATE", "BIAS_CORRECTION"),
}


def _modes_per_variant() -> dict[str, dict[str, dict[str, str | int]]]:
    """variant -> its integer-argument modes: all of them for the first variant of each setting
    of the kernel's INT_FLAGS, ``i64`` for the others."""
    seen = set()
    out = {}
    for name, spec in VARIANTS.items():
        modes = _int_modes(spec["ints"])
        key = (spec["kernel"], *(spec["constexprs"][f] for f in INT_FLAGS[spec["kernel"]]))
        out[name] = modes if key not in seen else {"i64": modes["i64"]}
        seen.add(key)
    return out


MODES = _modes_per_variant()
#: The kernels the launchers use, each of which must appear in VARIANTS.
KERNELS = (
    "langevin_fwd_kernel",
    "langevin_bwd_kernel",
    "philox_normal_kernel",
    "philox_uint32_kernel",
    "advance_state_kernel",
    "langevin_foreach_kernel",
)

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from concurrent.futures import ProcessPoolExecutor

    def compile_one(job):
        import triton
        from triton.backends.compiler import GPUTarget
        from lpc_fast.triton import kernels

        name, spec, mode = job
        fn = getattr(kernels, spec["kernel"])
        signature = dict(spec["signature"])
        constexprs = dict(spec["constexprs"])
        for arg, kind in mode.items():
            if kind == 1:  # what the launcher makes of an int equal to 1
                signature[arg] = "constexpr"
                constexprs[arg] = 1
            else:
                signature[arg] = kind
        signature.update({k: "constexpr" for k in spec["constexprs"]})
        signature = {k: signature[k] for k in fn.arg_names}  # declaration order
        try:
            src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            ptx = compiled.asm.get("ptx", "")
            cubin = compiled.asm.get("cubin", b"")
            return name, {"ok": ".target sm_90" in ptx and len(cubin) > 0, "error": "no sm_90 PTX or cubin"}
        except Exception as exc:
            return name, {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}

    if __name__ == "__main__":
        import triton

        jobs = json.loads(sys.stdin.read())
        workers = max(1, min(int(os.environ.get("LPC_FAST_AOT_JOBS", "2")), len(jobs)))
        with ProcessPoolExecutor(workers) as pool:
            results = dict(pool.map(compile_one, [tuple(j) for j in jobs], chunksize=4))
        print("RESULTS" + json.dumps({"triton": triton.__version__, "results": results}))
    """
)


def _jobs() -> list[tuple[str, dict, dict]]:
    return [
        (f"{name}/{label}", spec, mode)
        for name, spec in VARIANTS.items()
        for label, mode in MODES[name].items()
    ]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    try:
        from triton.backends import backends
    except ImportError:
        backends = {}
    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend to compile for sm_90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    script = tmp_path_factory.mktemp("aot") / "compile_kernels.py"
    script.write_text(_SCRIPT)  # a file, not -c: worker processes re-import the main module
    proc = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps(_jobs()),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS")]
    assert proc.returncode == 0 and lines, f"compile script failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS") :])["results"]


def test_variants_cover_every_kernel():
    from lpc_fast.triton import kernels

    defined = {name for name in vars(kernels) if name.endswith("_kernel") and not name.startswith("_")}
    assert defined == set(KERNELS), "a kernel is missing from VARIANTS / INT_FLAGS here"
    assert {spec["kernel"] for spec in VARIANTS.values()} == set(KERNELS) == set(INT_FLAGS)
    # Every integer argument of every kernel is compiled as the constant 1, as i32 and as i64.
    for kernel in KERNELS:
        labels = {
            label for name, modes in MODES.items() if VARIANTS[name]["kernel"] == kernel for label in modes
        }
        ints = next(spec["ints"] for spec in VARIANTS.values() if spec["kernel"] == kernel)
        assert {"i32", "i64", *(f"{a}=1" for a in ints)} <= labels, kernel

    for spec in VARIANTS.values():
        fn = getattr(kernels, spec["kernel"])
        declared = set(spec["signature"]) | set(spec["ints"]) | set(spec["constexprs"])
        assert declared == set(fn.arg_names), f"{spec['kernel']}: arguments {sorted(declared)}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kernel_compiles_for_sm90(compiled, name):
    failures = {
        label: compiled[f"{name}/{label}"]["error"]
        for label in MODES[name]
        if not compiled[f"{name}/{label}"]["ok"]
    }
    assert not failures, "\n".join(f"{label}: {error}" for label, error in failures.items())
