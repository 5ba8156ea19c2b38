"""The runner: trains every (cell, seed) in parallel worker processes, checkpointing into ``results.json``.

A reproduction runs in three phases (see :mod:`lpc_fast.eval.reproduce.plan` for the protocol): the
step-size pilot, the main cells, and the equal-compute retraining. After every finished run the whole
``results.json`` is rewritten atomically (temporary file, then rename), with ``"status": "running"``; a
stopped run is continued with ``resume=True`` (``lpc-fast reproduce --resume``), which reuses every
finished run whose cell, seed and training configuration match and trains only the rest. Runs are
deterministic given their seed and code, so a resumed reproduction gives the same numbers as an
uninterrupted one (apart from wall-clock measurements).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .common import finite, json_clean
from .plan import (
    COST_COUNTERS,
    SAMPLERS,
    TIME_MEASURES,
    CellSpec,
    ReproConfig,
    build_cells,
    build_equal_cells,
    build_pilot_cells,
    config_from_dict,
    split_validation,
    time_measure,
)

__all__ = [
    "GRIDS_FILE",
    "RESULTS_FORMAT",
    "ReproError",
    "choose_step_sizes",
    "rebuild_report",
    "run_reproduction",
    "write_json_atomic",
]

RESULTS_FORMAT = 2
RESULTS_FILE = "results.json"
#: Sample grids of the first seed of each headline / ablation cell (tensors), kept beside ``results.json``.
GRIDS_FILE = "sample_grids.pt"
#: Config fields that may differ between a stopped run and its resumption (scheduling and selection only:
#: a finished run stays valid).
RESUME_FREE_FIELDS = ("jobs", "threads", "cells")


class ReproError(ValueError):
    """A reproduction that cannot start or be rebuilt as asked (the message says why and what to do)."""


# ---------------------------------------------------------------------------------------------------
# One run: train a cell for one seed with validation evaluations, early stopping and test evaluations
# ---------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def model_widths(cfg: ReproConfig) -> dict[str, Any]:
    """The :class:`lpc_fast.models.ModelConfig` width overrides of a reproduction (empty: defaults)."""
    out: dict[str, Any] = {}
    if cfg.conv_channels is not None:
        out["conv_channels"] = tuple(int(c) for c in cfg.conv_channels)
    if cfg.conv_hidden is not None:
        out["conv_hidden"] = int(cfg.conv_hidden)
    return out


def _load_splits(dataset: str, validation_fraction: float) -> tuple[Any, Any, Any, dict[str, Any]]:
    from lpc_fast.data import load_dataset

    train = load_dataset(dataset, "train")
    test = load_dataset(dataset, "test")
    fit, val, info = split_validation(train, validation_fraction)
    return fit, val, test, info


def _worker_init(context: dict[str, Any]) -> None:
    """Per-process state: threads, the splits and the shared feature space (passed in, never retrained)."""
    torch.set_num_threads(context["threads"])
    fit, val, test, _ = _load_splits(context["dataset"], context["validation_fraction"])
    fs = context["feature_space"]
    _WORKER.clear()
    _WORKER.update(
        context=context,
        fit=fit,
        val=val,
        test=test,
        feature_space=fs,
        val_features=fs.features(val.images[: context["cheap_generated"]]),
    )


def _model_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@torch.no_grad()
def _generate(model: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    for start in range(0, n, 200):
        s = model.sample(min(200, n - start), gen)
        out.append(s.detach().float().cpu())
    return torch.cat(out).clamp_(0.0, 1.0)


@torch.no_grad()
def _validation_eval(model: Any, seed: int) -> dict[str, float | None]:
    """Validation NLL with a small K (encoder proposal) and, with ``curve_fid``, the Fréchet distance of a
    few samples to validation images (None without)."""
    from lpc_fast.eval.likelihood import gaussian_proposal, importance_log_likelihood
    from lpc_fast.eval.quality import frechet_distance

    ctx = _WORKER["context"]
    val = _WORKER["val"]
    model.eval()
    try:
        gen = torch.Generator().manual_seed(1_000_003 + seed)  # the same noise at every eval point
        device = next(model.parameters()).device
        x_all = val.images[: ctx["cheap_eval_points"]].to(device)
        logpx = []
        for start in range(0, x_all.shape[0], 100):
            x = x_all[start : start + 100]
            mu, log_sigma = model.encode(x)
            lp, _ = importance_log_likelihood(
                model.log_joint,
                gaussian_proposal(mu, log_sigma),
                x,
                num_samples=ctx["cheap_is_samples"],
                batch_size=min(ctx["cheap_is_samples"], 64),
                generator=gen,
            )
            logpx.append(lp)
        nll = -torch.cat(logpx).mean().item()
        fid = None
        if ctx["curve_fid"]:
            fake = _generate(model, ctx["cheap_generated"], gen)
            ff = _WORKER["feature_space"].features(fake)
            fid = (
                frechet_distance(_WORKER["val_features"], ff) if bool(torch.isfinite(ff).all()) else math.nan
            )
    finally:
        model.train()
    return {"val_nll": nll, "val_fid": fid}


def _test_eval(model: Any, seed: int) -> dict[str, Any]:
    """The full :func:`lpc_fast.eval.evaluate_model` on the test split."""
    from lpc_fast.eval.evaluate import evaluate_model

    ctx = _WORKER["context"]
    model.eval()
    try:
        metrics = evaluate_model(
            model,
            _WORKER["test"],
            num_is_samples=ctx["num_is_samples"],
            num_eval_points=ctx["num_eval_points"],
            num_generated=ctx["num_generated"],
            feature_space=_WORKER["feature_space"],
            generator=torch.Generator().manual_seed(2_000_003 + seed),
            batch_size=100,
            is_batch_size=min(ctx["num_is_samples"], 50),
        )
    finally:
        model.train()
    return metrics


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one (cell, seed); return its record (plus a sample grid tensor when asked for)."""
    from lpc_fast.train import TrainConfig, TrainingFault, make_trainer

    wall_start = time.perf_counter()
    cfg = TrainConfig.from_dict(task["train_config"])
    trainer = make_trainer(cfg, _WORKER["fit"])
    seed = cfg.seed
    cap = cfg.steps
    eval_every = task["eval_every"]
    patience = _WORKER["context"]["patience"]
    early = task["early_stopping"]
    test_steps = set(task["test_steps"]) if task["test_eval"] else set()
    evals: list[dict[str, Any]] = []
    full: dict[str, Any] = {}
    losses: list[float] = []
    best: dict[str, Any] = {"val_nll": math.inf, "step": 0}
    best_state = None
    since_best = 0

    # The time axis: CPU seconds of a single-threaded CPU worker (robust to other work sharing the
    # cores, equal to its wall clock on an idle machine), else the wall clock of the training steps.
    cpu_time = _WORKER["context"].get("time_measure") == "cpu"

    def train_time() -> float:
        return trainer.cpu_elapsed if cpu_time else trainer.elapsed

    def record(loss: float | None) -> dict[str, Any]:
        point = {
            "step": trainer.step,
            "decoder_grad_evals": trainer.decoder_grad_evals,
            "elapsed": train_time(),
            "wall_elapsed": trainer.elapsed,
            "train_loss": loss,
        }
        point.update(_validation_eval(trainer.model, seed))
        evals.append(point)
        return point

    def consider(point: dict[str, Any]) -> None:
        nonlocal best, best_state, since_best
        if finite(point["val_nll"]) and point["val_nll"] < best["val_nll"]:
            best = {k: point[k] for k in ("step", "decoder_grad_evals", "elapsed", "val_nll")}
            best_state = _snapshot(trainer.model) if early else None
            since_best = 0
        else:
            since_best += 1

    consider(record(None))
    stop_reason = "cap"
    fault = None
    while trainer.step < cap:
        try:
            metrics = trainer.train_step()
        except TrainingFault as exc:
            stop_reason, fault = "diverged", f"{type(exc).__name__}: {exc}"
            break
        losses.append(float(metrics["loss"]))
        if not math.isfinite(metrics["loss"]) or not _model_finite(trainer.model):
            stop_reason, fault = "diverged", "non-finite loss or parameters"
            break
        if trainer.step in test_steps and trainer.step != cap:
            full[str(trainer.step)] = _test_eval(trainer.model, seed)
        if trainer.step % eval_every == 0 or trainer.step == cap:
            consider(record(sum(losses) / len(losses)))
            losses.clear()
            if early and since_best >= patience and trainer.step < cap:
                stop_reason = "patience"
                break
    diverged = stop_reason == "diverged"
    stop_step = trainer.step + (1 if diverged else 0)  # the failing step
    final = None
    final_step = None
    if task["test_eval"] and not diverged:
        if stop_reason == "cap":
            full[str(trainer.step)] = _test_eval(trainer.model, seed)  # the cap is an equal-steps budget
        if not early or best["step"] == trainer.step:
            final_step = trainer.step
            final = full.get(str(trainer.step)) or _test_eval(trainer.model, seed)
        else:
            trainer.model.load_state_dict(best_state)  # the best validation state
            final_step = best["step"]
            final = _test_eval(trainer.model, seed)
    grid = None
    if task["want_grid"] and not diverged:
        grid = _generate(trainer.model, task["grid_samples"], torch.Generator().manual_seed(seed))
    return {
        "cell": task["cell"],
        "seed": seed,
        "train_config": task["train_config"],
        "steps_done": trainer.step,
        "stop_step": stop_step,
        "stop_reason": stop_reason,
        "hit_cap": stop_reason == "cap" and early,
        "fault": fault,
        "diverged": diverged,
        "diverged_at": stop_step if diverged else None,
        "best": best,
        "final_step": final_step,
        "decoder_grad_evals_per_step": trainer.decoder_grad_evals / max(trainer.step, 1),
        "train_seconds": train_time(),
        "train_wall_seconds": trainer.elapsed,
        "wall_seconds": time.perf_counter() - wall_start,
        "num_threads": torch.get_num_threads(),
        "evals": evals,
        "full_evals": full,
        "final": final,
        "_grid": grid,
    }


def _run_all(
    tasks: list[dict[str, Any]],
    context: dict[str, Any],
    jobs: int,
    on_done: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``tasks`` (longest first so that parallel workers finish together), calling ``on_done`` per run."""
    order = sorted(tasks, key=lambda t: -t["cost"])
    if not order:
        return
    if jobs <= 1:
        _worker_init(context)
        for task in order:
            on_done(_run_task(task))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker; forking a process that has used torch's thread pools is
    # not safe on every platform.
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(order)),
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(context,),
    ) as pool:
        futures = [pool.submit(_run_task, t) for t in order]
        for fut in as_completed(futures):
            on_done(fut.result())


# ---------------------------------------------------------------------------------------------------
# Step-size choice and equal-compute budgets (from finished runs)
# ---------------------------------------------------------------------------------------------------


def choose_step_sizes(cfg: ReproConfig, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pick each sampler's step size from the pilot runs: the lowest mean best validation NLL.

    A pilot run that diverged scores ``+inf`` (never chosen). Ties go to the smaller step size.

    Parameters
    ----------
    cfg : ReproConfig
    runs : sequence of dict
        Run records (only those of pilot cells are used).

    Returns
    -------
    dict
        ``{"chosen": {"preconditioned": eta, "ula": eta}, "table": {sampler: [{step_size, val_nll,
        diverged, n}, ...]}}``.

    Raises
    ------
    RuntimeError
        When a pilot run is missing or every step size of a sampler diverged.
    """
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_cell.setdefault(r["cell"], []).append(r)
    chosen: dict[str, float] = {}
    table: dict[str, list[dict[str, Any]]] = {}
    for cell in build_pilot_cells(cfg):
        sampler = SAMPLERS[0] if cell.precondition else SAMPLERS[1]
        got = by_cell.get(cell.name, [])
        if len(got) != len(cell.seeds):
            raise RuntimeError(f"pilot cell {cell.name}: {len(got)} of {len(cell.seeds)} runs finished")
        scores = [math.inf if r["diverged"] else float(r["best"]["val_nll"]) for r in got]
        score = sum(scores) / len(scores)
        table.setdefault(sampler, []).append(
            {
                "step_size": cell.step_size,
                "val_nll": score,
                "diverged": sum(r["diverged"] for r in got),
                "n": len(got),
                "best_steps": [r["best"]["step"] for r in got],
            }
        )
    for sampler, rows in table.items():
        ok = [row for row in rows if math.isfinite(row["val_nll"])]
        if not ok:
            raise RuntimeError(f"every pilot step size diverged for the {sampler} sampler")
        chosen[sampler] = min(ok, key=lambda row: (row["val_nll"], row["step_size"]))["step_size"]
    return {"chosen": chosen, "table": table}


def _cell_costs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per cell: mean cost per SGD step and mean cost at the best validation step, per counter."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if not r["diverged"]:
            by_cell.setdefault(r["cell"], []).append(r)
    costs: dict[str, dict[str, float]] = {}
    for cell, rs in by_cell.items():
        entry = {}
        for counter in COST_COUNTERS:
            total = {"decoder_grad_evals": "decoder_grad_evals_per_step", "elapsed": None}[counter]
            per_step = [
                r[total] if total else r["train_seconds"] / max(r["steps_done"], 1)
                for r in rs
                if r["steps_done"]
            ]
            entry[f"{counter}_per_step"] = sum(per_step) / len(per_step) if per_step else math.nan
            conv = [float(r["best"][counter]) for r in rs]
            entry[f"{counter}_converged"] = sum(conv) / len(conv) if conv else math.nan
        costs[cell] = entry
    return costs


# ---------------------------------------------------------------------------------------------------
# The whole reproduction
# ---------------------------------------------------------------------------------------------------


def _git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[3]
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as strict JSON to ``path`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(json_clean(obj), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_grids_atomic(path: Path, grids: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(grids, tmp)
    os.replace(tmp, path)


def _run_key(run_or_task: dict[str, Any]) -> str:
    """Identity of a run for ``--resume``: its cell and training configuration, thread count aside (a
    finished run stays valid whatever the thread count of the runs still to come)."""
    tc = {k: v for k, v in run_or_task["train_config"].items() if k != "num_threads"}
    return json.dumps([run_or_task["cell"], tc], sort_keys=True)


def _comparable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in RESUME_FREE_FIELDS and k != "chosen_step_sizes"}


def _tasks(cells: list[CellSpec], base: Any, cfg: ReproConfig) -> list[dict[str, Any]]:
    tasks = []
    for cell in cells:
        for i, seed in enumerate(cell.seeds):
            tc = dataclasses.replace(base, **cell.overrides, seed=seed, steps=cell.steps)
            tc.validate()
            passes = 1 if cell.overrides.get("method") == "vae" else tc.chain_length + 2
            tasks.append(
                {
                    "cell": cell.name,
                    "train_config": json_clean(tc.to_dict()),
                    "eval_every": cell.eval_every,
                    "early_stopping": cell.early_stopping,
                    "test_steps": list(cell.test_steps),
                    "test_eval": cell.test_eval,
                    "want_grid": i == 0 and cell.group in ("headline", "ablation"),
                    "grid_samples": cfg.grid_samples,
                    "cost": cell.steps * passes,
                }
            )
    return tasks


def run_reproduction(
    cfg: ReproConfig,
    out: str | os.PathLike[str],
    *,
    argv: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the pilot, the main cells and the equal-compute retraining; decide the claims; write artifacts.

    Parameters
    ----------
    cfg : ReproConfig
    out : path
        Output directory (created).
    argv : sequence of str, optional
        The command line, recorded in the results.
    log : callable, optional
        ``str -> None`` progress lines (default: stderr).
    resume : bool
        Continue the reproduction whose (partial) ``results.json`` is in ``out``: finished runs with the
        same cell, seed and training configuration are kept, the rest is trained. The configuration
        must match (except ``jobs``, ``threads`` and ``cells``). Without it, an existing
        ``results.json`` in ``out`` is an error.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    import lpc_fast
    from lpc_fast.eval.evaluate import make_feature_space
    from lpc_fast.models import ModelConfig
    from lpc_fast.train import TrainConfig
    from lpc_fast.train.base import resolve_device

    cfg.validate()
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    grids_path = out / GRIDS_FILE
    previous: dict[str, dict[str, Any]] = {}
    prior_seconds = 0.0
    grids: dict[str, torch.Tensor] = {}
    if results_path.exists():
        if not resume:
            raise FileExistsError(
                f"{results_path} exists: pass --resume to continue that reproduction, or choose another --out"
            )
        old = json.loads(results_path.read_text())
        mine, theirs = (
            _comparable_config(json_clean(dataclasses.asdict(cfg))),
            _comparable_config(old["config"]),
        )
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ReproError(
                f"--resume: the configuration differs from the one in {results_path} in: {', '.join(diff)}"
            )
        previous = {_run_key(r): r for r in old.get("runs", [])}
        prior_seconds = float(old.get("total_seconds") or 0.0)
        if grids_path.exists():
            grids = torch.load(grids_path, weights_only=True)
        say(f"resuming {results_path}: {len(previous)} finished run(s) kept")
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)

    fit, val, test, split_info = _load_splits(cfg.dataset, cfg.validation_fraction)
    arch = cfg.architecture
    if arch == "auto":
        arch = "conv" if fit.shape[1] == fit.shape[2] and fit.shape[1] >= 32 else "mlp"
    say(
        f"dataset {cfg.dataset}: {len(fit)} fit / {len(val)} validation / {len(test)} test images "
        f"{fit.shape}; model {arch}"
    )
    t0 = time.perf_counter()
    # One feature network for every run: computed (or loaded from the cache) once, shipped to workers.
    feature_space = make_feature_space(None, test)
    say(f"feature space {feature_space.name} ({time.perf_counter() - t0:.1f} s)")

    base = TrainConfig(
        dataset=cfg.dataset,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        device=cfg.device,
        backend=cfg.backend,
        num_threads=cfg.threads,
        model=ModelConfig(architecture=arch, **model_widths(cfg)),
    )
    device = resolve_device(cfg.device)
    context = {
        "dataset": cfg.dataset,
        "validation_fraction": cfg.validation_fraction,
        "threads": cfg.threads,
        "feature_space": feature_space,
        "patience": cfg.patience,
        "curve_fid": cfg.curve_fid,
        "cheap_is_samples": cfg.cheap_is_samples,
        "cheap_eval_points": min(cfg.cheap_eval_points, len(val)),
        "cheap_generated": min(cfg.cheap_generated, len(val)),
        "num_is_samples": cfg.num_is_samples,
        "num_eval_points": min(cfg.num_eval_points, len(test)),
        "num_generated": min(cfg.num_generated, len(test)),
        "time_measure": time_measure(device, cfg.threads),
    }
    git = _git_info()
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "status": "running",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv) if argv is not None else None,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "lpc_fast_version": str(lpc_fast.__version__),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "device": str(device),
        "backend": lpc_fast.describe_selection(device, cfg.backend),
        "num_threads": cfg.threads,
        "jobs": cfg.jobs,
        "time_measure": {
            "key": context["time_measure"],
            "description": TIME_MEASURES[context["time_measure"]],
        },
        "dataset": {
            "name": cfg.dataset,
            "shape": list(fit.shape),
            "num_levels": fit.num_levels,
            "num_train": len(fit) + len(val),
            "num_fit": len(fit),
            "num_validation": len(val),
            "num_test": len(test),
            "num_dims": fit.num_dims,
        },
        "validation_split": split_info,
        "architecture": arch,
        "feature_space": feature_space.name,
        "eval_sizes": {
            k: v
            for k, v in context.items()
            if k not in ("feature_space", "dataset", "threads", "patience", "curve_fid")
        },
        "config": json_clean(dataclasses.asdict(cfg)),
        "resumed_runs": 0,
        "cells": [],
        "runs": [],
    }
    runs: list[dict[str, Any]] = []
    all_cells: list[CellSpec] = []

    def checkpoint() -> None:
        order = {c.name: i for i, c in enumerate(all_cells)}
        runs.sort(key=lambda r: (order.get(r["cell"], len(order)), r["seed"]))
        results["cells"] = [json_clean(dataclasses.asdict(c)) for c in all_cells]
        results["runs"] = json_clean(runs)
        results["total_seconds"] = prior_seconds + time.perf_counter() - started
        write_json_atomic(results_path, results)

    def phase(name: str, cells: list[CellSpec]) -> None:
        all_cells.extend(cells)
        tasks = _tasks(cells, base, cfg)
        todo = []
        for task in tasks:
            done = previous.get(_run_key(task))
            if done is not None:
                runs.append(done)
                results["resumed_runs"] += 1
            else:
                todo.append(task)
        checkpoint()
        say(f"{name}: {len(cells)} cells, {len(tasks)} runs ({len(tasks) - len(todo)} already done)")
        count = [0]

        def on_done(run: dict[str, Any]) -> None:
            grid = run.pop("_grid", None)
            if grid is not None:
                grids[run["cell"]] = grid
                _save_grids_atomic(grids_path, grids)
            runs.append(json_clean(run))
            count[0] += 1
            checkpoint()
            _log_done(say, run, count[0], len(todo))

        _run_all(todo, context, cfg.jobs, on_done)

    def selected(cells: list[CellSpec]) -> list[CellSpec]:
        return [c for c in cells if not cfg.cells or c.name.startswith(tuple(cfg.cells))]

    main_names = selected(build_cells(cfg, None))
    needs_eta = any(c.precondition is not None for c in main_names)
    step_sizes = None
    if needs_eta:
        phase("step-size pilot (validation)", build_pilot_cells(cfg))
        choice = choose_step_sizes(cfg, runs)
        step_sizes = choice["chosen"]
        results["config"]["chosen_step_sizes"] = step_sizes
        results["pilot"] = choice["table"]
        say("chosen step sizes: " + ", ".join(f"{k} {v:g}" for k, v in step_sizes.items()))
    main_cells = selected(build_cells(cfg, step_sizes or {s: math.nan for s in SAMPLERS}))
    phase("main cells", main_cells)
    equal = build_equal_cells(main_cells, _cell_costs(runs))
    if equal:
        phase("equal-compute retraining", equal)

    results["status"] = "complete"
    results["total_seconds"] = prior_seconds + time.perf_counter() - started
    _finish(results, grids, out)
    say(f"wrote {results_path}, {out / 'REPORT.md'} and {len(results['figures'])} figures")
    return results


def _finish(results: dict[str, Any], grids: dict[str, Any], out: Path) -> None:
    """Summary, verdicts, figures and REPORT.md of a finished results dict; rewrite results.json."""
    from .claims import evaluate_claims, summarise
    from .figures import write_all
    from .report import write_report

    results["summary"] = summarise(results)
    results["claims"] = evaluate_claims(results)
    figures = write_all(results, grids, out)
    results["figures"] = [str(Path(p).name) for p in figures]
    write_json_atomic(out / RESULTS_FILE, results)
    (out / "REPORT.md").write_text(write_report(results))


def rebuild_report(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Recompute the summary, verdicts, figures and ``REPORT.md`` of a finished run directory.

    Uses ``results.json`` (and ``sample_grids.pt`` when present) without retraining anything, so the
    analysis can be revised and re-applied to a finished run.

    Parameters
    ----------
    out : path
        A directory written by :func:`run_reproduction`.

    Returns
    -------
    dict
        The updated results (also written back to ``results.json``).

    Raises
    ------
    FileNotFoundError
        When ``out`` has no ``results.json``.
    ReproError
        When the run there is not complete (continue it with ``resume=True`` first).
    """
    out = Path(out)
    results = json.loads((out / RESULTS_FILE).read_text())
    if results.get("format") != RESULTS_FORMAT:
        raise ReproError(
            f"{out / RESULTS_FILE} has results format {results.get('format')}; this version reads "
            f"format {RESULTS_FORMAT}"
        )
    if results.get("status") != "complete":
        raise ReproError(f"{out / RESULTS_FILE} is a partial run: continue it with --resume first")
    config_from_dict(results["config"]).validate()
    grids_path = out / GRIDS_FILE
    grids = torch.load(grids_path, weights_only=True) if grids_path.exists() else {}
    _finish(results, grids, out)
    return results


def _log_done(log: Callable[[str], None], run: dict[str, Any], i: int, total: int) -> None:
    final = run.get("final") or {}
    nll = final.get("nll_nats")
    if run["diverged"]:
        status = f"DIVERGED at step {run['diverged_at']}"
    else:
        status = f"test nll {nll:.2f}" if finite(nll) else f"val nll {run['best']['val_nll']:.2f}"
        status += f", best step {run['best']['step']}"
    log(
        f"[{i}/{total}] {run['cell']} seed {run['seed']}: {status}; stopped at {run['stop_step']} "
        f"({run['stop_reason']}), {run['wall_seconds']:.1f} s"
    )
