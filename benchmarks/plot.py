"""Figures of the benchmark results, one set per device (devices are never mixed in one figure).

Usage::

    python benchmarks/plot.py [--results-dir benchmarks/results] [--out DIR] [FILE.jsonl ...]

For each results file (``<device-kind>.jsonl``) and each device name in it, the latest run of each
configuration is drawn:

``<kind>_op.png``     op level: median time per step against the number of latents, per provider
``<kind>_loop.png``   inference loop: decoder gradient evaluations/s per provider, one panel per
                      (model, T), with ``floor / provider`` above each bar
``<kind>_train.png``  training step: steps/s per provider and the LPC step's fraction outside the decoder
``<kind>_sampler.png`` sampler update: median time per update against the number of latents, per provider,
                      one panel per (tensors, threads)

A file holding several device names (e.g. two CPU models under ``cpu``) gets one set per name, suffixed
with the name.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def latest(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """The most recent row of each distinct ``key`` (by timestamp, then file order)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = tuple(r.get(f) for f in key)
        if k not in best or str(r.get("timestamp", "")) >= str(best[k].get("timestamp", "")):
            best[k] = r
    return list(best.values())


def _title(rows: list[dict[str, Any]], what: str) -> str:
    r = rows[0]
    return (
        f"{what}: {r.get('device_name')} ({r.get('device')}), torch {r.get('torch')}, "
        f"git {r.get('git')}, {r.get('threads')} threads"
    )


def plot_op(rows: list[dict[str, Any]], path: str) -> bool:
    rows = latest([r for r in rows if r.get("level") == "op"], ("provider", "n", "dtype"))
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for provider in sorted({r["provider"] for r in rows}):
        pts = sorted((r["n"], r["median_s"]) for r in rows if r["provider"] == provider)
        ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], marker="o", label=provider)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("latents per step (elements)")
    ax.set_ylabel("median time per step (µs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(_title(rows, "Langevin step"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_loop(rows: list[dict[str, Any]], path: str) -> bool:
    rows = latest([r for r in rows if r.get("level") == "loop"], ("model", "T", "batch", "provider"))
    if not rows:
        return False
    configs = sorted({(r["model"], r["T"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 4.2), squeeze=False)
    for ax, (model, steps, batch) in zip(axes[0], configs):
        sub = [r for r in rows if (r["model"], r["T"], r["batch"]) == (model, steps, batch)]
        sub.sort(key=lambda r: r["throughput"])
        names = [r["provider"] for r in sub]
        values = [r["throughput"] for r in sub]
        colors = ["0.55" if n == "floor" else "C0" if n.startswith("fused") else "C1" for n in names]
        bars = ax.barh(names, values, color=colors)
        for bar, r in zip(bars, sub):
            ratio = r.get("ratio_to_floor")
            if ratio is not None and r["provider"] != "floor":
                ax.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    f" {100 * ratio:.0f}%",
                    va="center",
                    fontsize=8,
                )
        ax.set_xlabel("decoder gradient evaluations / s")
        ax.set_title(f"{model}, T = {steps}, batch {batch}", fontsize=9)
        ax.margins(x=0.2)
    fig.suptitle(_title(rows, "Inference loop (% = floor / provider)"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_train(rows: list[dict[str, Any]], path: str) -> bool:
    rows = latest([r for r in rows if r.get("level") == "train"], ("model", "batch", "provider"))
    rows = [r for r in rows if r["provider"] != "decoder_floor"]
    if not rows:
        return False
    rows.sort(key=lambda r: r["throughput"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [f"{r['provider']} ({r['model']})" for r in rows]
    bars = ax1.barh(names, [r["throughput"] for r in rows], color="C0")
    for bar, r in zip(bars, rows):
        ax1.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {r['throughput']:.1f}",
            va="center",
            fontsize=8,
        )
    ax1.set_xlabel("training steps / s")
    ax1.margins(x=0.15)
    lpc = [r for r in rows if r.get("outside_decoder_fraction") is not None]
    ax2.barh(
        [f"{r['provider']} ({r['model']})" for r in lpc],
        [100 * r["outside_decoder_fraction"] for r in lpc],
        color="C1",
    )
    ax2.axvline(10, color="k", ls="--", lw=1)
    ax2.set_xlabel("% of the LPC step outside the decoder fwd/bwd")
    ax2.set_title("dashed: the 10% target", fontsize=8)
    fig.suptitle(_title(rows, f"Training step (LPC T = {lpc[0]['T'] if lpc else '?'})"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_sampler(rows: list[dict[str, Any]], path: str) -> bool:
    rows = latest([r for r in rows if r.get("level") == "sampler"], ("provider", "n", "tensors", "threads"))
    if not rows:
        return False
    panels = sorted({(r["tensors"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (tensors, threads) in zip(axes[0], panels):
        sub = [r for r in rows if (r["tensors"], r["threads"]) == (tensors, threads)]
        for provider in dict.fromkeys(r["provider"] for r in sub):
            pts = sorted((r["n"], r["median_s"]) for r in sub if r["provider"] == provider)
            style = "--" if provider == "floor" else "-"
            ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], style, marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("latents in all tensors")
        ax.set_ylabel("median time per update (µs)")
        ax.set_title(f"{tensors} tensor(s), {threads} thread(s)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(rows, "Sampler update"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_file(path: str, out_dir: str) -> list[str]:
    """All figures of one results file; returns the PNG paths written."""
    rows = harness.read_results(path)
    kind = os.path.basename(path)[: -len(".jsonl")]
    names = sorted({r.get("device_name") for r in rows}, key=str)
    written = []
    for name in names:
        sub = [r for r in rows if r.get("device_name") == name]
        suffix = "" if len(names) == 1 else "_" + re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
        for level, fn in (
            ("op", plot_op),
            ("loop", plot_loop),
            ("train", plot_train),
            ("sampler", plot_sampler),
        ):
            png = os.path.join(out_dir, f"{kind}{suffix}_{level}.png")
            if fn(sub, png):
                written.append(png)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="results files (default: every *.jsonl in --results-dir)")
    ap.add_argument("--results-dir", default=harness.RESULTS_DIR)
    ap.add_argument("--out", default=None, help="where to write the PNGs (default: --results-dir)")
    args = ap.parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(args.results_dir, "*.jsonl")))
    out_dir = args.out or args.results_dir
    os.makedirs(out_dir, exist_ok=True)
    if not files:
        print(f"no results files in {args.results_dir}")
        return 1
    for path in files:
        for png in plot_file(path, out_dir):
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
