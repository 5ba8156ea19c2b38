#!/usr/bin/env bash
# GPU check of lpc_fast on a bare GPU machine: environment, CUDA build, GPU tests, op benchmark.
#
# Usage, from anywhere (the script works in the repository that contains it):
#   bash benchmarks/gpu_check.sh "$OUT"
#
# Assumes a system Python with a CUDA torch (and Triton) already installed, nvcc at
# /usr/local/cuda, and no network: nothing is ever installed. The extension is built in place and
# imported through PYTHONPATH. Every stage has its own timeout and the whole run stays under
# ~8 minutes; a failed stage is recorded in OUT/summary.txt and the next stage still runs.
#
# Outputs in OUT: env.json, nvidia-smi.txt, build.log, smoke.log, pytest.log, junit.xml,
# bench.log, bench_op.json, bench_loop*.{log,json,md}, bench_train.{log,json,md}, results/ (the
# <gpu-kind>.jsonl/.csv rows to copy into benchmarks/results), *.png, summary.txt.
# Exit status: 0 when every stage that ran passed.
#
# Stage limits (seconds; each is also cut to what is left of the 460 s total): env 30, build 150,
# verify-build 30, smoke 60, pytest-gpu 150, bench-op 75, bench-loop 100, bench-loop-compile 75,
# bench-train 60, plot 30.

set -u -o pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

# The interpreter that has torch (python3 on the GPU image); PYTHON overrides.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3 python python3.12; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
      PY=$cand
      break
    fi
  done
  PY=${PY:-python3}
fi
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export CUDA_HOME
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

# Time budget in seconds: stage limits are cut to what is left of it.
TOTAL_BUDGET=${GPU_CHECK_BUDGET:-460}
T0=$(date +%s)
FAILED=0

note() {
  echo "[$(date +%H:%M:%S)] $*" | tee -a "$SUMMARY"
}

remaining() {
  echo $((TOTAL_BUDGET - ($(date +%s) - T0)))
}

# run_stage NAME LIMIT_S LOGFILE CMD...: runs CMD with a timeout, logs its output, records status.
run_stage() {
  local name=$1 limit=$2 logfile=$3
  shift 3
  local left
  left=$(remaining)
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 5 ]; then
    note "stage $name: SKIPPED (time budget of ${TOTAL_BUDGET}s used up)"
    FAILED=1
    return 1
  fi
  local start rc
  start=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" >"$logfile" 2>&1
  rc=$?
  local took=$(($(date +%s) - start))
  if [ $rc -eq 0 ]; then
    note "stage $name: ok (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "stage $name: TIMEOUT after ${took}s (limit ${limit}s), log: $(basename "$logfile")"
    FAILED=1
  else
    note "stage $name: FAILED rc=$rc (${took}s), log: $(basename "$logfile")"
    tail -n 15 "$logfile" | sed 's/^/    /' >>"$SUMMARY"
    FAILED=1
  fi
  return $rc
}

have_module() {
  "$PY" -c "import $1" >/dev/null 2>&1
}

note "lpc_fast GPU check in $ROOT, output in $OUT, python: $(command -v "$PY")"

# --- 1. environment ------------------------------------------------------------------------------
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || note "nvidia-smi failed (see nvidia-smi.txt)"
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ')
export GPU_CHECK_COMMIT="$COMMIT" GPU_CHECK_DIRTY="$DIRTY" GPU_CHECK_OUT="$OUT"
run_stage env 30 "$OUT/env.log" "$PY" - <<'PYEOF'
import json, os, platform, shutil, subprocess, sys, sysconfig


def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # missing tool: record why
        return f"unavailable ({exc})"


def version(mod):
    try:
        return __import__(mod).__version__
    except Exception as exc:
        return f"missing ({type(exc).__name__})"


info = {
    "git_commit": os.environ.get("GPU_CHECK_COMMIT", "unknown"),
    "git_dirty_files": int(os.environ.get("GPU_CHECK_DIRTY") or 0),
    "python": sys.version.split()[0],
    "python_executable": sys.executable,
    "python_headers": os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    "platform": platform.platform(),
    "nvidia_smi": cmd(
        "nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"
    ),
    "nvcc": cmd(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), "--version"),
    "ninja": shutil.which("ninja") or version("ninja"),
    "gcc": cmd("gcc", "--version").splitlines()[0] if shutil.which("gcc") else "missing",
}
for mod in ("torch", "triton", "numpy", "scipy", "pytest"):
    info[mod] = version(mod)
try:
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = props.name
        info["device_capability"] = list(torch.cuda.get_device_capability(0))
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["device_sms"] = props.multi_processor_count
except Exception as exc:
    info["torch_error"] = repr(exc)
path = os.path.join(os.environ["GPU_CHECK_OUT"], "env.json")
with open(path, "w") as fh:
    json.dump(info, fh, indent=2)
print(json.dumps(info, indent=2))
PYEOF

for mod in pytest numpy scipy triton ninja; do
  if have_module "$mod"; then
    note "python module $mod: present"
  else
    note "python module $mod: MISSING (stages that need it degrade or skip)"
  fi
done
if ! have_module ninja && ! command -v ninja >/dev/null 2>&1; then
  note "ninja missing: torch builds the extension serially (slower)"
fi

# --- 2. build ------------------------------------------------------------------------------------
rm -f "$ROOT"/lpc_fast/_C*.so
run_stage build 150 "$OUT/build.log" \
  env LPC_FAST_CUDA=1 MAX_JOBS=16 "$PY" setup.py build_ext --inplace
run_stage verify-build 30 "$OUT/verify.log" "$PY" -c "
import torch, lpc_fast, lpc_fast._C as C
assert C.with_cuda(), 'lpc_fast._C was built without CUDA kernels'
print('with_cuda', C.with_cuda(), 'device', torch.cuda.get_device_name())
print(lpc_fast.backends())
"

# --- 3. smoke check without pytest (also the fallback when pytest is missing) ---------------------
run_stage smoke 60 "$OUT/smoke.log" "$PY" -c "
import torch, lpc_fast
from lpc_fast import reference, rng
n, seed, offset = 4099, 2**64 - 1, 2**32 - 3
for backend in ('cuda', 'triton'):
    u = lpc_fast.philox_uint32(n, seed=seed, offset=offset, device='cuda', backend=backend)
    assert torch.equal(u.cpu(), rng.philox_uint32(n, seed=seed, offset=offset)), backend
    z = torch.randn(n, device='cuda'); g = torch.randn(n, device='cuda'); v = torch.rand(n, device='cuda')
    noise = rng.philox_normal_reference(n, seed=seed, offset=offset)
    ze, ve = reference.langevin_update(z.cpu().double(), g.cpu().double(), v.cpu().double(), noise,
                                       step=2, step_size=1e-2)
    lpc_fast.langevin_step_(z, g, v, step=2, step_size=1e-2, seed=seed, offset=offset, backend=backend)
    torch.testing.assert_close(z.cpu().double(), ze, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(v.cpu().double(), ve, rtol=2e-5, atol=2e-5)
    print(backend, 'ok')
"

# --- 4. GPU tests --------------------------------------------------------------------------------
if have_module pytest; then
  run_stage pytest-gpu 150 "$OUT/pytest.log" \
    "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$OUT/junit.xml"
  grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/pytest.log" | tail -n 40 | sed 's/^/    /' >>"$SUMMARY"
else
  note "stage pytest-gpu: SKIPPED (pytest is not installed; only the smoke stage checked the kernels)"
fi

# --- 5. op benchmark -----------------------------------------------------------------------------
if [ -f "$ROOT/benchmarks/bench_op.py" ]; then
  run_stage bench-op 75 "$OUT/bench.log" \
    "$PY" benchmarks/bench_op.py --device cuda --json "$OUT/bench_op.json"
else
  note "stage bench-op: SKIPPED (benchmarks/bench_op.py not found)"
fi

# --- 6. inference-loop and training-step benchmarks, plots -----------------------------------------
# The results go to OUT/results/<gpu-kind>.jsonl and .csv (copy them into benchmarks/results).
if [ -f "$ROOT/benchmarks/bench_loop.py" ]; then
  run_stage bench-loop 100 "$OUT/bench_loop.log" \
    "$PY" benchmarks/bench_loop.py --device cuda --models mlp conv --T 20 300 --budget 8 \
    --providers floor handwritten reference fused fused_loop fused_graph \
    --results-dir "$OUT/results" --json "$OUT/bench_loop.json" --markdown "$OUT/bench_loop.md"
  # Compilation takes most of this stage: its own stage, so a slow compile loses only this row.
  run_stage bench-loop-compile 75 "$OUT/bench_loop_compile.log" \
    "$PY" benchmarks/bench_loop.py --device cuda --models mlp --T 20 --budget 5 \
    --providers floor fused fused_graph fused_compile \
    --results-dir "$OUT/results" --json "$OUT/bench_loop_compile.json" --markdown "$OUT/bench_loop_compile.md"
else
  note "stage bench-loop: SKIPPED (benchmarks/bench_loop.py not found)"
fi
if [ -f "$ROOT/benchmarks/bench_train.py" ]; then
  run_stage bench-train 60 "$OUT/bench_train.log" \
    "$PY" benchmarks/bench_train.py --device cuda --budget 8 \
    --providers decoder_floor lpc_reference lpc_fused lpc_loop lpc_graph vae \
    --results-dir "$OUT/results" --json "$OUT/bench_train.json" --markdown "$OUT/bench_train.md"
fi
if [ -f "$OUT/bench_op.json" ] && [ -f "$ROOT/benchmarks/harness.py" ] && [ "$(remaining)" -gt 25 ]; then
  timeout 20 "$PY" benchmarks/harness.py import-op "$OUT/bench_op.json" --device cuda \
    --results-dir "$OUT/results" >"$OUT/import_op.log" 2>&1 ||
    note "bench_op.json was not imported into OUT/results (see import_op.log)"
fi
if [ ! -f "$ROOT/benchmarks/plot.py" ]; then
  note "stage plot: SKIPPED (benchmarks/plot.py not found)"
elif have_module matplotlib; then
  run_stage plot 30 "$OUT/plot.log" "$PY" benchmarks/plot.py --results-dir "$OUT/results" --out "$OUT"
else
  note "stage plot: SKIPPED (matplotlib is not installed; the rows are in OUT/results)"
fi
cat "$OUT"/bench_loop*.md "$OUT"/bench_train.md 2>/dev/null | sed 's/^/    /' >>"$SUMMARY"

note "total $(($(date +%s) - T0))s; $([ $FAILED -eq 0 ] && echo 'all stages passed' || echo 'SOME STAGES FAILED')"
exit $FAILED
