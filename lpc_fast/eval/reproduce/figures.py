"""Figures of a reproduction run (matplotlib, Agg backend: no display needed).

* ``curves_steps.png``, ``curves_decoder_evals.png``, ``curves_wallclock.png``: the validation NLL and
  Fréchet distance of every headline and ablation method against SGD steps, decoder gradient evaluations
  and training time (mean ± standard error bands over seeds; the test split is not used along the
  way);
* ``step_size_pilot.png``: the pilot's validation NLL against the Langevin step size, per sampler;
* ``step_size_sweep.png``: final test NLL against the Langevin step size over the robustness sweep;
* ``samples.png``: one grid of model samples per method (first seed), built with
  :func:`lpc_fast.train.images.image_grid`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .claims import metric_values, runs_of
from .stats import mean_se

__all__ = ["plot_curves", "plot_samples", "plot_step_size", "write_all"]

#: (x key in an evaluation record, axis label, file name)
CURVE_AXES = (
    ("step", "SGD steps", "curves_steps.png"),
    ("decoder_grad_evals", "decoder gradient evaluations (per data point)", "curves_decoder_evals.png"),
    ("elapsed", "training time (s)", "curves_wallclock.png"),
)
_DPI = 80


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _pointwise_mean_se(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over runs at each evaluation index (as many runs as reach that index)."""
    length = max(len(r) for r in rows)
    mean, se = np.full(length, np.nan), np.zeros(length)
    for i in range(length):
        vals = np.array([r[i] for r in rows if i < len(r) and math.isfinite(r[i])], dtype=float)
        if vals.size:
            mean[i] = vals.mean()
            se[i] = vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else 0.0
    return mean, se


def _series(runs: list[dict[str, Any]], x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = [[float(e[x_key]) for e in r["evals"]] for r in runs]
    ys = [[float(e[metric]) if e.get(metric) is not None else math.nan for e in r["evals"]] for r in runs]
    x, _ = _pointwise_mean_se(xs)
    y, se = _pointwise_mean_se(ys)
    return x, y, se


def plot_curves(results: dict[str, Any], x_key: str, x_label: str, path: str | os.PathLike[str]) -> Path:
    """Validation NLL and Fréchet distance of every headline / ablation cell against ``x_key``; one PNG.

    Parameters
    ----------
    results : dict
        A reproduction's ``results.json`` content.
    x_key : {"step", "decoder_grad_evals", "elapsed"}
        The evaluation-record field on the x axis (averaged over seeds at each evaluation point).
    x_label : str
    path : path
        Output PNG.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    cells = [c for c in results["cells"] if c["group"] in ("headline", "ablation")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, cell in enumerate(cells):
        runs = [r for r in results["runs"] if r["cell"] == cell["name"] and r["evals"]]
        if not runs:
            continue
        color = cmap(i % 10)
        for ax, metric in zip(axes, ("val_nll", "val_fid")):
            x, y, se = _series(runs, x_key, metric)
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            style = "--" if cell["name"].endswith("_ula") else "-"
            ax.plot(x[ok], y[ok], style, color=color, lw=1.4, label=cell["label"])
            ax.fill_between(x[ok], (y - se)[ok], (y + se)[ok], color=color, alpha=0.2, lw=0)
    sizes = results.get("eval_sizes", {})
    axes[0].set_ylabel(f"validation NLL (nats, K={sizes.get('cheap_is_samples', '?')})")
    axes[1].set_ylabel(f"Fréchet distance to validation ({sizes.get('cheap_generated', '?')} samples)")
    for ax in axes:
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if x_key != "step":
            ax.set_xscale("log")
    _clip_top(axes[0])
    _clip_top(axes[1])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{results['dataset']['name']}: mean ± s.e. over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return _save(fig, path)


def _clip_top(ax: Any) -> None:
    """Keep the interesting range visible: the untrained model's first points can be far above."""
    ys = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), dtype=float) if math.isfinite(y)]
    if len(ys) > 4:
        lo, hi = float(np.min(ys)), float(np.percentile(ys, 90))
        if hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.3 * (hi - lo))


def plot_step_size(
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[int]]],
    path: str | os.PathLike[str],
    *,
    ylabel: str = "final test NLL (nats)",
    title: str = "",
) -> Path:
    """Final metric against the Langevin step size (log x), one line per setting.

    Parameters
    ----------
    series : dict
        ``label -> (step sizes, means, standard errors, diverged counts)``, one value per step size (NaN
        means where every run diverged; those points are marked with an ``x`` at the top of the axis).
    path : path
        Output PNG.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    finite_all = []
    for _, mean, _, _ in series.values():
        finite_all += [m for m in mean if math.isfinite(m)]
    top = max(finite_all) if finite_all else 1.0
    for label, (step_sizes, mean, se, diverged) in series.items():
        eta = np.asarray(step_sizes, dtype=float)
        m = np.asarray(mean, dtype=float)
        s = np.nan_to_num(np.asarray(se, dtype=float))
        line = ax.errorbar(eta, m, yerr=s, marker="o", capsize=3, label=label)
        bad = [e for e, d in zip(eta, diverged) if d > 0]
        if bad:
            ax.plot(bad, [top] * len(bad), "x", color=line[0].get_color(), ms=9, mew=2)
    ax.set_xscale("log")
    ax.set_xlabel("Langevin step size η")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    any_bad = any(d > 0 for _, _, _, div in series.values() for d in div)
    ax.legend(fontsize=8, title="x: some runs diverged" if any_bad else None, title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_samples(grids: dict[str, np.ndarray], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Tile per-method sample grids (uint8 images from :func:`lpc_fast.train.images.image_grid`).

    Parameters
    ----------
    grids : dict
        ``label -> array [H, W]`` (grey) or ``[H, W, 3]``.
    path : path
        Output PNG.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    n = max(1, len(grids))
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.7 * ncol, 2.9 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, img) in zip(axes.flat, grids.items()):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(_wrap(label), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _wrap(label: str, width: int = 34) -> str:
    words, lines, cur = label.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    return "\n".join(lines)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def write_all(results: dict[str, Any], grids: dict[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Write every figure of a reproduction into ``out``; return their paths.

    Parameters
    ----------
    results : dict
        ``results.json`` content (with ``summary`` and ``claims``).
    grids : dict
        ``cell name -> Tensor [N, C, H, W]`` of model samples in ``[0, 1]`` (may be empty).
    out : path
        Output directory.
    """
    from lpc_fast.train.images import image_grid

    from .plan import sweep_cell_name

    out = Path(out)
    paths = [plot_curves(results, key, label, out / name) for key, label, name in CURVE_AXES]
    cfg = results["config"]
    names = {c["name"] for c in results["cells"]}

    pilot = results.get("pilot")
    if pilot:
        series = {
            sampler: (
                [r["step_size"] for r in rows],
                [r["val_nll"] if r["val_nll"] is not None else math.nan for r in rows],
                [0.0] * len(rows),
                [r["diverged"] for r in rows],
            )
            for sampler, rows in pilot.items()
        }
        paths.append(
            plot_step_size(
                series,
                out / "step_size_pilot.png",
                ylabel="best validation NLL (nats)",
                title=f"{results['dataset']['name']}: step-size pilot (LPC, encoder init, Jeffreys)",
            )
        )

    chosen = cfg.get("chosen_step_sizes") or {}
    if chosen and all(sweep_cell_name(p, f) in names for p in (True, False) for f in cfg["sweep_factors"]):
        series = {}
        for pre, key in ((True, "preconditioned"), (False, "ula")):
            etas, means, ses, div = [], [], [], []
            for f in cfg["sweep_factors"]:
                cell = sweep_cell_name(pre, f)
                m, s, _ = mean_se(metric_values(results, cell, "nll_nats", penalise=False))
                etas.append(chosen[key] * f)
                means.append(m)
                ses.append(s if math.isfinite(s) else 0.0)
                div.append(sum(r["diverged"] for r in runs_of(results, cell)))
            series["preconditioned" if pre else "ULA (no preconditioning)"] = (etas, means, ses, div)
        paths.append(
            plot_step_size(
                series,
                out / "step_size_sweep.png",
                title=f"{results['dataset']['name']}: LPC (encoder init, Jeffreys), mean ± s.e.",
            )
        )

    if grids:
        labels = {c["name"]: c["label"] for c in results["cells"]}
        tiles = {labels.get(k, k): image_grid(v, min_size=16) for k, v in grids.items()}
        paths.append(
            plot_samples(tiles, out / "samples.png", title="Model samples (likelihood means), seed 0")
        )
    return paths
