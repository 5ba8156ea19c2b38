"""``LangevinSampler``: an Optimizer-shaped Langevin sampler over latent tensors.

It replaces a hand-written inner loop ``z -= lr * z.grad; z += sqrt(2 * lr) * torch.randn_like(z)`` by one
fused kernel call per tensor per step (:func:`lpc_fast.langevin_step_`), with the noise a pure function of
``(seed, offset)`` (LPC.md §5), so a run is reproducible on any device and can be checkpointed mid-chain.

Modes
-----
``"ula"``
    Unadjusted Langevin: ``z' = z - eta g + sqrt(2 eta tau) xi``.
``"preconditioned"``
    The paper's sampler (LPC.md §2): RMSprop-like diagonal preconditioner ``p = 1 / (eps + sqrt(v_hat))``
    scaling drift and noise. With ``v`` adapting, this is a heuristic sampler (the Riemann-manifold correction
    term is dropped); with ``freeze_preconditioner_after=N`` the bias-corrected ``v`` is frozen after ``N``
    steps and the chain is an exact (discretised) preconditioned ULA from then on.
``"mala"``
    Metropolis-adjusted Langevin, exact for any step size. Chains are the leading dimension of the latents
    (all latents must share it); accept/reject is per chain. Without ``freeze_preconditioner_after`` it is
    unpreconditioned; with it, the first ``N`` steps are unadjusted preconditioned steps (burn-in that adapts
    ``v``), after which ``v`` is frozen and every step is a Metropolis-Hastings step.

Closure contract
----------------
``closure()`` evaluates the energy at the current latents and returns it per chain, shape ``[B]`` (nats,
``E = -log p(x, z)``), after filling every latent's ``.grad`` with ``dE/dz`` (the likelihood part only when
``prior_grad=True``; the returned energies must always include the prior). It must zero or overwrite the
gradients itself, for example::

    def closure():
        sampler.zero_grad()
        energies = model.energy(z, x)
        energies.sum().backward()
        return energies.detach()

MALA requires a closure (it evaluates the proposal); the other modes accept one or use the ``.grad``
already present. MALA evaluates the closure once per step: the proposal's energy and gradient are kept for
the next step and reused while the latents are unchanged. Call :meth:`LangevinSampler.reset` whenever the
data (or the model) behind the closure changes, e.g. for each new batch.

On rejection, the chain's latents, gradient and energy are restored, so after ``step`` the ``.grad`` of
each latent is the gradient at the current state. Gradients of *model* parameters accumulated inside the
closure are those of the proposal (accepted or not); ``last_accept`` tells which chains moved.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import torch

import lpc_fast

from . import rng
from .dispatch import BACKEND_NAMES, select_backend
from .ops import _check_hyper

__all__ = ["MODES", "LangevinSampler", "SamplerDiagnostics"]

MODES = ("preconditioned", "ula", "mala")
_U64 = 2**64
_GROUP_KEYS = ("step_size", "beta", "eps", "temperature", "bias_correction", "prior_grad")


class SamplerDiagnostics:
    """Traces of a :class:`LangevinSampler` run (bounded to the last ``max_history`` steps).

    Attributes
    ----------
    energy : deque of Tensor
        Per-step energies the closure returned (detached; the current state's in MALA).
    grad_norm : deque of Tensor
        Per-step L2 norm of the gradient used for the move, over all latents (0-d tensors, kept on the device
        so that recording does not synchronise).
    accept_prob : deque of float
        Per Metropolis-Hastings step, the mean over chains of ``min(1, alpha)``.
    step_scale : deque of float
        Per Metropolis-Hastings step, the step-size multiplier (dual averaging) that was used.
    accepted, proposed : int
        Accepted chain moves and proposals since construction.
    chain_accepted : Tensor or None
        Accepted moves per chain since the last :meth:`LangevinSampler.reset`.
    chain_proposed : int
        Proposals per chain since the last reset.
    """

    def __init__(self, max_history: int = 10_000):
        self.max_history = int(max_history)
        self.energy: deque[torch.Tensor] = deque(maxlen=self.max_history)
        self.grad_norm: deque[torch.Tensor] = deque(maxlen=self.max_history)
        self.accept_prob: deque[float] = deque(maxlen=self.max_history)
        self.step_scale: deque[float] = deque(maxlen=self.max_history)
        self.accepted = 0
        self.proposed = 0
        self.chain_accepted: torch.Tensor | None = None
        self.chain_proposed = 0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted chain moves over all MH steps so far (NaN before the first)."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    def chain_acceptance_rate(self) -> torch.Tensor | None:
        """Per-chain acceptance rate since the last reset (``None`` before the first MH step)."""
        if self.chain_accepted is None or self.chain_proposed == 0:
            return None
        return self.chain_accepted.to(torch.float64) / self.chain_proposed

    def energy_trace(self) -> torch.Tensor:
        """Recorded energies stacked to ``[T, ...]``."""
        return torch.stack(list(self.energy)) if self.energy else torch.empty(0)

    def grad_norm_trace(self) -> torch.Tensor:
        """Recorded gradient norms, ``[T]``."""
        return torch.stack(list(self.grad_norm)) if self.grad_norm else torch.empty(0)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data copy of every trace and counter."""
        return {
            "max_history": self.max_history,
            "energy": [e.clone() for e in self.energy],
            "grad_norm": [g.clone() for g in self.grad_norm],
            "accept_prob": list(self.accept_prob),
            "step_scale": list(self.step_scale),
            "accepted": self.accepted,
            "proposed": self.proposed,
            "chain_accepted": None if self.chain_accepted is None else self.chain_accepted.clone(),
            "chain_proposed": self.chain_proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.__init__(state["max_history"])
        self.energy.extend(e.clone() for e in state["energy"])
        self.grad_norm.extend(g.clone() for g in state["grad_norm"])
        self.accept_prob.extend(state["accept_prob"])
        self.step_scale.extend(state["step_scale"])
        self.accepted = int(state["accepted"])
        self.proposed = int(state["proposed"])
        ca = state["chain_accepted"]
        self.chain_accepted = None if ca is None else ca.clone()
        self.chain_proposed = int(state["chain_proposed"])


class _DualAveraging:
    """Nesterov dual averaging of ``log(step scale)`` (Hoffman & Gelman 2014, Algorithm 5).

    ``H_m = (1 - 1/(m + t0)) H_{m-1} + (delta - alpha_m)/(m + t0)``,
    ``log eps_m = mu - sqrt(m)/gamma H_m``,
    ``log eps_bar_m = m^-kappa log eps_m + (1 - m^-kappa) log eps_bar_{m-1}``, ``mu = log(10 eps_0)``.
    """

    def __init__(self, target: float, gamma: float, t0: float, kappa: float):
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.restart()

    def restart(self, log_eps: float = 0.0) -> None:
        self.m = 0
        self.h_bar = 0.0
        self.log_eps = log_eps
        self.log_eps_bar = log_eps
        self.mu = math.log(10.0) + log_eps

    def update(self, accept_prob: float) -> None:
        self.m += 1
        m = self.m
        w = 1.0 / (m + self.t0)
        self.h_bar = (1.0 - w) * self.h_bar + w * (self.target - accept_prob)
        self.log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        mk = m ** (-self.kappa)
        self.log_eps_bar = mk * self.log_eps + (1.0 - mk) * self.log_eps_bar

    def state_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("m", "h_bar", "log_eps", "log_eps_bar", "mu")}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for k, value in state.items():
            setattr(self, k, value)


def _check_u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64:
        raise ValueError(f"{name} must be an int in [0, 2**64), got {value!r}")
    return value


_LATENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_number(name: str, value: Any, ok: Callable[[float], bool], expected: str) -> None:
    """One error naming the argument and the expected range (bools and non-finite values rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number {expected}, got {type(value).__name__}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_options(options: dict[str, Any]) -> None:
    """Validate the scalar constructor arguments of :class:`LangevinSampler` (not the latents)."""
    mode = options["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    for name in ("adapt_step_size", "bias_correction", "prior_grad", "record_diagnostics"):
        if not isinstance(options[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(options[name]).__name__}")
    for name in ("adaptation_window", "max_history"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    freeze = options["freeze_preconditioner_after"]
    if freeze is not None and (isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < 0):
        raise ValueError(f"freeze_preconditioner_after must be None or an int >= 0, got {freeze!r}")
    _check_number("target_accept", options["target_accept"], lambda v: 0.0 < v < 1.0, "in (0, 1)")
    _check_number("dual_averaging_gamma", options["dual_averaging_gamma"], lambda v: v > 0, "> 0")
    _check_number("dual_averaging_t0", options["dual_averaging_t0"], lambda v: v >= 0, ">= 0")
    _check_number("dual_averaging_kappa", options["dual_averaging_kappa"], lambda v: 0 < v <= 1, "in (0, 1]")
    backend = options["backend"]
    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}, got {backend!r}")


class LangevinSampler:
    """Langevin sampler over latent tensors, used like a ``torch.optim.Optimizer``.

    Parameters
    ----------
    latents : Tensor, iterable of Tensor, or iterable of dict
        The latent tensors (updated in place), or parameter groups ``{"params": [...], **overrides}`` where
        overrides may be any of ``step_size, beta, eps, temperature, bias_correction, prior_grad``.
    step_size : float
        Langevin step size ``eta``.
    mode : {"preconditioned", "ula", "mala"}
        See the module docstring.
    beta, eps : float
        Preconditioner EMA coefficient and ``lambda`` in ``p = 1 / (lambda + sqrt(v_hat))``.
    temperature : float
        ``tau``; 0 is deterministic predictive coding (not allowed in MALA).
    bias_correction : bool
        Divide ``v`` by ``1 - beta**t`` (``t`` = steps since the last :meth:`reset`).
    prior_grad : bool
        The gradients hold only the likelihood part; the kernel adds the N(0, I) prior gradient ``z``.
    seed, offset : int
        Noise stream; ``offset`` advances by ``ceil(numel / 4)`` per tensor per step (and by ``ceil(B / 4)``
        for the MH uniforms), so no noise is ever reused, across :meth:`reset` too.
    backend : str, optional
        Kernel backend for :func:`lpc_fast.langevin_step_`.
    target_accept : float
        Acceptance rate dual averaging aims for (0.574: optimal for MALA, Roberts & Rosenthal 1998).
    adapt_step_size : bool
        MALA only: adapt a step-size multiplier by dual averaging during the first ``adaptation_window`` MH
        steps, then fix it at the averaged value. One multiplier for the whole sampler (applied to every
        group's ``step_size``), not per chain, because the fused kernel takes a scalar step size.
    adaptation_window : int
        Number of MH steps that adapt. Counted across :meth:`reset` (adaptation is about the model, not the
        batch) unless ``reset(restart_adaptation=True)``.
    freeze_preconditioner_after : int, optional
        Freeze the (bias-corrected) preconditioner after this many steps since the last reset. Required for
        preconditioned MALA; makes ``"preconditioned"`` an exact preconditioned ULA after burn-in. ``0``
        freezes ``v = 0`` (``p = 1/eps``). Ignored in ``"ula"`` mode.
    dual_averaging_gamma, dual_averaging_t0, dual_averaging_kappa : float
        Dual-averaging constants (Hoffman & Gelman's defaults 0.05, 10, 0.75).
    record_diagnostics : bool
        Record energies and gradient norms each step (one small reduction per tensor per step).
    max_history : int
        Length of the diagnostic traces kept.
    """

    def __init__(
        self,
        latents: torch.Tensor | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        step_size: float,
        mode: str = "preconditioned",
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        prior_grad: bool = False,
        seed: int = 0,
        offset: int = 0,
        backend: str | None = None,
        target_accept: float = 0.574,
        adapt_step_size: bool = False,
        adaptation_window: int = 500,
        freeze_preconditioner_after: int | None = None,
        dual_averaging_gamma: float = 0.05,
        dual_averaging_t0: float = 10.0,
        dual_averaging_kappa: float = 0.75,
        record_diagnostics: bool = True,
        max_history: int = 10_000,
        **unknown: Any,
    ):
        if unknown:
            import difflib
            import inspect

            known = [
                p
                for p in inspect.signature(LangevinSampler.__init__).parameters
                if p not in ("self", "unknown")
            ]
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
            raise TypeError(f"LangevinSampler got an unknown argument {name!r}{hint}")
        _check_options(
            {k: v for k, v in locals().items() if k not in ("self", "latents", "unknown", "__class__")}
        )
        if adapt_step_size and mode != "mala":
            raise ValueError("adapt_step_size needs acceptance rates: use mode='mala'")
        if freeze_preconditioner_after is not None and freeze_preconditioner_after < 0:
            raise ValueError(f"freeze_preconditioner_after must be >= 0, got {freeze_preconditioner_after}")
        if adaptation_window < 0:
            raise ValueError(f"adaptation_window must be >= 0, got {adaptation_window}")
        self.mode = mode
        self.defaults = {
            "step_size": step_size,
            "beta": beta,
            "eps": eps,
            "temperature": temperature,
            "bias_correction": bias_correction,
            "prior_grad": prior_grad,
        }
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(latents, torch.Tensor):
            latents = [latents]
        try:
            items = list(latents)
        except TypeError:
            raise TypeError(
                "latents must be a tensor, an iterable of tensors or an iterable of parameter-group dicts, "
                f"got {type(latents).__name__}"
            ) from None
        if not items:
            raise ValueError("LangevinSampler got an empty list of latents")
        if any(isinstance(it, dict) for it in items) and not all(isinstance(it, dict) for it in items):
            raise TypeError("latents must be all tensors or all parameter-group dicts, not a mix")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        for group in groups:
            self._add_group(group)
        self._check_latents(backend)
        self.seed = _check_u64("seed", seed)
        self.offset = _check_u64("offset", offset)
        self.backend = backend
        self.target_accept = float(target_accept)
        self.adapt_step_size = bool(adapt_step_size)
        self.adaptation_window = int(adaptation_window)
        self.freeze_preconditioner_after = freeze_preconditioner_after
        self.record_diagnostics = bool(record_diagnostics)
        self.state: list[dict[str, Any]] = [
            {"v": None, "step": 0, "frozen": False} for _ in range(len(self._latents()))
        ]
        self._dual = _DualAveraging(
            target_accept, dual_averaging_gamma, dual_averaging_t0, dual_averaging_kappa
        )
        self._cache: dict[str, Any] | None = None
        self.last_accept: torch.Tensor | None = None
        self.diagnostics = SamplerDiagnostics(max_history)

    # ------------------------------------------------------------------ groups and bookkeeping

    def _add_group(self, group: dict[str, Any]) -> None:
        if "params" not in group:
            raise ValueError(f"parameter group {len(self.param_groups)} has no 'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        unknown = set(group) - {"params", *_GROUP_KEYS}
        if unknown:
            raise ValueError(f"unknown parameter-group keys {sorted(unknown)}; allowed: {_GROUP_KEYS}")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        for z in params:
            if not isinstance(z, torch.Tensor):
                raise TypeError(f"latents must be tensors, got {type(z).__name__}")
            if z.dtype not in _LATENT_DTYPES:
                raise TypeError(
                    f"latents must have dtype float16, bfloat16, float32 or float64, got {z.dtype}"
                )
            if z.requires_grad and not z.is_leaf:
                raise ValueError(
                    "latents must be leaf tensors (their .grad is what the step uses): "
                    "pass z.detach().requires_grad_() instead of a computed tensor"
                )
        # The fused op's own checks, run once here so a bad value fails at construction, not mid-chain.
        _check_hyper(
            full["step_size"],
            full["beta"],
            full["eps"],
            full["temperature"],
            full["bias_correction"],
            self.mode != "ula",
            full["prior_grad"],
        )
        if self.mode == "mala" and not full["temperature"] > 0:
            raise ValueError("MALA needs temperature > 0 (temperature 0 is deterministic descent)")
        self.param_groups.append(full)

    def _latents(self) -> list[tuple[dict[str, Any], torch.Tensor]]:
        return [(group, z) for group in self.param_groups for z in group["params"]]

    def _check_latents(self, backend: str | None) -> None:
        lat = [z for _, z in self._latents()]
        if len({id(z) for z in lat}) != len(lat):
            raise ValueError("a latent tensor appears more than once (it would move twice per step)")
        devices = {z.device for z in lat}
        if self.mode == "mala" and len(devices) > 1:
            raise ValueError(f"MALA needs every latent on one device, got {sorted(map(str, devices))}")
        if backend is not None:
            for device in devices:  # the reason now, not at the first step
                select_backend(device, backend)

    def _take(self, n: int) -> int:
        """Reserve the counters of ``n`` noise values; return the offset to use."""
        start = self.offset
        self.offset = (self.offset + rng.offset_increment(n)) % _U64
        return start

    def _state(self, i: int, z: torch.Tensor) -> dict[str, Any]:
        st = self.state[i]
        if st["v"] is None:
            st["v"] = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        return st

    def _maybe_freeze(self, st: dict[str, Any], group: dict[str, Any]) -> None:
        n = self.freeze_preconditioner_after
        if n is None or st["frozen"] or st["step"] < n or self.mode == "ula":
            return
        if group["bias_correction"] and st["step"] > 0:
            # Keep the value the last adaptive step used: v_hat = v / (1 - beta^t).
            st["v"].mul_(1.0 / (1.0 - group["beta"] ** st["step"]))
        st["frozen"] = True

    def _hyper(self, st: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the fused op for this tensor's next step."""
        hyper = {
            "step_size": group["step_size"],
            "beta": group["beta"],
            "eps": group["eps"],
            "temperature": group["temperature"],
            "bias_correction": group["bias_correction"],
            "precondition": self.mode != "ula",
            "prior_grad": group["prior_grad"],
        }
        if st["frozen"]:
            # beta = 1 without bias correction leaves v untouched: a fixed preconditioner.
            hyper.update(beta=1.0, bias_correction=False)
        elif self.mode == "mala" and self.freeze_preconditioner_after is None:
            hyper["precondition"] = False
        return hyper

    def _mh_active(self) -> bool:
        if self.mode != "mala":
            return False
        if self.freeze_preconditioner_after is None:
            return True
        return all(st["step"] >= self.freeze_preconditioner_after for st in self.state)

    def step_scale(self) -> float:
        """Current MALA step-size multiplier (1 unless dual averaging adapted it)."""
        if not self.adapt_step_size:
            return 1.0
        if self._dual.m < self.adaptation_window:
            return math.exp(self._dual.log_eps)
        return math.exp(self._dual.log_eps_bar)

    def preconditioner(self, latent: torch.Tensor | int) -> torch.Tensor:
        """The preconditioner ``p`` of a latent (by tensor or index): what a frozen step uses.

        Before freezing it is the value of the last adaptive step; ``1`` for unpreconditioned chains.
        """
        lat = self._latents()
        if isinstance(latent, int):
            i = latent
        else:
            matches = [j for j, (_, z) in enumerate(lat) if z is latent]
            if not matches:
                raise ValueError("tensor is not one of this sampler's latents")
            i = matches[0]
        group, z = lat[i]
        st = self.state[i]
        hyper = self._hyper(st, group) if st["v"] is not None else None
        if st["v"] is None or not hyper["precondition"]:
            return torch.ones(z.shape, dtype=torch.float32, device=z.device)
        v = st["v"]
        if not st["frozen"] and group["bias_correction"] and st["step"] > 0:
            v = v / (1.0 - group["beta"] ** st["step"])
        return 1.0 / (group["eps"] + torch.sqrt(v))

    # ------------------------------------------------------------------ Optimizer-like API

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every latent."""
        for _, z in self._latents():
            if z.grad is None:
                continue
            if set_to_none:
                z.grad = None
            else:
                z.grad.detach_()
                z.grad.zero_()

    def reset(self, *, restart_adaptation: bool = False) -> None:
        """Start new chains (new batch): zero ``v``, restart the step counters and bias correction.

        The noise stream keeps advancing, so no noise is reused. Dual-averaging adaptation is kept unless
        ``restart_adaptation``.
        """
        for st in self.state:
            if st["v"] is not None:
                st["v"].zero_()
            st["step"] = 0
            st["frozen"] = False
        self._cache = None
        self.last_accept = None
        self.diagnostics.chain_accepted = None
        self.diagnostics.chain_proposed = 0
        if restart_adaptation:
            self._dual.restart()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One Langevin step of every latent (one fused kernel call per tensor).

        Parameters
        ----------
        closure : callable, optional
            See the module docstring; required in MALA mode.

        Returns
        -------
        Tensor or None
            The energies the closure returned (in MALA: those of the current states after accept/reject).
        """
        if self.mode == "mala":
            if closure is None:
                raise ValueError("MALA needs a closure returning per-chain energies and filling .grad")
            if self._mh_active():
                return self._mala_step(closure)
        energies = None
        if closure is not None:
            with torch.enable_grad():
                energies = closure()
        self._cache = None
        grads = []
        for i, (group, z) in enumerate(self._latents()):
            if z.grad is None:
                if self.mode == "mala":
                    raise RuntimeError("the closure left a latent without .grad")
                continue
            st = self._state(i, z)
            self._maybe_freeze(st, group)
            st["step"] += 1
            grads.append(z.grad)
            lpc_fast.langevin_step_(
                z,
                z.grad,
                st["v"],
                step=st["step"],
                seed=self.seed,
                offset=self._take(z.numel()),
                backend=self.backend,
                **self._hyper(st, group),
            )
        self._record(energies, grads)
        return energies

    # ------------------------------------------------------------------ MALA

    def _chains(self, lat: list[tuple[dict[str, Any], torch.Tensor]]) -> int:
        sizes = {z.shape[0] if z.dim() > 0 else None for _, z in lat}
        if len(sizes) != 1 or None in sizes:
            raise ValueError("MALA needs every latent to have the same leading (chain) dimension")
        return sizes.pop()

    def _evaluate(self, closure: Callable[[], torch.Tensor], lat, n_chains: int):
        with torch.enable_grad():
            energies = closure()
        if not isinstance(energies, torch.Tensor) or tuple(energies.shape) != (n_chains,):
            raise ValueError(f"the closure must return per-chain energies of shape [{n_chains}]")
        grads = []
        for _, z in lat:
            if z.grad is None:
                raise RuntimeError("the closure left a latent without .grad")
            grads.append(z.grad.detach().clone())
        return energies.detach().clone(), grads

    def _cache_valid(self, lat) -> bool:
        if self._cache is None:
            return False
        return all(c.shape == z.shape and torch.equal(c, z) for c, (_, z) in zip(self._cache["z"], lat))

    def _mala_step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        lat = self._latents()
        n_chains = self._chains(lat)
        temperature = {g["temperature"] for g, _ in lat}
        if len(temperature) != 1:
            raise ValueError("MALA needs one temperature for all latents (the energy is joint)")
        tau = temperature.pop()
        if self._cache_valid(lat):
            e0, g0 = self._cache["energy"], self._cache["grad"]
        else:
            e0, g0 = self._evaluate(closure, lat, n_chains)
        z0 = [z.detach().clone() for _, z in lat]
        scale = self.step_scale()
        etas = []
        for i, (group, z) in enumerate(lat):
            st = self._state(i, z)
            self._maybe_freeze(st, group)
            st["step"] += 1
            hyper = self._hyper(st, group)
            hyper["step_size"] = group["step_size"] * scale
            etas.append((hyper["step_size"], self.preconditioner(i).to(torch.float64)))
            lpc_fast.langevin_step_(
                z,
                g0[i],
                st["v"],
                step=st["step"],
                seed=self.seed,
                offset=self._take(z.numel()),
                backend=self.backend,
                **hyper,
            )
        e1, g1 = self._evaluate(closure, lat, n_chains)
        # log alpha = (E0 - E1)/tau + log q(z0 | z1) - log q(z1 | z0); the Gaussian proposal's normalising
        # constants cancel because p is frozen. Both densities use the realised float values, in float64.
        log_alpha = (e0.to(torch.float64) - e1.to(torch.float64)) / tau
        for i, (group, z) in enumerate(lat):
            eta, p = etas[i]
            a = z0[i].to(torch.float64)
            b = z.detach().to(torch.float64)
            ga = g0[i].to(torch.float64)
            gb = g1[i].to(torch.float64)
            if group["prior_grad"]:
                ga, gb = ga + a, gb + b
            denom = 4.0 * eta * tau * p
            fwd = (b - a + eta * p * ga) ** 2 / denom
            rev = (a - b + eta * p * gb) ** 2 / denom
            log_alpha = log_alpha + (fwd - rev).reshape(n_chains, -1).sum(dim=1)
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf, posinf=-math.inf)
        u = rng.philox_uniform(n_chains, seed=self.seed, offset=self._take(n_chains), device=log_alpha.device)
        # log in float32: u is a float32 uniform anyway, and float64 log is slow on some CPU builds.
        accept = torch.log(u).to(torch.float64) < log_alpha
        for i, (_, z) in enumerate(lat):
            mask = accept.view(n_chains, *([1] * (z.dim() - 1)))
            z.copy_(torch.where(mask, z, z0[i]))
            g1[i] = torch.where(mask, g1[i], g0[i])
            z.grad = g1[i].clone()
        energies = torch.where(accept.to(e1.device), e1, e0)
        self._cache = {"z": [z.detach().clone() for _, z in lat], "energy": energies, "grad": g1}
        self.last_accept = accept
        prob = float(torch.exp(torch.clamp(log_alpha, max=0.0).to(torch.float32)).to(torch.float64).mean())
        if self.adapt_step_size and self._dual.m < self.adaptation_window:
            self._dual.update(prob)
        d = self.diagnostics
        n_acc = int(accept.sum())
        d.accepted += n_acc
        d.proposed += n_chains
        acc_long = accept.to(torch.int64)
        d.chain_accepted = acc_long if d.chain_accepted is None else d.chain_accepted + acc_long
        d.chain_proposed += 1
        d.accept_prob.append(prob)
        d.step_scale.append(scale)
        self._record(energies, g1)
        return energies

    def _record(self, energies: torch.Tensor | None, grads: list[torch.Tensor]) -> None:
        if not self.record_diagnostics:
            return
        if isinstance(energies, torch.Tensor):
            self.diagnostics.energy.append(energies.detach().clone())
        if grads:
            sq = sum(g.detach().to(torch.float64).pow(2).sum() for g in grads)
            self.diagnostics.grad_norm.append(torch.sqrt(sq))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the chains bit for bit (together with the latents themselves)."""
        index = 0
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        cache = None
        if self._cache is not None:
            cache = {
                "z": [c.clone() for c in self._cache["z"]],
                "energy": self._cache["energy"].clone(),
                "grad": [g.clone() for g in self._cache["grad"]],
            }
        return {
            "mode": self.mode,
            "param_groups": groups,
            "state": [
                {
                    "v": None if st["v"] is None else st["v"].clone(),
                    "step": st["step"],
                    "frozen": st["frozen"],
                }
                for st in self.state
            ],
            "seed": self.seed,
            "offset": self.offset,
            "dual_averaging": self._dual.state_dict(),
            "mala_cache": cache,
            "last_accept": None if self.last_accept is None else self.last_accept.clone(),
            "diagnostics": self.diagnostics.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a sampler built over latents of the same shapes."""
        if state_dict["mode"] != self.mode:
            raise ValueError(f"state is for mode {state_dict['mode']!r}, this sampler is {self.mode!r}")
        lat = self._latents()
        if len(state_dict["state"]) != len(lat) or len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError("state_dict has a different number of latents or parameter groups")
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("state_dict has a different parameter-group layout")
            group.update({k: v for k, v in saved.items() if k != "params"})
        for st, saved, (_, z) in zip(self.state, state_dict["state"], lat):
            v = saved["v"]
            if v is not None and v.shape != z.shape:
                raise ValueError(
                    f"saved state of shape {tuple(v.shape)} for a latent of shape {tuple(z.shape)}"
                )
            st["v"] = None if v is None else v.to(device=z.device, dtype=torch.float32, copy=True)
            st["step"] = int(saved["step"])
            st["frozen"] = bool(saved["frozen"])
        self.seed = _check_u64("seed", state_dict["seed"])
        self.offset = _check_u64("offset", state_dict["offset"])
        self._dual.load_state_dict(state_dict["dual_averaging"])
        cache = state_dict["mala_cache"]
        if cache is None:
            self._cache = None
        else:
            self._cache = {
                "z": [c.to(z.device, copy=True) for c, (_, z) in zip(cache["z"], lat)],
                "energy": cache["energy"].clone(),
                "grad": [g.to(z.device, copy=True) for g, (_, z) in zip(cache["grad"], lat)],
            }
        la = state_dict["last_accept"]
        self.last_accept = None if la is None else la.clone()
        self.diagnostics.load_state_dict(state_dict["diagnostics"])

    def __repr__(self) -> str:
        n = len(self._latents())
        return (
            f"LangevinSampler(mode={self.mode!r}, latents={n}, step_size={self.defaults['step_size']}, "
            f"seed={self.seed}, offset={self.offset})"
        )
