"""The VAE baseline (LPC.md §3.5): same encoder, decoder, likelihood, optimizer and batch as LPC.

Loss per minibatch: ``mean_i [E(z_i; x_i) - H(q(.|x_i))]`` with ``z_i = mu_i + sigma_i * eps_i``, i.e.
the negative reparameterised ELBO (``E = -log p(x|z) - log p(z)``; the entropy of the diagonal Gaussian
in closed form). One backward gives both ∇_θ and ∇_φ; one Adam step on each. One decoder
forward/backward per step (``decoder_grad_evals_step = 1``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lpc_fast.train.base import Trainer, gaussian_entropy
from lpc_fast.train.config import ConfigError, TrainConfig
from lpc_fast.train.distributed import DistContext

__all__ = ["VAETrainer", "negative_elbo"]


def negative_elbo(model: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point negative ELBO ``[B]`` and the energy at the reparameterised sample ``[B]``."""
    mu, log_sigma = model.encode(x)
    z = mu + torch.exp(log_sigma) * eps
    energy = model.energy(z, x)
    return energy - gaussian_entropy(log_sigma), energy


class _ELBOModule(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return negative_elbo(self.model, x, eps)


class VAETrainer(Trainer):
    """Trains the model's encoder and decoder jointly on the reparameterised ELBO."""

    method = "vae"

    def __init__(
        self, config: TrainConfig, data: Any, *, model=None, dist: DistContext | None = None
    ) -> None:
        super().__init__(config, data, model=model, dist=dist)
        if self.encoder is None:
            raise ConfigError("model.use_encoder", "the VAE needs an encoder: pass --model-use-encoder")
        self._loss = self._ddp(_ELBOModule(self.model))

    def _step(self, x: torch.Tensor) -> tuple[dict[str, float], int]:
        eps = self.global_normal(self.latent_dim)
        self.opt_theta.zero_grad(set_to_none=True)
        self.opt_phi.zero_grad(set_to_none=True)
        nelbo, energy = self._loss(x, eps)
        loss = nelbo.mean()
        self._check_divergence(loss.detach())  # before any optimizer step: a divergence changes nothing
        loss.backward()
        self.opt_theta.step()
        self.opt_phi.step()
        return {"loss": float(loss.detach()), "energy": float(energy.detach().mean())}, 1
