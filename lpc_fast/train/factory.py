"""The trainer factory (its own module so that the run loop can import it without the package)."""

from __future__ import annotations

from typing import Any

from lpc_fast.train.base import Trainer
from lpc_fast.train.distributed import DistContext
from lpc_fast.train.lpc import LPCTrainer
from lpc_fast.train.vae import VAETrainer

__all__ = ["make_trainer"]


def make_trainer(config: Any, data: Any, *, model=None, dist: DistContext | None = None) -> Trainer:
    """The trainer for ``config.method``: :class:`LPCTrainer` for lpc/pc, :class:`VAETrainer` for vae."""
    cls = VAETrainer if config.method == "vae" else LPCTrainer
    return cls(config, data, model=model, dist=dist)
