"""Seeded, resumable minibatch order.

Epoch ``e`` visits the data in the order ``torch.randperm(N, generator=g)`` with ``g`` seeded from
``(seed, e)``; the last ``N mod batch_size`` indices of an epoch are dropped so every minibatch has
the same size (the chains' per-point state has a fixed shape). The whole state is ``(epoch,
position)``, so a checkpoint restores the order exactly without storing a generator.
"""

from __future__ import annotations

import torch

__all__ = ["BatchOrder"]

# Odd 64-bit multiplier mixing the epoch into the seed (distinct epochs -> distinct generator seeds).
_EPOCH_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


class BatchOrder:
    """Index batches of size ``batch_size`` drawn without replacement, epoch after epoch.

    Parameters
    ----------
    num_items : int
        Dataset size N (must be at least ``batch_size``).
    batch_size : int
        Global minibatch size.
    seed : int
        Seed of the per-epoch permutations.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        if num_items < batch_size:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._perm: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch (the remainder is dropped)."""
        return self.num_items // self.batch_size

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed((self.seed * _EPOCH_MIX + self.epoch) & _MASK63)
            self._perm = torch.randperm(self.num_items, generator=g)
        return self._perm

    def next(self) -> torch.Tensor:
        """Indices (int64, CPU) of the next global minibatch."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._perm = None
        start = self.position * self.batch_size
        idx = self._permutation()[start : start + self.batch_size]
        self.position += 1
        return idx

    def state_dict(self) -> dict[str, int]:
        """Position in the stream (with the constructor arguments, for checking on load)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; the dataset size, batch size and seed must match."""
        for key in ("seed", "num_items", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"data order mismatch on {key}: checkpoint has {state[key]}, "
                    f"this run has {getattr(self, key)}"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = None
