"""Training-step time of two checkouts side by side (alternating processes, one thread).

Usage::

    python benchmarks/compare_checkouts.py --base ../base --new . [--model mlp|conv] [--rounds 3]
        [--steps 30] [--provider lpc_fused]

Each checkout must have its own ``.venv`` (``make setup`` there). Every round runs one process per
checkout, base first, each timing ``--steps`` calls of ``train_step`` (after two warm-up steps) of
``bench_train.make_trainer(provider, ...)`` from that checkout (the digits MLP setup, or ``--model conv``:
the beta-VAE conv network on shapes32). Reported per round: the median wall time and the median
process CPU time per step, and their ratios base / new. On a shared machine the CPU time is the steadier
figure (another process's load stretches wall time, not this process's CPU time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import argparse, os, statistics, sys, time
root, model, steps, provider = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, os.path.join(root, "benchmarks"))
sys.path.insert(0, root)
import torch
torch.set_num_threads(1)
import bench_train
args = argparse.Namespace(device="cpu", model=model, encoder=True, fused_adam=True, T=20, batch=64,
                          quick=False, dataset="shapes32" if model == "conv" else None)
trainer = bench_train.make_trainer(provider, args, bench_train.make_data(args))
trainer.train_step()
trainer.train_step()
wall, cpu = [], []
for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    trainer.train_step()
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - t)
print("RESULT", statistics.median(wall), statistics.median(cpu))
"""


def run_one(root: str, model: str, steps: int, provider: str) -> tuple[float, float]:
    """Median wall and CPU seconds per step of ``root``'s trainer (in that checkout's venv)."""
    python = os.path.join(root, ".venv", "bin", "python")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [python, "-c", _CHILD, root, model, str(steps), provider],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{root}: the timing process failed:\n{proc.stderr[-3000:]}")
    _, wall, cpu = lines[-1].split()
    return float(wall), float(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the reference checkout (with .venv)")
    ap.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--model", choices=["mlp", "conv"], default="mlp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--provider", default="lpc_fused")
    a = ap.parse_args(argv)
    base, new = os.path.abspath(a.base), os.path.abspath(a.new)
    print(f"{a.provider}, {a.model} model, {a.steps} steps per process, 1 thread; base {base}, new {new}")
    print()
    print("| round | base wall | new wall | wall ratio | base CPU | new CPU | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for r in range(1, a.rounds + 1):
        bw, bc = run_one(base, a.model, a.steps, a.provider)
        nw, nc = run_one(new, a.model, a.steps, a.provider)
        ratios.append(bc / nc)
        print(
            f"| {r} | {bw * 1e3:.1f} ms | {nw * 1e3:.1f} ms | {bw / nw:.2f}x "
            f"| {bc * 1e3:.1f} ms | {nc * 1e3:.1f} ms | {bc / nc:.2f}x |"
        )
    print()
    print(f"median CPU-time ratio base / new: {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
