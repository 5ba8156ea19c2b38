"""Data-parallel context: detection from the ``torchrun`` environment, sharding and reductions.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
``gloo`` on CPU and ``nccl`` on CUDA. Rank ``r`` of ``W`` takes rows ``[r*b, (r+1)*b)`` of every global
minibatch (``b = batch_size / W``), so the union of the shards is exactly the global batch a single
process would see. Every rank draws the *global* warm-start / reparameterisation noise from the same
seeded generator and keeps its own rows, so that noise does not depend on ``W`` either. The Langevin
noise comes from the kernels' counter-based stream: all ranks share the seed and rank ``r`` starts at
counter offset ``r * RANK_OFFSET_STRIDE``, a disjoint range no run can exhaust (see
:data:`RANK_OFFSET_STRIDE`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["RANK_OFFSET_STRIDE", "DistContext", "detect"]

#: Philox counters reserved for each rank's Langevin noise. One step consumes ceil(numel/4)
#: counters; 2**48 of them last longer than any run (2**48 / 1e9 counters per second = 3 days
#: of uninterrupted noise generation per rank), so the ranks' streams never overlap.
RANK_OFFSET_STRIDE = 1 << 48


@dataclass
class DistContext:
    """Where this process sits in a (possibly trivial) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global minibatch."""
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalar metrics over ranks (identity when not distributed)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        """Synchronise ranks (no-op when not distributed)."""
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Destroy the process group if this context created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def detect(device: torch.device | None = None) -> DistContext:
    """Build the context from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, initialising the process group.

    Parameters
    ----------
    device : torch.device, optional
        The training device; picks ``nccl`` for CUDA and ``gloo`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        created = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        initialized_here=created,
    )
