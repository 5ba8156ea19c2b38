#!/usr/bin/env bash
# GPU check of lpc_fast on a bare GPU machine: the CUDA build, then what matters most first (a
# bit-exact cross-backend smoke test, the GPU test suite, the op benchmark with its copy ceiling,
# the training-step benchmark), then the loop benchmarks and the plots.
#
# Usage, from anywhere (the script works in the repository that contains it):
#   bash benchmarks/gpu_check.sh OUTDIR [PACKDIR]
#
# Every stage writes its log (and results) into OUTDIR as it runs. OUTDIR/status.txt lists every
# stage with its state (pending, RUNNING, ok, FAILED rc=N, TIMED OUT, SKIPPED) and is rewritten
# at each change, so a run cut short shows where it stopped; OUTDIR/summary.txt is the running
# log. With PACKDIR, status.txt, summary.txt and gpu_check.tar.gz (all of OUTDIR) are copied
# there after every stage: three files, for a place that takes back only a few files, e.g.
#   bash benchmarks/gpu_check.sh /tmp/gpu_check "$OUT"
#
# Assumes a Python with a CUDA torch (and Triton) already installed, a CUDA toolkit that setup.py
# can find (CUDA_HOME, the nvcc on PATH, or /usr/local/cuda), and no network: nothing is ever
# installed. The extension is built in place, for the visible GPU's architecture, and imported
# through PYTHONPATH.
#
# Stages, in the order they run, and their limits in seconds (each limit is also cut to what is
# left of the budget):
#   env 20, build 150, verify-build 30, smoke 45, pytest-gpu-ops 150, pytest-gpu-loops 120,
#   bench-op 75, bench-train 45, bench-loop 60, bench-loop-compile 60, plot 20.
# Measured on an H100 (2026-12-06): env 5, build 36, verify 8, smoke 13, bench-op 36, the test
# stages about 60 each, bench-train 19, bench-loop-compile 39, plot 6: the full default run fits
# one 8-minute call. The total budget is GPU_CHECK_BUDGET seconds (default 460). The loop
# benchmark runs T = 20 only (GPU_CHECK_LOOP_T="20 300" adds the paper's T = 300, about 60 s
# more). Triton and inductor caches persist between stages. GPU_CHECK_STAGES="build verify-build
# pytest-gpu-ops ..." runs only the named stages (e.g. the test suite alone, in a second run).
#
# GPU_CHECK_DRY_RUN=1 replaces every stage by a stand-in that succeeds, or fails for the stages
# named in GPU_CHECK_DRY_RUN_FAIL, or hangs for those in GPU_CHECK_DRY_RUN_HANG, with every limit
# cut to 2 s: a check of this script's bookkeeping without a GPU (tests/test_gpu_check_script.py).
#
# Exit status: 0 when every selected stage passed.

set -u -o pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR [PACKDIR]" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
PACK=""
if [ $# -ge 2 ] && [ -n "$2" ]; then
  mkdir -p "$2" || exit 2
  PACK=$(cd "$2" && pwd)
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
TOTAL_BUDGET=${GPU_CHECK_BUDGET:-460}
LOOP_T=${GPU_CHECK_LOOP_T:-20}
T0=$(date +%s)
FAILED=0
SUMMARY="$OUT/summary.txt"
STATUS="$OUT/status.txt"
: >"$SUMMARY"

ALL_STAGES=(env build verify-build smoke pytest-gpu-ops pytest-gpu-loops bench-op bench-train
  bench-loop bench-loop-compile plot)
SELECTED=" ${GPU_CHECK_STAGES:-${ALL_STAGES[*]}} "
declare -A STATE=() TOOK=() LIMIT=() LOG=()
for s in "${ALL_STAGES[@]}"; do
  if [[ "$SELECTED" == *" $s "* ]]; then STATE[$s]="pending"; else STATE[$s]="not selected"; fi
done
for s in $SELECTED; do
  if [ -z "${STATE[$s]+x}" ]; then
    echo "gpu_check: unknown stage '$s' in GPU_CHECK_STAGES (stages: ${ALL_STAGES[*]})" >&2
    exit 2
  fi
done

note() {
  echo "[$(date +%H:%M:%S)] $*" | tee -a "$SUMMARY"
}

remaining() {
  echo $((TOTAL_BUDGET - ($(date +%s) - T0)))
}

# status.txt: one row per stage, rewritten (atomically) at every change of state.
write_status() {
  {
    printf '%-20s %-34s %8s %6s  %s\n' stage status seconds limit log
    local s
    for s in "${ALL_STAGES[@]}"; do
      printf '%-20s %-34s %8s %6s  %s\n' "$s" "${STATE[$s]}" "${TOOK[$s]:--}" "${LIMIT[$s]:--}" \
        "${LOG[$s]:--}"
    done
    printf 'elapsed %ss of a %ss budget\n' "$(($(date +%s) - T0))" "$TOTAL_BUDGET"
  } >"$STATUS.tmp" && mv "$STATUS.tmp" "$STATUS"
}

# Copy what there is so far to PACKDIR (status, summary, and an archive of OUTDIR).
pack() {
  [ -n "$PACK" ] || return 0
  tar -czf "$PACK/gpu_check.tar.gz.tmp" -C "$OUT" . 2>/dev/null &&
    mv "$PACK/gpu_check.tar.gz.tmp" "$PACK/gpu_check.tar.gz"
  cp "$STATUS" "$SUMMARY" "$PACK/" 2>/dev/null
  return 0
}

selected() {
  [[ "$SELECTED" == *" $1 "* ]]
}

skip_stage() { # skip_stage NAME REASON
  selected "$1" || return 0
  STATE[$1]="SKIPPED ($2)"
  note "stage $1: SKIPPED ($2)"
  write_status
  pack
}

# run_stage NAME LIMIT_S LOGFILE CMD...: runs CMD under a timeout, logs its output, records status.
run_stage() {
  local name=$1 limit=$2 logfile=$3
  shift 3
  selected "$name" || return 0
  local left
  left=$(remaining)
  if [ "$DRY_RUN" = 1 ] && [ "$limit" -gt 2 ]; then limit=2; fi
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  LOG[$name]=$(basename "$logfile")
  if [ "$limit" -lt 2 ]; then
    STATE[$name]="SKIPPED (budget used up)"
    note "stage $name: SKIPPED (the ${TOTAL_BUDGET}s budget is used up)"
    FAILED=1
    write_status
    pack
    return 1
  fi
  LIMIT[$name]=$limit
  STATE[$name]="RUNNING since $(date +%H:%M:%S)"
  write_status
  pack
  if [ "$DRY_RUN" = 1 ]; then
    if [[ " ${GPU_CHECK_DRY_RUN_HANG:-} " == *" $name "* ]]; then
      set -- sleep 60
    elif [[ " ${GPU_CHECK_DRY_RUN_FAIL:-} " == *" $name "* ]]; then
      set -- sh -c "echo dry run: $name fails; exit 3"
    else
      set -- sh -c "echo dry run: $name passes"
    fi
  fi
  local start rc took
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$logfile" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  TOOK[$name]=$took
  if [ $rc -eq 0 ]; then
    STATE[$name]="ok"
    note "stage $name: ok (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    STATE[$name]="TIMED OUT (limit ${limit}s)"
    note "stage $name: TIMED OUT after ${took}s (limit ${limit}s), log: ${LOG[$name]}"
    tail -n 5 "$logfile" | sed 's/^/    /' >>"$SUMMARY"
    FAILED=1
  else
    STATE[$name]="FAILED rc=$rc"
    note "stage $name: FAILED rc=$rc (${took}s), log: ${LOG[$name]}"
    tail -n 15 "$logfile" | sed 's/^/    /' >>"$SUMMARY"
    FAILED=1
  fi
  write_status
  pack
  return $rc
}

# The interpreter that has torch (python3 on the GPU image); PYTHON overrides.
PY=${PYTHON:-}
if [ -z "$PY" ] && [ "$DRY_RUN" = 1 ]; then
  PY=python3 # never started in a dry run
elif [ -z "$PY" ]; then
  for cand in python3 python python3.12; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
      PY=$cand
      break
    fi
  done
  PY=${PY:-python3}
fi

have_module() {
  [ "$DRY_RUN" = 1 ] && return 0
  "$PY" -c "import $1" >/dev/null 2>&1
}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
write_status
note "lpc_fast GPU check in $ROOT, output in $OUT${PACK:+ (packed into $PACK)}, python: $(command -v "$PY")"
[ "$DRY_RUN" = 1 ] && note "DRY RUN: stand-in commands, limits cut to 2 s"

# --- 1. environment --------------------------------------------------------------------------------
if [ "$DRY_RUN" != 1 ]; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || note "nvidia-smi failed (see nvidia-smi.txt)"
fi
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ')
export GPU_CHECK_COMMIT="$COMMIT" GPU_CHECK_DIRTY="$DIRTY" GPU_CHECK_OUT="$OUT" GPU_CHECK_ROOT="$ROOT"
run_stage env 20 "$OUT/env.log" "$PY" - <<'PYEOF'
import importlib.util, json, os, platform, shutil, subprocess, sys, sysconfig


def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=15).stdout.strip()
    except Exception as exc:  # missing tool: record why
        return f"unavailable ({exc})"


def version(mod):
    # The distribution's metadata first: some modules (pytest_timeout) have no __version__.
    dist = {"xdist": "pytest-xdist", "pytest_timeout": "pytest-timeout"}.get(mod, mod)
    try:
        import importlib.metadata

        return importlib.metadata.version(dist)
    except Exception:
        pass
    try:
        return __import__(mod).__version__
    except Exception as exc:
        return f"missing ({type(exc).__name__})"


def toolkit():
    # The toolkit setup.py will build with, found the same way.
    path = os.path.join(os.environ["GPU_CHECK_ROOT"], "build_tools", "cuda_toolkit.py")
    spec = importlib.util.spec_from_file_location("_lpc_fast_cuda_toolkit", path)
    ct = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ct
    spec.loader.exec_module(ct)
    try:
        tk = ct.find_toolkit()
        return {"root": tk.root, "found_by": tk.found_by, "nvcc": cmd(tk.nvcc, "--version")}
    except Exception as exc:
        return {"error": str(exc)}


info = {
    "git_commit": os.environ.get("GPU_CHECK_COMMIT", "unknown"),
    "git_dirty_files": int(os.environ.get("GPU_CHECK_DIRTY") or 0),
    "python": sys.version.split()[0],
    "python_executable": sys.executable,
    "python_headers": os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    "platform": platform.platform(),
    "cpus": os.cpu_count(),
    "nvidia_smi": cmd(
        "nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"
    ),
    "cuda_toolkit": toolkit(),
    "ninja": shutil.which("ninja") or version("ninja"),
    "gcc": cmd("gcc", "--version").splitlines()[0] if shutil.which("gcc") else "missing",
}
for mod in ("torch", "triton", "numpy", "scipy", "pytest", "xdist", "pytest_timeout"):
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

for mod in pytest numpy scipy triton ninja xdist pytest_timeout matplotlib; do
  if have_module "$mod"; then
    note "python module $mod: present"
  else
    note "python module $mod: MISSING (stages that need it degrade or skip)"
  fi
done

# --- 2. build, for the visible GPU only (all of setup.py's default architectures take longer) ------
ARCHS=""
if [ "$DRY_RUN" != 1 ]; then
  ARCHS=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
fi
if selected build; then
  [ "$DRY_RUN" = 1 ] || rm -f "$ROOT"/lpc_fast/_C*.so
  note "building for TORCH_CUDA_ARCH_LIST=${ARCHS:-<setup.py default>}"
fi
run_stage build 150 "$OUT/build.log" \
  env LPC_FAST_CUDA=1 MAX_JOBS="$(nproc)" ${ARCHS:+TORCH_CUDA_ARCH_LIST="$ARCHS"} \
  "$PY" setup.py build_ext --inplace
run_stage verify-build 30 "$OUT/verify.log" "$PY" -c "
import torch, lpc_fast, lpc_fast._C as C
assert C.with_cuda(), 'lpc_fast._C was built without CUDA kernels'
print('with_cuda', C.with_cuda(), 'device', torch.cuda.get_device_name())
for row in lpc_fast.backends():
    print(row)
"

# --- 3. bit-exact cross-backend smoke test (without pytest) ----------------------------------------
run_stage smoke 45 "$OUT/smoke.log" "$PY" - <<'PYEOF'
import sys

import torch

import lpc_fast
from lpc_fast import reference, rng

BACKENDS = {"cpu": "cpu", "cuda": "cuda", "triton": "cuda"}
failures = []


def attempt(what, fn):
    try:
        fn()
        print(f"ok      {what}")
    except Exception as exc:  # report every backend, not only the first failure
        failures.append(what)
        print(f"FAILED  {what}: {type(exc).__name__}: {exc}")


def case(n, seed, offset, step):
    tag = f"n={n} seed={seed} offset={offset} step={step}"
    want = rng.philox_uint32(n, seed=seed, offset=offset)
    for backend, device in BACKENDS.items():

        def words(backend=backend, device=device):
            got = lpc_fast.philox_uint32(n, seed=seed, offset=offset, device=device, backend=backend)
            bad = (got.cpu() != want).sum().item()
            assert bad == 0, f"{bad} of {n} Philox words differ from the contract"

        attempt(f"{backend:6s} uint32 words bit-exact, {tag}", words)
    gen = torch.Generator().manual_seed(n)
    z0, g, v0 = torch.randn(n, generator=gen), torch.randn(n, generator=gen), torch.rand(n, generator=gen)
    noise = rng.philox_normal_reference(n, seed=seed, offset=offset)
    ze, ve = reference.langevin_update(z0.double(), g.double(), v0.double(), noise, step=step, step_size=1e-2)
    for backend, device in BACKENDS.items():

        def update(backend=backend, device=device):
            # copy=True: z0.to("cpu") would return z0 itself, and the in-place step would change
            # the inputs that the later backends start from.
            z, v = z0.to(device, copy=True), v0.to(device, copy=True)
            lpc_fast.langevin_step_(
                z, g.to(device), v, step=step, step_size=1e-2, seed=seed, offset=offset, backend=backend
            )
            # float32 kernels against the float64 reference with the same noise; on the GPU the
            # square roots are approximate (about 1e-6 relative), hence 2e-5.
            torch.testing.assert_close(z.cpu().double(), ze, rtol=2e-5, atol=2e-5)
            torch.testing.assert_close(v.cpu().double(), ve, rtol=2e-5, atol=2e-5)

        attempt(f"{backend:6s} Langevin step matches the float64 reference, {tag}", update)


case(4099, 2**64 - 1, 2**32 - 3, 2)
# Every integer argument equal to 1: Triton turns such arguments into compile-time constants.
case(3, 1, 1, 1)
torch.cuda.synchronize()
print(f"{len(failures)} failed" if failures else "all ok")
sys.exit(1 if failures else 0)
PYEOF

# --- 4. the GPU test suite, in two stages (Triton compiles; CUDA graphs and torch.compile) ---------
PYTEST_OPTS=(-m gpu -q -p no:cacheprovider)
if have_module pytest_timeout; then PYTEST_OPTS+=(--timeout=150); fi
if have_module pytest; then
  # The bad-input cases first: each runs in a process of its own, so a crash is one failed case.
  run_stage pytest-gpu-ops 150 "$OUT/pytest_ops.log" \
    "$PY" -m pytest "${PYTEST_OPTS[@]}" --junitxml="$OUT/junit_ops.xml" \
    tests/gpu/test_gpu_bad_inputs.py tests/gpu/test_gpu_ops.py tests/gpu/test_gpu_foreach.py \
    tests/gpu/test_gpu_triton_foreach_identity.py tests/gpu/test_gpu_likelihood.py \
    tests/gpu/test_gpu_large.py
  run_stage pytest-gpu-loops 120 "$OUT/pytest_loops.log" \
    "$PY" -m pytest "${PYTEST_OPTS[@]}" --junitxml="$OUT/junit_loops.xml" \
    tests/gpu/test_gpu_loops.py tests/gpu/test_gpu_fastloop.py tests/gpu/test_gpu_sampler.py \
    tests/gpu/test_gpu_capturable.py
  for log in "$OUT/pytest_ops.log" "$OUT/pytest_loops.log"; do
    [ -f "$log" ] && grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$log" | tail -n 20 | sed 's/^/    /' >>"$SUMMARY"
  done
  # Every test file under tests/gpu must belong to one of the two stages.
  for f in tests/gpu/test_*.py; do
    case "$f" in
      tests/gpu/test_gpu_bad_inputs.py | tests/gpu/test_gpu_ops.py | tests/gpu/test_gpu_foreach.py | \
        tests/gpu/test_gpu_large.py | tests/gpu/test_gpu_loops.py | tests/gpu/test_gpu_fastloop.py | \
        tests/gpu/test_gpu_sampler.py | tests/gpu/test_gpu_triton_foreach_identity.py | \
        tests/gpu/test_gpu_capturable.py | tests/gpu/test_gpu_likelihood.py) ;;
      *) note "WARNING: $f is in neither pytest stage (add it to gpu_check.sh)" ;;
    esac
  done
else
  skip_stage pytest-gpu-ops "pytest is not installed; only the smoke stage checked the kernels"
  skip_stage pytest-gpu-loops "pytest is not installed"
fi

# --- 5. op benchmark, with the copy ceiling --------------------------------------------------------
# Results rows go to OUT/results/<gpu-kind>.jsonl and .csv (copy them into benchmarks/results).
run_stage bench-op 75 "$OUT/bench_op.log" \
  "$PY" benchmarks/bench_op.py --device cuda --providers copy cuda triton eager compile \
  --json "$OUT/bench_op.json"
if selected bench-op && [ -f "$OUT/bench_op.json" ] && [ "$(remaining)" -gt 25 ]; then
  timeout 20 "$PY" benchmarks/harness.py import-op "$OUT/bench_op.json" --device cuda \
    --results-dir "$OUT/results" >"$OUT/import_op.log" 2>&1 ||
    note "bench_op.json was not imported into OUT/results (see import_op.log)"
  pack
fi

# --- 6. training-step benchmark --------------------------------------------------------------------
run_stage bench-train 45 "$OUT/bench_train.log" \
  "$PY" benchmarks/bench_train.py --device cuda --budget 6 \
  --providers decoder_floor lpc_reference lpc_fused lpc_loop lpc_graph vae \
  --results-dir "$OUT/results" --json "$OUT/bench_train.json" --markdown "$OUT/bench_train.md"
# --- 7. inference-loop benchmarks, plots -----------------------------------------------------------
# One eager MLP chain at T = 300 takes about 0.9 s: T = 20 by default, to fit the stage's limit.
run_stage bench-loop 60 "$OUT/bench_loop.log" \
  "$PY" benchmarks/bench_loop.py --device cuda --models mlp conv --T $LOOP_T --budget 3 \
  --providers floor handwritten reference fused fused_loop fused_graph \
  --results-dir "$OUT/results" --json "$OUT/bench_loop.json" --markdown "$OUT/bench_loop.md"
# Compilation takes most of this stage: its own stage, so a slow compile loses only this row.
run_stage bench-loop-compile 60 "$OUT/bench_loop_compile.log" \
  "$PY" benchmarks/bench_loop.py --device cuda --models mlp --T 20 --budget 3 \
  --providers floor fused fused_graph fused_compile \
  --results-dir "$OUT/results" --json "$OUT/bench_loop_compile.json" --markdown "$OUT/bench_loop_compile.md"

if have_module matplotlib; then
  run_stage plot 20 "$OUT/plot.log" "$PY" benchmarks/plot.py --results-dir "$OUT/results" --out "$OUT"
else
  skip_stage plot "matplotlib is not installed; the rows are in OUT/results"
fi
cat "$OUT"/bench_loop*.md "$OUT"/bench_train.md 2>/dev/null | sed 's/^/    /' >>"$SUMMARY"

note "total $(($(date +%s) - T0))s; $([ $FAILED -eq 0 ] && echo 'all selected stages passed' || echo 'SOME STAGES FAILED')"
write_status
pack
exit $FAILED
