"""Training: LPC / PC / VAE trainers, configuration, checkpoints, the run loop and DDP.

Quick use::

    from lpc_fast.train import TrainConfig, make_trainer
    from lpc_fast.data import load_dataset

    cfg = TrainConfig(steps=100)
    trainer = make_trainer(cfg, load_dataset(cfg.dataset))
    for _ in range(cfg.steps):
        metrics = trainer.train_step()

or the whole run with outputs (``config.json``, ``metrics.jsonl``, checkpoints, PNG grids):
:func:`run_training`, which is what ``lpc-fast train`` calls.
"""

from __future__ import annotations

from typing import Any

from lpc_fast.train.base import Trainer
from lpc_fast.train.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from lpc_fast.train.config import DEFAULT_T_ENCODER, DEFAULT_T_PRIOR, ConfigError, TrainConfig
from lpc_fast.train.distributed import DistContext
from lpc_fast.train.factory import make_trainer
from lpc_fast.train.faults import DivergenceError, NonFiniteError, TrainingFault
from lpc_fast.train.lpc import LPCTrainer
from lpc_fast.train.vae import VAETrainer

__all__ = [
    "DEFAULT_T_ENCODER",
    "DEFAULT_T_PRIOR",
    "CheckpointError",
    "ConfigError",
    "DistContext",
    "DivergenceError",
    "LPCTrainer",
    "NonFiniteError",
    "TrainConfig",
    "Trainer",
    "TrainingFault",
    "VAETrainer",
    "load_checkpoint",
    "load_latest",
    "load_model",
    "make_trainer",
    "run_training",
    "save_checkpoint",
]


def run_training(*args: Any, **kwargs: Any) -> Any:
    """See :func:`lpc_fast.train.loop.run_training`."""
    from lpc_fast.train.loop import run_training as _run

    return _run(*args, **kwargs)


def load_model(*args: Any, **kwargs: Any) -> Any:
    """See :func:`lpc_fast.train.loop.load_model`: ``(model, config)`` of a loaded checkpoint dict."""
    from lpc_fast.train.loop import load_model as _load

    return _load(*args, **kwargs)
