"""Shared benchmark machinery: interleaved timing, statistics, environment capture, peak memory, results.

Every benchmark level (op, inference loop, training step) times its providers round-robin in one
process (eager timings drift by tens of percent between runs on a shared machine, so only providers
measured side by side are compared), reports median / p20 / p80, and stamps each result row with the
environment (:func:`environment`). Rows are appended to ``benchmarks/results/<device-kind>.jsonl`` and
``.csv``; ``plot.py`` draws one set of figures per device and never mixes devices.

Peak memory (:func:`peak_memory`): on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated
before the call (method ``cuda_max_memory_allocated``). PyTorch has no CPU allocator statistics, so on
the CPU the allocation and free events that ``torch.profiler`` records with ``profile_memory=True`` are
replayed in time order and the running total's maximum is taken (method ``profiler_memory_events``):
it counts every tensor allocation of the call, at operator granularity, and nothing else (not Python
objects, not the allocator's cached blocks).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")

#: Keys every result row carries (checked by the tests).
ENV_KEYS = (
    "device",
    "device_kind",
    "device_name",
    "driver",
    "torch",
    "triton",
    "python",
    "git",
    "threads",
    "simd",
    "hostname",
    "timestamp",
)

#: CSV columns, in order; anything else a row has goes into the ``extra`` JSON column.
CSV_COLUMNS = (
    "timestamp",
    "level",
    "bench",
    "provider",
    "model",
    "T",
    "batch",
    "n",
    "median_s",
    "p20_s",
    "p80_s",
    "rounds",
    "throughput",
    "throughput_unit",
    "ratio_to_floor",
    "peak_mem_bytes",
    "mem_method",
    "device",
    "device_kind",
    "device_name",
    "driver",
    "torch",
    "triton",
    "python",
    "git",
    "threads",
    "simd",
    "hostname",
)


# ------------------------------------------------------------------------------------------------
# Environment


def _run(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """Short commit of the repository, with ``-dirty`` when tracked files are modified."""
    head = _run(["git", "rev-parse", "--short", "HEAD"])
    if head is None:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + ("-dirty" if dirty else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: str) -> str:
    """File-name key of a device: ``cpu``, or the GPU's name in lower case (``nvidia-h100-80gb-hbm3``)."""
    if torch.device(device).type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment(device: str) -> dict[str, Any]:
    """The environment keys of :data:`ENV_KEYS` for results measured on ``device``."""
    ensure_importable()
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        driver = driver.splitlines()[0] if driver else f"cuda runtime {torch.version.cuda}"
    else:
        name, driver = _cpu_name(), None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import lpc_fast._C as C

        simd = C.simd_level()
    except (ImportError, AttributeError):
        simd = None
    return {
        "device": dev.type,
        "device_kind": device_kind(device),
        "device_name": name,
        "driver": driver,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "git": git_commit(),
        "threads": torch.get_num_threads(),
        "simd": simd,
        "hostname": socket.gethostname(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------
# Timing


def synchronizer(device: str) -> Callable[[], None]:
    """A no-argument function that waits for ``device`` (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    device: str = "cpu",
    budget_s: float = 10.0,
    min_rounds: int = 3,
    max_rounds: int = 200,
    warmup: int = 1,
    min_sample_s: float = 2e-3,
) -> dict[str, list[float]]:
    """Seconds per call of each provider, sampled round-robin.

    Each round calls every provider once in turn (``inner`` times back to back for calls shorter than
    ``min_sample_s``, to beat timer and launch jitter), so slow drifts of the machine hit all providers
    alike. Rounds continue until ``budget_s`` is spent, within ``[min_rounds, max_rounds]``.

    Parameters
    ----------
    fns : dict of str to callable
        Provider name -> one call (e.g. one whole chain).
    device : str
        Synchronised around each sample.
    budget_s : float
        Soft wall-clock budget of the timed rounds (warm-up excluded).
    min_rounds, max_rounds : int
        Bounds on the number of samples per provider.
    warmup : int
        Untimed calls per provider first (compilation, caches, thread pools); at least one, which also
        measures how long a call takes.
    min_sample_s : float
        Shortest sample; shorter calls are repeated within a sample.

    Returns
    -------
    dict of str to list of float
        Per provider, one per-call time per round.
    """
    sync = synchronizer(device)
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        # The last warm-up call also estimates the call's duration (long chains run once, not twice).
        for _ in range(max(0, warmup - 1)):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        est = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, min(1000, math.ceil(min_sample_s / est)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds:
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / inner[name])
        rounds += 1
        spent = time.perf_counter() - start
        if rounds >= min_rounds and spent * (rounds + 1) / rounds > budget_s:
            break
    return samples


def check_failure(check: Callable[..., str | None], *args: Any) -> str | None:
    """Why a provider must not be timed: ``check(*args)``'s complaint, or the exception it raised; None if
    the check passes."""
    try:
        why = check(*args)
    except Exception as exc:  # noqa: BLE001 - a crashing provider is reported, not timed
        why = f"check raised {type(exc).__name__}: {exc}"
    return None if why is None else f"FAILED its correctness check: {why}"


def paired_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``samples[num][r] / samples[den][r]``: a ratio of two providers measured in
    the same round, which cancels the machine's slow drifts better than a ratio of medians."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


def quantile(xs: Iterable[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1]."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(xs: list[float]) -> dict[str, float]:
    """``median_s``, ``p20_s``, ``p80_s``, ``min_s`` and ``rounds`` of per-call times."""
    return {
        "median_s": statistics.median(xs),
        "min_s": min(xs),
        "p20_s": quantile(xs, 0.2),
        "p80_s": quantile(xs, 0.8),
        "rounds": len(xs),
    }


# ------------------------------------------------------------------------------------------------
# Memory


def peak_memory(fn: Callable[[], Any], device: str) -> tuple[int | None, str]:
    """Peak extra bytes allocated while ``fn()`` runs, and the method used (see the module docstring)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - base), "cuda_max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    # Self memory of each event (allocations minus frees not attributed to a child), in time order.
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak), "profiler_memory_events"


# ------------------------------------------------------------------------------------------------
# Results


def results_paths(kind: str, results_dir: str = RESULTS_DIR) -> tuple[str, str]:
    """``(<results_dir>/<kind>.jsonl, <results_dir>/<kind>.csv)``."""
    return os.path.join(results_dir, f"{kind}.jsonl"), os.path.join(results_dir, f"{kind}.csv")


def append_results(rows: list[dict[str, Any]], results_dir: str = RESULTS_DIR) -> list[str]:
    """Append rows to the JSONL and CSV files of their device kind; return the paths written."""
    os.makedirs(results_dir, exist_ok=True)
    written = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_kind.setdefault(row["device_kind"], []).append(row)
    for kind, group in by_kind.items():
        jsonl, csv_path = results_paths(kind, results_dir)
        with open(jsonl, "a") as fh:
            for row in group:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
        with open(csv_path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow([*CSV_COLUMNS, "extra"])
            for row in group:
                extra = {k: v for k, v in row.items() if k not in CSV_COLUMNS}
                writer.writerow(
                    [_csv_value(row.get(k)) for k in CSV_COLUMNS] + [json.dumps(extra, sort_keys=True)]
                )
        written += [jsonl, csv_path]
    return written


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def read_results(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL results file."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def write_json(rows: list[dict[str, Any]], path: str) -> None:
    """Write rows as one JSON list (the ``--json`` output of each benchmark script)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=1, sort_keys=True)


def fmt_seconds(seconds: float) -> str:
    """``1.23 ms`` / ``45.6 us`` / ``1.20 s``."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def markdown_table(header: list[str], body: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` when given (small models run fastest on few threads on a shared CPU)."""
    if threads is not None:
        torch.set_num_threads(int(threads))


def op_rows(raw: list[dict[str, Any]], env: dict[str, Any]) -> list[dict[str, Any]]:
    """``bench_op.py`` JSON rows in the common layout: the environment keys, ``level`` and a throughput."""
    rows = []
    for r in raw:
        row = {**r, **env}
        row.update(
            level="op",
            bench="bench_op",
            model=None,
            T=None,
            batch=None,
            rounds=r.get("rounds"),
            throughput=r["n"] / r["median_s"],
            throughput_unit="elements/s",
            ratio_to_floor=None,
            peak_mem_bytes=None,
            mem_method=None,
        )
        rows.append(row)
    return rows


def ensure_importable() -> None:
    """Make ``lpc_fast`` importable from a checkout without installation."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/harness.py import-op OP.json --device cuda [--results-dir DIR]``: append the rows
    of a ``bench_op.py --json`` file to the results of this machine's device."""
    import argparse

    ap = argparse.ArgumentParser(description="append bench_op.py JSON rows to the results files")
    ap.add_argument("command", choices=["import-op"])
    ap.add_argument("path")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    with open(args.path) as fh:
        rows = op_rows(json.load(fh), environment(args.device))
    for path in append_results(rows, args.results_dir):
        print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
