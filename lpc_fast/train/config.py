"""Training configuration: one dataclass per concern, each default written once.

:class:`TrainConfig` holds every training setting of LPC.md §3 (and the VAE
baseline of §3.5) plus a nested :class:`lpc_fast.models.ModelConfig`. Values the
paper leaves open are defaults here, never constants in the trainers.

``to_json``/``from_json`` round-trip a config exactly; unknown keys are rejected
with a :class:`ConfigError` that names the key, so that a typo in a config file
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from lpc_fast.models import ModelConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "DEFAULT_T_ENCODER",
    "DEFAULT_T_PRIOR",
    "config_from_dict",
    "config_to_dict",
    "field_choices",
]

#: Langevin steps per minibatch when the chain starts from the encoder (LPC.md §3.2).
DEFAULT_T_ENCODER = 20
#: Langevin steps per minibatch when the chain starts from the prior or zeros (the paper's CelebA run).
DEFAULT_T_PRIOR = 300

Method = Literal["lpc", "vae", "pc"]
WarmStart = Literal["prior", "zeros", "encoder", "encoder_mean"]
EncoderObjective = Literal["forward_kl", "reverse_kl", "jeffreys"]
NonfinitePolicy = Literal["raise", "skip", "reset"]
LoopMode = Literal["sampler", "eager", "cuda_graph", "compile"]


class ConfigError(ValueError):
    """An invalid configuration value; ``option`` names the offending field (CLI spelling)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"--{option.replace('_', '-').replace('.', '-')}: {message}")
        self.option = option


@dataclass
class TrainConfig:
    """Everything a training run depends on (with the seed, it fixes the run bit for bit).

    Attributes
    ----------
    method : {"lpc", "vae", "pc"}
        ``lpc``: Langevin predictive coding; ``pc``: the same with temperature 0 (deterministic
        predictive coding, the ``temperature`` field is ignored); ``vae``: the reparameterised-ELBO
        baseline with the same model and optimizer.
    dataset : str
        A name understood by :func:`lpc_fast.data.load_dataset` (``digits``, ``mnist``, ``npz:PATH``...).
    data_root, download : str or None, bool
        Passed to :func:`lpc_fast.data.load_dataset` (files' root directory; fetch missing files).
    steps : int
        Number of optimizer steps (minibatches).
    batch_size : int
        Global minibatch size; under DDP each of the W ranks takes ``batch_size / W`` of it.
    lr, encoder_lr : float
        Adam learning rates of the decoder/likelihood (θ) and the encoder (φ); ``encoder_lr=None``
        uses ``lr``.
    fused_optimizer : bool
        Use PyTorch's fused Adam (one kernel for all of a network's parameters) where the device and
        dtype support it, else the default Adam; which one runs is reported once at the start of a run.
        Fused and unfused Adam round differently, so this setting is part of the trajectory.
    seed : int
        Seeds the model initialisation, the data order, the warm-start noise and the Langevin noise.
    log_every, checkpoint_every : int
        Steps between metrics records / checkpoints (0 disables periodic checkpoints; the final
        step always writes one).
    out : str
        Output directory of the CLI.
    device : str or None
        ``None`` picks ``cuda`` (the local rank's GPU) when available, else ``cpu``.
    num_threads : int or None
        CPU threads for torch (``torch.set_num_threads``); ``None`` keeps torch's default. Small models
        run fastest on one thread, and a shared machine punishes oversubscription.
    num_langevin_steps : int or None
        T, the Langevin moves per minibatch; ``None`` means :data:`DEFAULT_T_ENCODER` for an encoder
        warm start and :data:`DEFAULT_T_PRIOR` otherwise.
    langevin_step_size : float
        η of LPC.md §2.
    precondition, beta, eps, bias_correction : bool, float, float, bool
        The RMSprop-like preconditioner (``eps`` is λ of LPC.md §2).
    temperature : float
        τ; 1 samples the posterior, 0 is gradient descent on the energy.
    burn_in : int
        B: the decoder gradient averages samples ``t = B+1 .. T``.
    warm_start : {"prior", "zeros", "encoder", "encoder_mean"}
        Where each minibatch's chain starts.
    encoder_objective : {"forward_kl", "reverse_kl", "jeffreys"}
        The encoder's loss after each chain (``jeffreys`` = forward + reverse, the paper's final one).
    backend : str or None
        Kernel backend of the Langevin step (``None``: automatic).
    loop_mode : {"sampler", "eager", "cuda_graph", "compile"}
        How LPC/PC run the ``T``-step chain: ``sampler`` steps a :class:`lpc_fast.LangevinSampler` from
        Python (the only mode that supports ``nonfinite_policy="reset"``); the others use
        :class:`lpc_fast.fastloop.LangevinLoop` in that mode. ``eager`` gives the same trajectory as
        ``sampler`` bit for bit; ``cuda_graph`` replays the whole chain as one CUDA graph (a CUDA device,
        a non-reference backend, one process); ``compile`` runs each pass as one ``torch.compile``
        graph (one process; same trajectory up to the compiled decoder's rounding). The VAE ignores it.
    png_samples : int
        Images in the sample / reconstruction grids.
    nonfinite_policy : {"raise", "skip", "reset"}
        What a chain whose energy or ``∇_z E`` turns non-finite does: ``raise`` stops the step with an
        error naming the training step, the inner Langevin step, the chains and the count of
        non-finite values; ``skip`` drops those chains from the step's decoder gradient and encoder
        objective; ``reset`` restarts them from their warm start (the non-finite samples are left
        out). ``skip``/``reset`` count the chains in the metric ``nonfinite_chains``.
    divergence_factor : float or None
        Stop training (after checkpointing the last good state) when a step's batch energy is
        non-finite or exceeds its running median ``m`` by more than ``divergence_factor * max(|m|, 1)``;
        ``None`` (``none`` on the command line) turns the median test off; non-finite energies
        still stop the run.
    divergence_window : int
        Steps in the running median of the divergence guard.
    model : ModelConfig
        Architecture, latent size and likelihood.
    """

    method: Method = "lpc"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    encoder_lr: float | None = None
    fused_optimizer: bool = True
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    out: str = "runs/lpc"
    device: str | None = None
    num_threads: int | None = None
    num_langevin_steps: int | None = None
    langevin_step_size: float = 0.05
    precondition: bool = True
    beta: float = 0.99
    eps: float = 1e-3
    temperature: float = 1.0
    bias_correction: bool = True
    burn_in: int = 0
    warm_start: WarmStart = "encoder"
    encoder_objective: EncoderObjective = "jeffreys"
    backend: str | None = None
    loop_mode: LoopMode = "sampler"
    png_samples: int = 64
    nonfinite_policy: NonfinitePolicy = "raise"
    divergence_factor: float | None = 10.0
    divergence_window: int = 50
    model: ModelConfig = field(default_factory=ModelConfig)

    # -- derived values -------------------------------------------------------------------------
    @property
    def uses_encoder_warm_start(self) -> bool:
        """Whether chains start from the encoder (sample or mean)."""
        return self.warm_start in ("encoder", "encoder_mean")

    @property
    def chain_length(self) -> int:
        """T after resolving ``num_langevin_steps=None`` by the warm start."""
        if self.num_langevin_steps is not None:
            return self.num_langevin_steps
        return DEFAULT_T_ENCODER if self.uses_encoder_warm_start else DEFAULT_T_PRIOR

    @property
    def chain_temperature(self) -> float:
        """τ actually used: 0 for ``method="pc"``."""
        return 0.0 if self.method == "pc" else self.temperature

    @property
    def effective_encoder_lr(self) -> float:
        """The encoder's learning rate after resolving ``encoder_lr=None``."""
        return self.lr if self.encoder_lr is None else self.encoder_lr

    # -- checks and serialisation -----------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check values that types alone cannot; raise :class:`ConfigError` naming the option."""
        _check_choices(self)
        positive = {"steps": self.steps, "batch_size": self.batch_size, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(name, f"expected a positive integer, got {value}")
        if self.checkpoint_every < 0:
            raise ConfigError(
                "checkpoint_every", f"expected >= 0 (0 = only at the end), got {self.checkpoint_every}"
            )
        if self.png_samples < 1:
            raise ConfigError("png_samples", f"expected a positive integer, got {self.png_samples}")
        for name in ("lr", "langevin_step_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"expected a finite positive number, got {value}")
        if self.encoder_lr is not None and not (math.isfinite(self.encoder_lr) and self.encoder_lr > 0):
            raise ConfigError("encoder_lr", f"expected a finite positive number, got {self.encoder_lr}")
        # The kernel's own constraints, checked here so a bad value fails before any training.
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(
                "beta", f"expected a value in [0, 1] (1 only without bias correction), got {self.beta}"
            )
        if self.beta == 1.0 and self.bias_correction:
            raise ConfigError(
                "beta", "beta = 1 (a frozen preconditioner) needs --no-bias-correction (1 - beta**t is 0)"
            )
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError("eps", f"expected a finite value > 0, got {self.eps}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError("temperature", f"expected a finite value >= 0, got {self.temperature}")
        if self.num_langevin_steps is not None and self.num_langevin_steps < 1:
            raise ConfigError(
                "num_langevin_steps", f"expected a positive integer, got {self.num_langevin_steps}"
            )
        if not 0 <= self.burn_in < self.chain_length:
            raise ConfigError(
                "burn_in",
                f"expected 0 <= burn_in < T = {self.chain_length} (at least one kept sample), "
                f"got {self.burn_in}",
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError("num_threads", f"expected a positive integer or none, got {self.num_threads}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"expected an integer in [0, 2**63), got {self.seed}")
        if self.divergence_factor is not None and not (
            math.isfinite(self.divergence_factor) and self.divergence_factor > 0
        ):
            raise ConfigError(
                "divergence_factor",
                f"expected a finite positive number or none, got {self.divergence_factor}",
            )
        if self.divergence_window < 1:
            raise ConfigError(
                "divergence_window", f"expected a positive integer, got {self.divergence_window}"
            )
        if self.backend is not None:
            from lpc_fast.dispatch import BACKEND_NAMES

            if self.backend not in BACKEND_NAMES:
                raise ConfigError(
                    "backend", f"expected one of {', '.join(BACKEND_NAMES)} or none, got {self.backend!r}"
                )
        if self.nonfinite_policy == "reset" and self.loop_mode != "sampler":
            # reset moves chains back to their warm start in the middle of the chain, which only the
            # Python-stepped sampler can do; a LangevinLoop only reports the counts after the chain.
            raise ConfigError(
                "loop_mode",
                f"--nonfinite-policy reset needs --loop-mode sampler (got {self.loop_mode!r}); "
                "use --nonfinite-policy skip or raise with the other loop modes",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested model config included)."""
        return config_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text that :meth:`from_json` turns back into an equal config."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) dict; missing keys take defaults, unknown keys raise."""
        return config_from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse :meth:`to_json` output (or a hand-written partial config file)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("config", f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("config", f"expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------------
# Generic dataclass <-> dict with type checks (shared by TrainConfig and the nested ModelConfig)
# ---------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) < len(get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional  # noqa: UP007 - built at run time
    return tp, False


def field_choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` field type (``Optional`` stripped), else ``None``."""
    inner, _ = _strip_optional(tp)
    if get_origin(inner) is Literal:
        return get_args(inner)
    return None


def _coerce(name: str, tp: Any, value: Any, prefix: str) -> Any:
    """Check ``value`` against the field type ``tp``; JSON lists become tuples where declared."""
    option = prefix + name
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(option, "expected a value, got null")
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise ConfigError(option, f"expected an object of {inner.__name__} fields, got {value!r}")
        return config_from_dict(inner, value, prefix=option + ".")
    choices = field_choices(inner)
    if choices is not None:
        if value not in choices:
            raise ConfigError(option, f"expected one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    origin = get_origin(inner)
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(option, f"expected true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(option, f"expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(option, f"expected a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(option, f"expected a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(option, f"expected a list, got {value!r}")
        args = [a for a in get_args(inner) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_coerce(name, item_tp, v, prefix) if item_tp is not Any else v for v in value]
        return tuple(items) if origin is tuple else list(items)
    return value


def config_from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys by name."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            prefix + unknown[0],
            f"unknown configuration key {prefix + unknown[0]!r} (known keys: {', '.join(names)})",
        )
    kwargs = {k: _coerce(k, hints[k], v, prefix) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # Validation messages start with the field they are about: name that option.
        message = str(exc)
        option = next((n for n in names if message.startswith(n)), None)
        option = prefix + option if option else prefix.rstrip(".") or "config"
        raise ConfigError(option, message) from None


def config_to_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with tuples as lists (JSON has no tuples)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def _check_choices(cfg: Any, prefix: str = "") -> None:
    """Re-check Literal fields (attributes may have been set after construction)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, prefix + f.name + ".")
            continue
        choices = field_choices(hints[f.name])
        _, optional = _strip_optional(hints[f.name])
        if choices is not None and not (optional and value is None) and value not in choices:
            raise ConfigError(
                prefix + f.name, f"expected one of {', '.join(map(str, choices))}; got {value!r}"
            )
