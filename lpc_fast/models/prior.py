"""The latent prior ``p(z) = N(0, I)``."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["StandardNormalPrior"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StandardNormalPrior(nn.Module):
    """``N(0, I)`` over latents ``[B, ...]``; its energy gradient is ``z`` itself (LPC.md §2)."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)`` summed over all but the batch dimension, shape ``[B]``."""
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * (flat * flat).sum(dim=1) - flat.shape[1] * _HALF_LOG_2PI

    def sample(
        self,
        n: int,
        dim: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``n`` draws of a ``dim``-dimensional standard normal, shape ``[n, dim]``."""
        if device is None and generator is not None:
            device = generator.device
        return torch.randn(n, dim, generator=generator, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_prob(z)
