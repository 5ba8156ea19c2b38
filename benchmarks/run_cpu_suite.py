"""The CPU benchmark suite (``make bench``): op, inference loop and training step, then plots and tables.

Usage::

    python benchmarks/run_cpu_suite.py [--threads 1] [--results-dir benchmarks/results] [--quick]
                                       [--levels op loop train sampler]

Runs each level as its own process (``bench_op.py``, ``bench_loop.py``, ``bench_train.py``,
``bench_sampler.py``) with a time
budget that keeps the whole suite within about 10 minutes on a 2-core machine, appends the rows to
``<results-dir>/cpu.jsonl`` and ``cpu.csv`` (op rows are stamped with the same environment keys as the
others), draws ``cpu_*.png`` with ``plot.py`` and writes the markdown tables to ``cpu_tables.md``.

``--threads`` (default 1) sets torch's thread count in every level: the paper-sized models are too small
to gain from a second thread, and on a shared 2-core machine a second OpenMP thread that is descheduled
stalls every parallel region. ``--quick`` is a smoke test (tiny models, a few rounds, no compile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, bench_loop arguments, timeout in seconds). Conv at T = 300 costs 13-25 s per chain per provider
# on one (shared) core, so it runs three providers for two rounds after one warm-up chain each.
LOOP_RUNS = [
    ("mlp", ["--models", "mlp", "--T", "20", "300", "--budget", "25"], 300),
    ("conv T=20", ["--models", "conv", "--T", "20", "--budget", "20"], 240),
    (
        "conv T=300",
        ["--models", "conv", "--T", "300", "--providers", "floor", "handwritten", "fused"]
        + ["--budget", "0", "--min-rounds", "2", "--max-rounds", "2"],
        300,
    ),
]
QUICK_LOOP_RUNS = [
    ("quick", ["--quick", "--providers", "floor", "handwritten", "reference", "fused", "fused_loop"], 120),
]
OP_SIZES = ["1024", "2560", "16384", "262144", "1048576", "4194304"]


def _run(label: str, args: list[str], timeout: int, threads: int) -> bool:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = harness.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    print(f"\n=== {label}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], env=env, timeout=timeout, cwd=harness.ROOT)
        ok = proc.returncode == 0
        why = f"rc={proc.returncode}"
    except subprocess.TimeoutExpired:
        ok, why = False, f"timed out after {timeout}s"
    print(
        f"=== {label}: {'ok' if ok else 'FAILED (' + why + ')'} in {time.perf_counter() - start:.0f}s",
        flush=True,
    )
    return ok


def op_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: median time per step and speed-up of the fused kernel over eager, per size."""
    sizes = sorted({r["n"] for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    by = {(r["provider"], r["n"]): r for r in rows}
    body = []
    for n in sizes:
        line: list[Any] = [n]
        for p in providers:
            r = by.get((p, n))
            line.append("" if r is None else f"{harness.fmt_seconds(r['median_s'])} ({r['gbps']:.1f} GB/s)")
        if ("cpu", n) in by and ("eager", n) in by:
            line.append(f"{by[('eager', n)]['median_s'] / by[('cpu', n)]['median_s']:.1f}x")
        else:
            line.append("")
        body.append(line)
    header = ["latents", *[f"{p} median (GB/s)" for p in providers], "cpu vs eager"]
    return "One fused Langevin step (bench_op.py)\n\n" + harness.markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results-dir", default=harness.RESULTS_DIR)
    levels = ["op", "loop", "train", "sampler"]
    ap.add_argument("--levels", nargs="+", default=levels, choices=levels)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny configurations (~1 minute)")
    args = ap.parse_args(argv)
    results = os.path.abspath(args.results_dir)
    os.makedirs(results, exist_ok=True)
    harness.set_threads(args.threads)
    env = harness.environment("cpu")
    start = time.perf_counter()
    ok = True
    sections: list[str] = []
    common = ["--device", "cpu", "--results-dir", results]
    with tempfile.TemporaryDirectory() as tmp:
        if "op" in args.levels:
            path = os.path.join(tmp, "op.json")
            sizes = ["1024", "16384"] if args.quick else OP_SIZES
            budget = ["--budget", "0.2", "--reps", "3"] if args.quick else ["--budget", "4", "--reps", "25"]
            providers = ["--providers", "eager", "cpu", "copy"] if args.quick else []
            cmd = [
                os.path.join(HERE, "bench_op.py"),
                "--device",
                "cpu",
                "--sizes",
                *sizes,
                *budget,
                *providers,
            ]
            if _run("op", [*cmd, "--json", path], 90 if args.quick else 150, args.threads) and os.path.exists(
                path
            ):
                with open(path) as fh:
                    rows = harness.op_rows(json.load(fh), env)
                harness.append_results(rows, results)
                sections.append(op_table(rows))
            else:
                ok = False
        if "loop" in args.levels:
            for i, (label, extra, timeout) in enumerate(QUICK_LOOP_RUNS if args.quick else LOOP_RUNS):
                md = os.path.join(tmp, f"loop{i}.md")
                cmd = [os.path.join(HERE, "bench_loop.py"), *common, "--threads", str(args.threads), *extra]
                if _run(f"loop {label}", [*cmd, "--markdown", md], timeout, args.threads) and os.path.exists(
                    md
                ):
                    with open(md) as fh:
                        sections.append("Inference loop (bench_loop.py)\n" + fh.read())
                else:
                    ok = False
        if "train" in args.levels:
            runs = [("train", [])] if args.quick else [("train", []), ("train no encoder", ["--no-encoder"])]
            for i, (label, flags) in enumerate(runs):
                md = os.path.join(tmp, f"train{i}.md")
                extra = [
                    "--quick",
                    "--providers",
                    "decoder_floor",
                    "lpc_reference",
                    "lpc_fused",
                    "lpc_loop",
                    "vae",
                ]
                cmd = [os.path.join(HERE, "bench_train.py"), *common, "--threads", str(args.threads), *flags]
                cmd += extra if args.quick else ["--budget", "20"]
                if _run(
                    label, [*cmd, "--markdown", md], 120 if args.quick else 200, args.threads
                ) and os.path.exists(md):
                    with open(md) as fh:
                        sections.append(fh.read())
                else:
                    ok = False
        if "sampler" in args.levels:
            # Its own thread settings (one thread and every core): the update's scaling is what it measures.
            md = os.path.join(tmp, "sampler.md")
            cmd = [os.path.join(HERE, "bench_sampler.py"), "--results-dir", results, "--markdown", md]
            cmd += ["--quick"] if args.quick else []
            if _run("sampler", cmd, 120 if args.quick else 600, args.threads) and os.path.exists(md):
                with open(md) as fh:
                    sections.append(fh.read())
            else:
                ok = False
    ok = _run("plot", [os.path.join(HERE, "plot.py"), "--results-dir", results], 120, args.threads) and ok
    command = "python benchmarks/run_cpu_suite.py" + (" --quick" if args.quick else "")
    if args.threads != 1:
        command += f" --threads {args.threads}"
    header = (
        f"# CPU benchmark tables\n\n`{command}` on {env['device_name']}, {args.threads} thread(s), "
        f"torch {env['torch']}, triton {env['triton']}, SIMD {env['simd']}, git {env['git']}, "
        f"{env['timestamp']}. Medians over interleaved rounds; p20/p80 in benchmarks/results/cpu.jsonl.\n"
    )
    tables = header + "\n" + "\n\n".join(sections) + "\n"
    with open(os.path.join(results, "cpu_tables.md"), "w") as fh:
        fh.write(tables)
    print("\n" + tables)
    print(f"suite {'finished' if ok else 'FAILED in part'} in {time.perf_counter() - start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
