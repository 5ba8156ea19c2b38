"""A whole training run with its outputs: what ``lpc-fast train`` does.

Outputs (rank 0 only) in ``config.out``:

* ``config.json`` - the resolved :class:`TrainConfig`;
* ``metrics.jsonl`` - one JSON object per logging step (``step``, ``loss``, ``decoder_grad_evals``,
  ``seconds``, ``elapsed``, ``steps_per_s``, ...); on resume, records after the checkpoint's step are
  dropped so the file describes one trajectory;
* ``checkpoint.pt`` / ``checkpoint.prev.pt`` - see :mod:`lpc_fast.train.checkpoint`;
* ``samples.png`` / ``reconstructions.png`` - image grids at the end of the run.

SIGINT and SIGTERM are caught: the current step finishes, a checkpoint is written and the run stops
(``RunResult.interrupted``); ``--resume`` continues from it.

A numerical fault (:class:`~lpc_fast.train.faults.DivergenceError`, or
:class:`~lpc_fast.train.faults.NonFiniteError` under ``nonfinite_policy="raise"``) leaves the trainer
in the state before the failing step; that state is checkpointed and the error re-raised with the
checkpoint's path in ``error.checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpc_fast.train.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    LegacyCheckpointWarning,
    load_latest,
    save_checkpoint,
)
from lpc_fast.train.config import ConfigError, TrainConfig
from lpc_fast.train.distributed import DistContext, detect
from lpc_fast.train.faults import TrainingFault

__all__ = ["RESUMABLE_CHANGES", "RunResult", "run_training", "load_model", "checkpoint_payload"]

#: Fields that may differ between a checkpoint's config and a resumed run's: they change what is
#: recorded or how long the run lasts, not the trajectory (``backend`` and ``device`` may change the
#: floating-point rounding, so a bit-identical continuation needs them unchanged too; the
#: numerical-fault settings only act on a step that has a fault). ``loop_mode`` and ``fused_optimizer``
#: are not here: ``compile`` and fused Adam round differently from the defaults, so they shape it.
RESUMABLE_CHANGES = (
    "steps",
    "log_every",
    "checkpoint_every",
    "out",
    "png_samples",
    "device",
    "backend",
    "num_threads",
    "nonfinite_policy",
    "divergence_factor",
    "divergence_window",
)


@dataclass
class RunResult:
    """What a finished (or interrupted) run produced."""

    out: Path
    step: int
    interrupted: bool = False
    last_metrics: dict[str, Any] = field(default_factory=dict)
    samples_png: Path | None = None
    reconstructions_png: Path | None = None
    checkpoint: Path | None = None


class _StopFlag:
    """Remembers a SIGINT/SIGTERM so the loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to ``step`` (and drop a torn last line) after a resume."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("step", 0)) <= step:
            kept.append(line)
    _write_text_atomic(path, "".join(s + "\n" for s in kept))


def checkpoint_payload(trainer: Any, data_info: dict[str, Any]) -> dict[str, Any]:
    """The dict a checkpoint file holds: trainer state, config and what rebuilds the model.

    ``"decoder"`` is the decoder's own ``state_dict`` (for loading it into other code); its tensors
    are those of ``trainer["model"]``, which ``torch.save`` stores once.
    """
    import lpc_fast

    return {
        "decoder": trainer.model.decoder.state_dict(),
        "trainer": trainer.state_dict(),
        "config": trainer.config.to_dict(),
        "data": data_info,
        "versions": {"lpc_fast": str(lpc_fast.__version__), "torch": str(torch.__version__)},
    }


def load_model(
    state: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint dict (from :func:`~lpc_fast.train.checkpoint.load_checkpoint`)."""
    from lpc_fast.models import build_model

    config = TrainConfig.from_dict(state["config"])
    info = state["data"]
    model = build_model(config.model, tuple(info["shape"]), info["num_levels"])
    model.load_state_dict(state["trainer"]["model"])
    return model.to(device).eval(), config


def _check_resume_config(saved: TrainConfig, wanted: TrainConfig) -> None:
    a, b = saved.to_dict(), wanted.to_dict()
    for key in a:
        if key in RESUMABLE_CHANGES or a[key] == b[key]:
            continue
        raise ConfigError(
            key,
            f"differs from the checkpoint ({a[key]!r} there, {b[key]!r} here); a resumed run must keep "
            f"the settings that shape its trajectory (changeable: {', '.join(RESUMABLE_CHANGES)})",
        )


@torch.no_grad()
def write_images(trainer: Any, out: Path, n: int) -> tuple[Path, Path]:
    """``samples.png`` (prior samples, likelihood means) and ``reconstructions.png`` (data rows above
    their reconstructions: encoder mean, or the end of a Langevin chain for encoder-free models)."""
    from lpc_fast.train.images import save_image_grid
    from lpc_fast.train.lpc import make_sampler, run_langevin_chain

    model = trainer.model
    model.eval()
    gen = torch.Generator().manual_seed(trainer.config.seed)
    # Prior draws on the CPU generator, then decoded on the model's device (any device, same draws).
    z = torch.randn(n, trainer.latent_dim, generator=gen).to(trainer.device)
    samples = model.decode_mean(z).cpu()
    samples_png = save_image_grid(samples, out / "samples.png")
    nrow = max(1, math.ceil(math.sqrt(n)))
    half = max(1, nrow * max(1, (n // nrow) // 2))  # whole rows of data, each followed by its reconstructions
    x = trainer.images[:half]
    if getattr(model, "encoder", None) is not None:
        mu, _ = model.encode(x)
        recon = model.decode_mean(mu)
    else:
        z0 = torch.randn(x.shape[0], trainer.latent_dim, generator=gen).to(x.device)
        # A chain on the side: its own noise stream (offset 0 of a seed no training run uses here).
        with torch.enable_grad():
            chain = run_langevin_chain(
                model.energy,
                x,
                z0,
                trainer.config,
                lambda z: make_sampler(z, trainer.config, seed=trainer.config.seed ^ 0x5EED, offset=0),
            )
        recon = model.decode_mean(chain["z"])
    rows = []
    for start in range(0, half, nrow):  # alternate a row of data with the row of its reconstructions
        rows.extend([x[start : start + nrow].cpu(), recon[start : start + nrow].cpu()])
    grid = torch.cat(rows)
    recon_png = save_image_grid(grid, out / "reconstructions.png", nrow=nrow)
    model.train()
    return samples_png, recon_png


def run_training(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Any = None,
    dataset: Any = None,
) -> RunResult:
    """Train ``config`` end to end with outputs in ``config.out``.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``config.out``'s checkpoint (falls back to ``checkpoint.prev.pt`` if the newest
        is corrupt; starts fresh with a note if there is none). Without it an existing checkpoint is an
        error, so a run is never overwritten by accident.
    progress : bool
        Show a tqdm bar (rank 0).
    log : callable, optional
        ``str -> None`` for status lines (default: print to stderr on rank 0).
    dataset : ImageDataset, optional
        Use this instead of ``load_dataset(config.dataset, ...)``.

    Returns
    -------
    RunResult
    """
    from lpc_fast.train.factory import make_trainer

    config.validate()
    from lpc_fast.train.base import resolve_device

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)

    dist = detect(resolve_device(config.device))
    try:
        result = _run(
            config, dist, resume=resume, progress=progress, log=log, dataset=dataset, make=make_trainer
        )
        # Every rank reaches this point before any tears the group down: destroying it while a
        # peer still has gloo traffic in flight aborts that peer at exit.
        dist.barrier()
        return result
    finally:
        dist.shutdown()


def _run(config, dist: DistContext, *, resume, progress, log, dataset, make) -> RunResult:
    import lpc_fast

    out = Path(config.out)

    def say(msg: str) -> None:
        if dist.is_main:
            (log or (lambda s: print(s, file=sys.stderr, flush=True)))(msg)

    state = None
    resumed_from: Path | None = None
    if resume:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = load_latest(out)
        for w in caught:  # a corrupt newest checkpoint: say so plainly before falling back
            say(f"{'note' if issubclass(w.category, LegacyCheckpointWarning) else 'warning'}: {w.message}")
        if found is None:
            say(f"no checkpoint in {out}: starting a new run")
        else:
            state, path = found
            resumed_from = path
            saved = TrainConfig.from_dict(state["config"])
            _check_resume_config(saved, config)
            say(f"resuming from {path} at step {state['trainer']['step']}")
    elif (out / CHECKPOINT_NAME).exists() or (out / PREVIOUS_NAME).exists():
        raise ConfigError(
            "out", f"{out} already holds a checkpoint: pass --resume to continue it or choose another --out"
        )

    if dataset is None:
        from lpc_fast.data import load_dataset

        # The data do not depend on the training seed (procedural sets use their default seed).
        dataset = load_dataset(config.dataset, "train", root=config.data_root, download=config.download)
    trainer = make(config, dataset, dist=dist)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    data_info = {"name": config.dataset, "shape": list(dataset.shape), "num_levels": dataset.num_levels}

    metrics_path = out / "metrics.jsonl"
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(out / "config.json", config.to_json() + "\n")
        if state is not None:
            _truncate_metrics(metrics_path, trainer.step)
        else:
            metrics_path.write_text("")
        if config.method == "vae":
            say("method vae: no Langevin kernel runs")
        else:
            say(lpc_fast.describe_selection(trainer.device, config.backend))
            say(f"Langevin chain: loop mode {config.loop_mode}")
        say(trainer.optimizer_description)
        if dist.enabled:
            say(f"data parallel: {dist.world_size} processes, {trainer.local_batch} images each per step")
    dist.barrier()

    stop = _StopFlag()
    stop.install()
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=config.steps,
            initial=trainer.step,
            desc=f"train {config.method}",
            unit="step",
            dynamic_ncols=True,
        )
    result = RunResult(out=out, step=trainer.step)
    # A resume from the fallback checkpoint has no valid checkpoint.pt of its step yet.
    last_saved = trainer.step if resumed_from is not None and resumed_from.name == CHECKPOINT_NAME else -1
    metrics: dict[str, Any] = {}

    def checkpoint() -> Path | None:
        nonlocal last_saved
        path = None
        if dist.is_main:
            path = save_checkpoint(checkpoint_payload(trainer, data_info), out)
        last_saved = trainer.step
        return path

    try:
        metrics_file = open(metrics_path, "a") if dist.is_main else None  # noqa: SIM115 - closed in finally
        try:
            while trainer.step < config.steps:
                try:
                    metrics = trainer.train_step()
                except TrainingFault as fault:
                    # The trainer was rewound to its last good state: keep it on disk, then stop.
                    path = checkpoint() if last_saved != trainer.step else out / CHECKPOINT_NAME
                    result.checkpoint = path
                    fault.checkpoint = str(path) if dist.is_main else None
                    fault.args = (
                        f"{fault}; the last good state (step {trainer.step}) is in {path}",
                        *fault.args[1:],
                    )
                    raise
                metrics["steps_per_s"] = 1.0 / metrics["seconds"] if metrics["seconds"] > 0 else float("inf")
                step = trainer.step
                if metrics_file is not None and (step % config.log_every == 0 or step == config.steps):
                    metrics_file.write(json.dumps(metrics) + "\n")
                    metrics_file.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.2f}", steps_per_s=f"{metrics['steps_per_s']:.1f}"
                    )
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    result.checkpoint = checkpoint()
                if _should_stop(stop, dist, trainer.device):
                    result.interrupted = True
                    break
        finally:
            if metrics_file is not None:
                metrics_file.close()
        if last_saved != trainer.step:
            result.checkpoint = checkpoint()
        elif result.checkpoint is None and dist.is_main:
            result.checkpoint = out / CHECKPOINT_NAME
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    result.step = trainer.step
    result.last_metrics = metrics
    if result.interrupted:
        say(
            f"interrupted at step {trainer.step}: checkpoint written to {result.checkpoint}; "
            "continue with --resume"
        )
        return result
    if dist.is_main:
        result.samples_png, result.reconstructions_png = write_images(trainer, out, config.png_samples)
    dist.barrier()
    return result


def _should_stop(stop: _StopFlag, dist: DistContext, device: torch.device) -> bool:
    """Whether any rank was signalled (all ranks must stop at the same step)."""
    flag = stop.signum is not None
    if not dist.enabled:
        return flag
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)
