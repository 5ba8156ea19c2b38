"""What the LPC and VAE trainers share: model, optimizers, data order, noise streams, state.

Determinism: the model is initialised under ``torch.manual_seed(seed)`` (inside a forked RNG, so the
caller's global RNG is untouched); the data order comes from :class:`~lpc_fast.train.batches.BatchOrder`;
warm-start and reparameterisation noise from one seeded CPU ``torch.Generator`` (drawn for the global
batch and sliced per rank, so it is the same whatever the number of ranks and the device); Langevin
noise from the kernels' ``(seed, offset)`` stream, whose offset the trainer carries in its state. Every
one of these is in :meth:`Trainer.state_dict`, so a restored trainer continues bit for bit.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from lpc_fast.train.batches import BatchOrder
from lpc_fast.train.config import ConfigError, TrainConfig
from lpc_fast.train.distributed import DistContext
from lpc_fast.train.faults import DivergenceGuard, TrainingFault

__all__ = [
    "Trainer",
    "resolve_device",
    "gaussian_log_prob",
    "gaussian_entropy",
    "make_adam",
    "STATE_FORMAT",
]

#: Version of :meth:`Trainer.state_dict`'s layout.
STATE_FORMAT = 1
# Stream identifiers mixed into the seed so the generators for initialisation and warm-start noise
# are distinct streams even though both derive from the one user seed.
_NOISE_STREAM = 0x5DEECE66D
_MASK63 = (1 << 63) - 1
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def resolve_device(name: str | None, dist: DistContext | None = None) -> torch.device:
    """``None`` -> the local rank's GPU if CUDA is available, else CPU; a named device must be usable."""
    if name is not None:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError("device", f"not a torch device: {name!r} ({exc})") from None
        try:  # fail here with the reason, not later inside the first .to(device)
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError("device", f"{name!r} cannot be used here: {reason}") from None
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank if dist is not None else 0)
    return torch.device("cpu")


def make_adam(params: list[torch.Tensor], lr: float, fused: bool) -> tuple[torch.optim.Adam, bool]:
    """Adam over ``params``, fused when asked and supported; returns it and whether it is fused.

    Fused Adam updates all parameters in one kernel (on the CPU ~6x faster than the default for a
    ~100k-parameter MLP). Its support depends on the device, the dtype and the torch build, and torch
    checks it at construction, so an unsupported combination falls back to the default here.
    """
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, fused=True), True
        except (RuntimeError, ValueError, TypeError):
            pass
    return torch.optim.Adam(params, lr=lr), False


def _describe_adam(asked: bool, fused: bool) -> str:
    if fused:
        return "optimizer: fused Adam"
    if asked:
        return "optimizer: Adam (fused Adam is not supported for these parameters' device or dtype)"
    return "optimizer: Adam (fused off)"


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag exp(log_sigma)**2)`` summed over the last dim (broadcasts over leading dims)."""
    u = (z - mu) * torch.exp(-log_sigma)
    return (-0.5 * u * u - log_sigma - _HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_sigma: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim."""
    return (log_sigma + _HALF_LOG_2PI + 0.5).sum(-1)


class _ThetaModule(nn.Module):
    """The model without its encoder, calling ``model.energy``: the unit DDP reduces for θ.

    DDP must only see parameters that every backward reaches; the encoder's do not get gradients
    from the decoder passes, so it is left out.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["_model"] = model  # a plain reference: registering it would pull the encoder in
        encoder = getattr(model, "encoder", None)
        for name, child in model.named_children():
            if child is not encoder:
                self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)

    def forward(
        self, z: torch.Tensor, x: torch.Tensor, mode: str | None = None, record: bool = False, records=None
    ):
        """``energy(z, x)``; ``mode="grad"``: ``energy_and_grad(z, x, constant=False, record=True)``
        (with ``record``) or without the record; ``mode="theta"``: ``accumulate_decoder_grad(z, x,
        records)``. Through this forward, so that data parallelism sees the parameters' gradients."""
        if mode is None:
            return self._model.energy(z, x)
        if mode == "grad":
            return self._model.energy_and_grad(z, x, constant=False, record=record)
        if mode == "theta":
            return self._model.accumulate_decoder_grad(z, x, records)
        raise ValueError(f"mode must be None, 'grad' or 'theta', got {mode!r}")


class Trainer:
    """Base class: one :meth:`train_step` per minibatch, checkpointable with :meth:`state_dict`.

    Parameters
    ----------
    config : TrainConfig
        The run's settings (validated here).
    data : ImageDataset or Tensor
        Training images ``[N, C, H, W]`` (an object with ``.images``, ``.num_levels`` and ``.shape``, or
        the tensor itself).
    model : nn.Module, optional
        A ready model with the :class:`lpc_fast.models.LatentModel` interface; built from
        ``config.model`` with :func:`lpc_fast.models.build_model` when omitted.
    dist : DistContext, optional
        Data-parallel placement (default: a single process).
    """

    method = "base"

    def __init__(
        self,
        config: TrainConfig,
        data: Any,
        *,
        model: nn.Module | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.config = config.validate()
        self.dist = dist or DistContext()
        self.device = resolve_device(config.device, self.dist)
        images = data.images if hasattr(data, "images") else data
        if not isinstance(images, torch.Tensor) or images.dim() < 2:
            raise TypeError("data must be an ImageDataset or a tensor [N, ...]")
        if config.batch_size % self.dist.world_size:
            raise ConfigError(
                "batch_size",
                f"the global batch {config.batch_size} must be divisible by the "
                f"{self.dist.world_size} processes",
            )
        if images.shape[0] < config.batch_size:
            raise ConfigError(
                "batch_size",
                f"the dataset has {images.shape[0]} images, fewer than one batch of {config.batch_size}",
            )
        self.images = images.to(self.device)
        if model is None:
            model = self._build_model(data)
        self.model = model.to(self.device)
        self.encoder = getattr(self.model, "encoder", None)
        self.latent_dim = int(self.model.latent_dim)
        enc_ids = {id(p) for p in self.encoder.parameters()} if self.encoder is not None else set()
        self.theta_params = [p for p in self.model.parameters() if id(p) not in enc_ids]
        self.phi_params = [p for p in self.model.parameters() if id(p) in enc_ids]
        self.opt_theta, fused_theta = make_adam(self.theta_params, config.lr, config.fused_optimizer)
        self.opt_phi, fused_phi = (
            make_adam(self.phi_params, config.effective_encoder_lr, config.fused_optimizer)
            if self.phi_params
            else (None, fused_theta)
        )
        #: Which Adam implementation runs (the training run reports it once at its start).
        self.optimizer_description = _describe_adam(config.fused_optimizer, fused_theta and fused_phi)
        self.order = BatchOrder(self.images.shape[0], config.batch_size, config.seed)
        self.noise_gen = torch.Generator().manual_seed((config.seed * 1_000_003 + _NOISE_STREAM) & _MASK63)
        self.local_batch = config.batch_size // self.dist.world_size
        self.step = 0
        self.decoder_grad_evals = 0
        self.elapsed = 0.0
        #: Cumulative CPU seconds of this process spent in training steps: unlike ``elapsed``, not
        #: inflated when other work shares the cores (a single-threaded CPU run's compute time).
        self.cpu_elapsed = 0.0
        self.guard = DivergenceGuard(config.divergence_factor, config.divergence_window)
        #: Chains dropped or restarted by ``nonfinite_policy`` so far.
        self.nonfinite_chains = 0

    # -- construction helpers -----------------------------------------------------------------------
    def _build_model(self, data: Any) -> nn.Module:
        from lpc_fast.models import build_model

        shape = tuple(data.shape) if hasattr(data, "shape") and not isinstance(data, torch.Tensor) else None
        if shape is None:
            shape = tuple(self.images.shape[1:])
        if len(shape) == 4:  # an ImageDataset's .shape may include N
            shape = shape[1:]
        num_levels = getattr(data, "num_levels", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            try:
                return build_model(self.config.model, shape, num_levels)
            except ValueError as exc:
                raise ConfigError(_model_option(self.config.model, str(exc)), str(exc)) from None

    def _ddp(self, module: nn.Module) -> nn.Module:
        """Wrap ``module`` in DistributedDataParallel when running on several processes."""
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    # -- noise ----------------------------------------------------------------------------------------
    def global_normal(self, *shape_tail: int) -> torch.Tensor:
        """Standard normals for the *global* batch from the seeded generator; this rank's rows, on device."""
        eps = torch.randn((self.config.batch_size, *shape_tail), generator=self.noise_gen)
        return eps[self.dist.shard(self.config.batch_size)].to(self.device)

    # -- the training loop step ----------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        """This rank's shard of the next global minibatch."""
        idx = self.order.next()[self.dist.shard(self.config.batch_size)]
        return self.images[idx.to(self.device)]

    def train_step(self) -> dict[str, float]:
        """Run one optimizer step; return its metrics (averaged over ranks).

        Keys common to all trainers: ``step`` (1-based, after this step), ``epoch``, ``loss``,
        ``decoder_grad_evals`` (cumulative over the run, per data point chain), ``decoder_grad_evals_step``,
        ``seconds`` (this step's wall clock), ``elapsed`` (cumulative wall clock, resumed runs included),
        ``cpu_elapsed`` (cumulative CPU seconds of this process in training steps).
        """
        self.model.train()
        # What a step advances before its optimizer steps (model and optimizers change only after the
        # numerical checks pass): a few integers and one generator state, so rewinding after a fault
        # is free and leaves the trainer exactly in its last good state.
        rewind = (self.order.state_dict(), self.noise_gen.get_state(), self._sampler_state())
        x = self.next_batch()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        cpu_start = time.process_time()
        try:
            metrics, evals = self._step(x)
        except TrainingFault:
            self.order.load_state_dict(rewind[0])
            self.noise_gen.set_state(rewind[1])
            self._load_sampler_state(rewind[2])
            raise
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.cpu_elapsed += time.process_time() - cpu_start
        self.step += 1
        self.decoder_grad_evals += evals
        self.elapsed += seconds
        metrics = self.dist.mean(metrics, self.device)
        if "nonfinite_chains" in metrics:  # a count: the sum over processes, not their mean
            metrics["nonfinite_chains"] = round(metrics["nonfinite_chains"] * self.dist.world_size)
            self.nonfinite_chains += metrics["nonfinite_chains"]
        metrics.update(
            step=self.step,
            epoch=self.order.epoch,
            decoder_grad_evals=self.decoder_grad_evals,
            decoder_grad_evals_step=evals,
            seconds=seconds,
            elapsed=self.elapsed,
            cpu_elapsed=self.cpu_elapsed,
        )
        return metrics

    def _step(self, x: torch.Tensor) -> tuple[dict[str, float], int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_divergence(self, energy: torch.Tensor | float, step_size: float | None = None) -> None:
        """Divergence guard on this step's batch energy; call it before any optimizer step.

        Under DDP the ranks' values are averaged first, so every rank takes the same decision.
        """
        value = float(energy)
        if self.dist.enabled:
            value = self.dist.mean({"e": value}, self.device)["e"]
        self.guard.check(value, step=self.step + 1, step_size=step_size)

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (the config is included for reference)."""
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            "step": self.step,
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "opt_theta": self.opt_theta.state_dict(),
            "opt_phi": self.opt_phi.state_dict() if self.opt_phi is not None else None,
            "order": self.order.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "sampler": self._sampler_state(),
            "decoder_grad_evals": self.decoder_grad_evals,
            "elapsed": self.elapsed,
            "cpu_elapsed": self.cpu_elapsed,
            "guard": self.guard.state_dict(),
            "nonfinite_chains": self.nonfinite_chains,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (from the same method and world size)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported trainer state format {state.get('format')!r}")
        if state["method"] != self.method:
            raise ValueError(f"checkpoint is from a {state['method']!r} run, this trainer is {self.method!r}")
        if int(state["world_size"]) != self.dist.world_size:
            raise ValueError(
                f"checkpoint was written with {state['world_size']} processes; resume with the same number "
                f"(this run has {self.dist.world_size}) to continue the same trajectory"
            )
        self.model.load_state_dict(state["model"])
        self.opt_theta.load_state_dict(state["opt_theta"])
        if self.opt_phi is not None and state["opt_phi"] is not None:
            self.opt_phi.load_state_dict(state["opt_phi"])
        self.order.load_state_dict(state["order"])
        self.noise_gen.set_state(state["noise_gen"])
        self._load_sampler_state(state["sampler"])
        self.step = int(state["step"])
        self.decoder_grad_evals = int(state["decoder_grad_evals"])
        self.elapsed = float(state["elapsed"])
        self.cpu_elapsed = float(state.get("cpu_elapsed", 0.0))  # absent from older checkpoints
        # Absent from checkpoints written before the guard existed.
        self.guard.load_state_dict(state.get("guard"))
        self.nonfinite_chains = int(state.get("nonfinite_chains", 0))

    def _sampler_state(self) -> dict[str, Any] | None:
        return None

    def _load_sampler_state(self, state: dict[str, Any] | None) -> None:
        return None


def _model_option(model_config: Any, message: str) -> str:
    """Name the model field a ``ValueError`` from the model code is about (messages start with it)."""
    import dataclasses

    for f in dataclasses.fields(model_config):
        if message.startswith(f.name):
            return "model." + f.name
    return "model"
