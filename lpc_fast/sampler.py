"""``LangevinSampler``: a Langevin sampler over latent tensors that is a ``torch.optim.Optimizer``.

It replaces a hand-written inner loop ``z -= lr * z.grad; z += sqrt(2 * lr) * torch.randn_like(z)`` by one
fused kernel call per step for all its latents, with the noise a pure function of ``(seed, offset)``
(LPC.md §5), so a run is reproducible on any device and can be checkpointed mid-chain. Being an
``Optimizer``, it works wherever one is expected: ``param_groups[i]["lr"]`` is the step size ``eta``,
``torch.optim.lr_scheduler`` schedules change it, and ``state_dict`` / ``load_state_dict``, hooks,
``zero_grad`` and ``add_param_group`` behave as in torch.

Modes
-----
``"ula"`` (default)
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
``E = -log p(x, z)``), after filling every latent's ``.grad`` with ``dE/dz`` (without the Gaussian prior's
part ``weight_decay * z`` when ``weight_decay`` is set, which the kernel adds; the returned energies must
always include the prior). It must zero or overwrite the
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

Hot path
--------
The ULA and preconditioned steps run from a cached plan: the latents split into runs of consecutive
tensors that share one call's scalar arguments (one run per parameter group, normally), each updated by
one multi-tensor fused call (:func:`lpc_fast.langevin_step_foreach_`). The plan is rebuilt, and its
hyper-parameters validated, only when something it depends on changes: a parameter group's values (a
scheduler writing ``lr``) or tensors, which latents have a ``.grad``, a preconditioner freezing,
:meth:`LangevinSampler.reset` or ``load_state_dict``.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from . import ops, rng
from ._schemas import HYPER_NAMES
from .dispatch import BACKEND_NAMES, _context_stack, env_request, select_backend
from .ops import _check_hyper, _check_real
from .reference import resolve_weight_decay

__all__ = ["MODES", "LangevinSampler", "SamplerDiagnostics"]

MODES = ("preconditioned", "ula", "mala")
_U64 = 2**64
_I64_LIMIT = 2**63
#: Backends whose kernels check the tensors themselves (the direct call of a run relies on it).
_CHECKING_BACKENDS = ("cpu", "cuda", "triton")
#: Per-group hyper-parameters (``step_size`` is accepted as an alias of ``lr``).
_HYPER_KEYS = ("lr", "beta", "eps", "temperature", "bias_correction", "weight_decay")
#: ``prior_grad`` is accepted as an alias of ``weight_decay`` (True is 1, False is 0).
_GROUP_KEYS = (*_HYPER_KEYS, "step_size", "prior_grad")
#: Keys torch's own tools put into parameter groups (schedulers, named parameters).
_TORCH_GROUP_KEYS = ("initial_lr", "param_names")


def _get_hyper(g: dict[str, Any]) -> tuple:
    # An explicit tuple (as fast as an itemgetter, which torch.compile cannot trace).
    return (g["lr"], g["beta"], g["eps"], g["temperature"], g["bias_correction"], g["weight_decay"])


_LATENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_update(
    zs: list[torch.Tensor],
    grads: list[torch.Tensor],
    vs: list[torch.Tensor],
    *,
    step: int,
    seed: int,
    offset: int,
    backend: str | None,
    hyper: dict[str, Any],
) -> None:
    """One fused Langevin step of every tensor, one kernel launch; tensor ``i`` draws the noise at
    ``offset + Σ_{j<i} offset_increment(zs[j].numel())`` (the sampler's one call into the kernels)."""
    if len(zs) == 1:
        ops.langevin_step_(
            zs[0], grads[0], vs[0], step=step, seed=seed, offset=offset, backend=backend, **hyper
        )
    else:
        ops.langevin_step_foreach_(
            zs, grads, vs, step=step, seed=seed, offset=offset, backend=backend, **hyper
        )


class SamplerDiagnostics:
    """Traces of a :class:`LangevinSampler` run (bounded to the last ``max_history`` steps).

    Recorded only with ``record_diagnostics=True``. Recording never synchronises with the device and
    reduces each gradient in float32 (never float64): traces and running sums are tensors on the
    latents' device, read on demand (:meth:`mean_energy`, :meth:`mean_grad_norm`, the ``*_trace``
    methods). The Metropolis-Hastings statistics are host numbers, because MALA's accept/reject
    synchronises anyway.

    Attributes
    ----------
    energy : deque of Tensor
        Per-step energies the closure returned (detached copies; the current state's in MALA).
    grad_norm : deque of Tensor
        Per-step L2 norm of the gradient used for the move, over all latents (float32, 0-d).
    energy_sum, grad_norm_sum : Tensor or None
        Running sums of the recorded energies (per chain) and gradient norms since construction.
    energy_steps, grad_steps : int
        How many steps those sums hold.
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
        self.energy_sum: torch.Tensor | None = None
        self.grad_norm_sum: torch.Tensor | None = None
        self.energy_steps = 0
        self.grad_steps = 0
        self.accept_prob: deque[float] = deque(maxlen=self.max_history)
        self.step_scale: deque[float] = deque(maxlen=self.max_history)
        self.accepted = 0
        self.proposed = 0
        self.chain_accepted: torch.Tensor | None = None
        self.chain_proposed = 0

    def record(self, energies: torch.Tensor | None, grads: list[torch.Tensor]) -> None:
        """Append one step's energies and gradient norm (device-side, no synchronisation)."""
        if isinstance(energies, torch.Tensor):
            e = energies.detach().clone()
            self.energy.append(e)
            self.energy_sum = e.clone() if self.energy_sum is None else self.energy_sum.add_(e)
            self.energy_steps += 1
        if grads:
            norms = [torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads]
            norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
            self.grad_norm.append(norm)
            self.grad_norm_sum = norm.clone() if self.grad_norm_sum is None else self.grad_norm_sum.add_(norm)
            self.grad_steps += 1

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted chain moves over all MH steps so far (NaN before the first)."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    def chain_acceptance_rate(self) -> torch.Tensor | None:
        """Per-chain acceptance rate since the last reset (``None`` before the first MH step)."""
        if self.chain_accepted is None or self.chain_proposed == 0:
            return None
        return self.chain_accepted.to(torch.float64) / self.chain_proposed

    def mean_energy(self) -> torch.Tensor | None:
        """Per-chain mean of the recorded energies since construction (``None`` before the first)."""
        return None if self.energy_sum is None else self.energy_sum / self.energy_steps

    def mean_grad_norm(self) -> torch.Tensor | None:
        """Mean of the recorded gradient norms since construction (``None`` before the first)."""
        return None if self.grad_norm_sum is None else self.grad_norm_sum / self.grad_steps

    def energy_trace(self) -> torch.Tensor:
        """Recorded energies stacked to ``[T, ...]``."""
        return torch.stack(list(self.energy)) if self.energy else torch.empty(0)

    def grad_norm_trace(self) -> torch.Tensor:
        """Recorded gradient norms, ``[T]``."""
        return torch.stack(list(self.grad_norm)) if self.grad_norm else torch.empty(0)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data copy of every trace and counter."""

        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.clone()

        return {
            "max_history": self.max_history,
            "energy": [e.clone() for e in self.energy],
            "grad_norm": [g.clone() for g in self.grad_norm],
            "energy_sum": copy(self.energy_sum),
            "grad_norm_sum": copy(self.grad_norm_sum),
            "energy_steps": self.energy_steps,
            "grad_steps": self.grad_steps,
            "accept_prob": list(self.accept_prob),
            "step_scale": list(self.step_scale),
            "accepted": self.accepted,
            "proposed": self.proposed,
            "chain_accepted": copy(self.chain_accepted),
            "chain_proposed": self.chain_proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.clone()

        self.__init__(state["max_history"])
        self.energy.extend(e.clone() for e in state["energy"])
        self.grad_norm.extend(g.clone() for g in state["grad_norm"])
        self.energy_sum = copy(state.get("energy_sum"))
        self.grad_norm_sum = copy(state.get("grad_norm_sum"))
        self.energy_steps = int(state.get("energy_steps", 0))
        self.grad_steps = int(state.get("grad_steps", 0))
        self.accept_prob.extend(state["accept_prob"])
        self.step_scale.extend(state["step_scale"])
        self.accepted = int(state["accepted"])
        self.proposed = int(state["proposed"])
        self.chain_accepted = copy(state["chain_accepted"])
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
    for name in ("adapt_step_size", "bias_correction", "record_diagnostics", "capturable"):
        if not isinstance(options[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(options[name]).__name__}")
    for name in ("adaptation_window", "max_history"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    freeze = options["freeze_preconditioner_after"]
    if freeze is not None and (isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < 0):
        raise ValueError(f"freeze_preconditioner_after must be None or an int >= 0, got {freeze!r}")
    if options["seed"] is not None:
        _check_u64("seed", options["seed"])
    _check_u64("offset", options["offset"])
    _check_number("target_accept", options["target_accept"], lambda v: 0.0 < v < 1.0, "in (0, 1)")
    _check_number("dual_averaging_gamma", options["dual_averaging_gamma"], lambda v: v > 0, "> 0")
    _check_number("dual_averaging_t0", options["dual_averaging_t0"], lambda v: v >= 0, ">= 0")
    _check_number("dual_averaging_kappa", options["dual_averaging_kappa"], lambda v: 0 < v <= 1, "in (0, 1]")
    if options["capturable"]:
        if mode == "mala":
            raise ValueError(
                "capturable=True supports mode 'ula' and 'preconditioned' "
                "(MALA decides accept/reject on the host)"
            )
        if freeze is not None:
            raise ValueError(
                "capturable=True needs freeze_preconditioner_after=None (freezing is decided on the host "
                "from the step count, which capturable mode keeps on the device)"
            )
        if options["record_diagnostics"]:
            raise ValueError("capturable=True cannot record_diagnostics (the records are host-side lists)")
    backend = options["backend"]
    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}, got {backend!r}")


def _resolve_lr(lr: Any, step_size: Any, where: str) -> tuple[str, Any]:
    """``(name the caller used, value)`` of the step size given as ``lr`` or its alias ``step_size``."""
    if step_size is None:
        return "lr", lr
    if lr is not None and lr != step_size:
        raise ValueError(f"{where} gives both lr={lr!r} and step_size={step_size!r}: they are one setting")
    return "step_size", step_size


def _resolve_weight_decay(prior_grad: Any, weight_decay: Any, where: str) -> Any:
    """The prior precision given as ``weight_decay`` or its alias ``prior_grad`` (True is 1, False is 0)."""
    try:
        return resolve_weight_decay(prior_grad, weight_decay)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


class _Run:
    """Consecutive latents that share one fused call: device, step count, frozen flag and hyper-parameters."""

    __slots__ = ("zs", "vs", "states", "step", "freeze_at", "counters", "hyper", "key", "direct")

    def __init__(self, key: tuple, step: int, freeze_at: int | None, hyper: dict[str, Any]) -> None:
        self.key = key
        self.zs: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.states: list[dict[str, Any]] = []
        self.step = step
        self.freeze_at = freeze_at
        self.counters = 0
        self.hyper = hyper
        #: (use_backend context, LPC_FAST_BACKEND value, the backend's op, hyper-parameters in schema
        #: order): the op this run calls while the selection inputs are the same objects (see step).
        self.direct: tuple | None = None


class _Plan:
    """The cached ULA / preconditioned step: runs, the latents without a gradient, and what it assumed."""

    __slots__ = ("runs", "idle", "snapshot", "settings")

    def __init__(
        self, runs: list[_Run], idle: list[torch.Tensor], snapshot: list[tuple], settings: tuple
    ) -> None:
        self.runs = runs
        self.idle = idle
        self.snapshot = snapshot
        self.settings = settings

    def grads(self, groups: list[dict[str, Any]], settings: tuple) -> list[list[torch.Tensor]] | None:
        """Each run's gradients, or ``None`` when the plan no longer describes this step."""
        snapshot = self.snapshot
        if settings != self.settings or len(groups) != len(snapshot):
            return None
        for g, (hyper, ids) in zip(groups, snapshot):  # _snapshot(groups) != snapshot, without building it
            if _get_hyper(g) != hyper or tuple(map(id, g["params"])) != ids:
                return None
        for z in self.idle:
            if z.grad is not None:
                return None
        out = []
        for run in self.runs:
            if run.freeze_at is not None and run.step >= run.freeze_at:
                return None
            gs = []
            for z in run.zs:
                g = z.grad
                if g is None:
                    return None
                gs.append(g)
            out.append(gs)
        return out


def _upgrade_group(group: dict[str, Any]) -> dict[str, Any]:
    """A saved parameter group with ``prior_grad`` as one with the equivalent ``weight_decay``."""
    group = dict(group)
    prior_grad = group.pop("prior_grad")
    group["weight_decay"] = resolve_weight_decay(bool(prior_grad), group.get("weight_decay"))
    return group


def _snapshot(groups: list[dict[str, Any]]) -> list[tuple]:
    """What a plan depends on in the parameter groups: hyper-parameter values and tensor identities."""
    return [(_get_hyper(g), tuple(map(id, g["params"]))) for g in groups]


def _lean_step_hooks(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an optimizer ``step`` as ``torch.optim.Optimizer.profile_hook_step`` does, minus its idle cost.

    Torch's wrapper enters a ``record_function`` range on every call, about 20 us on a CPU: more than the
    whole fused update of a few thousand latents. This one runs the same global and per-instance step
    pre- and post-hooks in the same order, with the same argument rewriting, and opens the profiler range
    only while the autograd profiler is recording, so profiles still show ``Optimizer.step#<class>.step``.
    """

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        # (torch.compile traces the step itself; the profiler query would break its graph.)
        if not torch.compiler.is_compiling() and torch._C._autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
                return _run_with_hooks(step, self, args, kwargs)
        return _run_with_hooks(step, self, args, kwargs)

    wrapper.hooked = True  # type: ignore[attr-defined]  # what torch.optim checks before wrapping
    return wrapper


def _run_with_hooks(step: Callable[..., Any], self: Any, args: tuple, kwargs: dict) -> Any:
    if _global_optimizer_pre_hooks or self._optimizer_step_pre_hooks:
        for pre_hook in chain(_global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{step} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
    out = step(*args, **kwargs)
    self._optimizer_step_code()
    if _global_optimizer_post_hooks or self._optimizer_step_post_hooks:
        for post_hook in chain(
            self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values()
        ):
            post_hook(self, args, kwargs)
    return out


class LangevinSampler(torch.optim.Optimizer):
    """Langevin sampler over latent tensors; a ``torch.optim.Optimizer``.

    With no options it is plain Langevin (ULA), ``z <- z - lr * grad + sqrt(2 * lr * temperature) * xi``,
    with a fresh noise stream seeded from torch's default generator.

    Parameters
    ----------
    params : Tensor, iterable of Tensor, or iterable of dict
        The latent tensors (updated in place; plain tensors, tensors that require grad, or
        ``nn.Parameter``), or parameter groups ``{"params": [...], **overrides}`` where overrides may be
        any of ``lr`` (or its alias ``step_size``), ``beta``, ``eps``, ``temperature``,
        ``bias_correction``, ``weight_decay`` (or its alias ``prior_grad``).
    lr : float
        Langevin step size ``eta`` (``param_groups[i]["lr"]``, which schedulers change).
    step_size : float, optional
        Alias of ``lr``.
    mode : {"ula", "preconditioned", "mala"}
        See the module docstring. ``"ula"`` by default; the paper's preconditioned sampler is opt-in.
    beta, eps : float
        Preconditioner EMA coefficient and ``lambda`` in ``p = 1 / (lambda + sqrt(v_hat))``.
    temperature : float
        ``tau``; 0 is deterministic predictive coding (not allowed in MALA).
    bias_correction : bool
        Divide ``v`` by ``1 - beta**t`` (``t`` = steps since the last :meth:`reset`).
    weight_decay : float
        ``lambda >= 0``, the precision of a Gaussian prior N(0, I/lambda) on the latents: the kernel adds its
        gradient ``lambda * z`` to ``.grad`` (``torch.optim``'s weight decay, read as a prior). Default 0:
        the gradients already hold the whole energy's.
    prior_grad : bool, optional
        Alias: ``True`` is ``weight_decay=1`` (the N(0, I) prior of LPC), ``False`` is ``weight_decay=0``.
    seed : int, optional
        Unsigned 64-bit noise key. ``None`` (default) draws one from torch's default generator
        (:func:`lpc_fast.rng.draw_seed`): ``torch.manual_seed`` makes a run reproducible and two samplers
        built one after another never share noise.
    offset : int
        First noise counter; it advances by ``ceil(numel / 4)`` per tensor per step (and by ``ceil(B / 4)``
        for the MH uniforms), so no noise is ever reused, across :meth:`reset` too.
    backend : str, optional
        Kernel backend for :func:`lpc_fast.langevin_step_`.
    target_accept : float
        Acceptance rate dual averaging aims for (0.574: optimal for MALA, Roberts & Rosenthal 1998).
    adapt_step_size : bool
        MALA only: adapt a step-size multiplier by dual averaging during the first ``adaptation_window`` MH
        steps, then fix it at the averaged value. One multiplier for the whole sampler (applied to every
        group's ``lr``), not per chain, because the fused kernel takes a scalar step size.
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
        Record energies and gradient norms each step (:class:`SamplerDiagnostics`; no host
        synchronisation). Off by default: it costs one reduction per tensor per step.
    max_history : int
        Length of the diagnostic traces kept.
    capturable : bool
        Keep the noise position and the step counter on the latents' device, in an int64 tensor
        ``[seed, offset, step]`` that the fused kernels read and advance themselves (the ``rng_state``
        mode of :func:`lpc_fast.langevin_step_`), as ``torch.optim.Adam(capturable=True)`` keeps its
        step on the device. ``step()`` then makes no host decision that changes from step to step,
        so it can be captured in a CUDA graph together with the energy's forward and backward, and
        every replay draws fresh noise. The chain is bit-identical to ``capturable=False``. Needs
        mode ``"ula"`` or ``"preconditioned"``, no ``freeze_preconditioner_after``, no
        ``record_diagnostics``, and every latent with a gradient in one fused call (one device, the
        same hyper-parameters in every group). The step counter is the sampler's, shared by its
        latents. Reading :attr:`offset` or :meth:`state_dict` synchronises with the device.

    Examples
    --------
    >>> sampler = LangevinSampler([z], lr=0.1)              # ULA, seeded from torch's generator
    >>> sched = torch.optim.lr_scheduler.StepLR(sampler, step_size=10, gamma=0.5)
    >>> for t in range(T):
    ...     sampler.zero_grad()
    ...     model.energy(z, x).sum().backward()
    ...     sampler.step()
    ...     sched.step()
    """

    def __init__(
        self,
        params: torch.Tensor | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        *,
        step_size: float | None = None,
        mode: str = "ula",
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        weight_decay: float | None = None,
        prior_grad: bool | None = None,
        seed: int | None = None,
        offset: int = 0,
        backend: str | None = None,
        target_accept: float = 0.574,
        adapt_step_size: bool = False,
        adaptation_window: int = 500,
        freeze_preconditioner_after: int | None = None,
        dual_averaging_gamma: float = 0.05,
        dual_averaging_t0: float = 10.0,
        dual_averaging_kappa: float = 0.75,
        record_diagnostics: bool = False,
        max_history: int = 10_000,
        capturable: bool = False,
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
        if lr is None and step_size is None:
            raise TypeError("LangevinSampler needs lr, the Langevin step size eta (step_size= is an alias)")
        lr_name, lr = _resolve_lr(lr, step_size, "LangevinSampler")
        weight_decay = _resolve_weight_decay(prior_grad, weight_decay, "LangevinSampler")
        _check_options(
            {k: v for k, v in locals().items() if k not in ("self", "params", "unknown", "__class__")}
        )
        if adapt_step_size and mode != "mala":
            raise ValueError("adapt_step_size needs acceptance rates: use mode='mala'")
        self.mode = mode
        self.backend = backend
        self.target_accept = float(target_accept)
        self.adapt_step_size = bool(adapt_step_size)
        self.adaptation_window = int(adaptation_window)
        self.freeze_preconditioner_after = freeze_preconditioner_after
        self.record_diagnostics = bool(record_diagnostics)
        self.capturable = capturable
        #: Capturable mode: the device tensor [seed, offset, step] (created at the first step).
        self._rng_state: torch.Tensor | None = None
        self._lr_name = lr_name
        self._plan: _Plan | None = None
        if isinstance(params, torch.Tensor):
            params = [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError(
                "latents must be a tensor, an iterable of tensors or an iterable of parameter-group dicts, "
                f"got {type(params).__name__}"
            ) from None
        if not items:
            raise ValueError("LangevinSampler got an empty list of latents")
        if any(isinstance(it, dict) for it in items) and not all(isinstance(it, dict) for it in items):
            raise TypeError("latents must be all tensors or all parameter-group dicts, not a mix")
        defaults = {
            "lr": lr,
            "beta": beta,
            "eps": eps,
            "temperature": temperature,
            "bias_correction": bias_correction,
            "weight_decay": weight_decay,
        }
        super().__init__(items, defaults)
        self._lr_name = "lr"
        self._noise = rng.NoiseStream(seed, offset)
        self._dual = _DualAveraging(
            target_accept, dual_averaging_gamma, dual_averaging_t0, dual_averaging_kappa
        )
        self._cache: dict[str, Any] | None = None
        self.last_accept: torch.Tensor | None = None
        self.diagnostics = SamplerDiagnostics(max_history)

    # ------------------------------------------------------------------ groups and bookkeeping

    @property
    def seed(self) -> int:
        """The noise stream's 64-bit key."""
        return self._noise.seed

    @property
    def offset(self) -> int:
        """The next unused noise counter (capturable mode: read from the device)."""
        self._sync_noise()
        return self._noise.offset

    def _sync_noise(self) -> None:
        """Capturable mode: copy the device's noise position into the host stream (synchronises)."""
        if self._rng_state is not None:
            self._noise.offset = int(self._rng_state[1]) % _U64

    def _device_step(self) -> int:
        """Capturable mode: steps taken since the last reset, as the device counts them."""
        return 0 if self._rng_state is None else int(self._rng_state[2]) - 1

    def _device_state(self, device: torch.device) -> torch.Tensor:
        """The ``[seed, offset, step]`` tensor of capturable mode on ``device`` (made at the first step)."""
        state = self._rng_state
        if state is None:
            steps = {st["step"] for st in self.state.values() if "step" in st}
            state = self._rng_state = ops.make_rng_state(
                self._noise.seed, self._noise.offset, max(steps, default=0) + 1, device=device
            )
        elif state.device != device:
            raise ValueError(f"capturable=True keeps its state on {state.device}; got latents on {device}")
        return state

    @property
    def noise(self) -> rng.NoiseStream:
        """The ``(seed, offset)`` noise stream every step reserves its counters from."""
        return self._noise

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of latents (``{"params": [...], **overrides}``), validated as the constructor's."""
        index = len(self.param_groups)
        if not isinstance(param_group, dict):
            raise TypeError(f"parameter group {index} must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"parameter group {index} has no 'params' entry")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        unknown = set(group) - {"params", *_GROUP_KEYS, *_TORCH_GROUP_KEYS}
        if unknown:
            raise ValueError(f"unknown parameter-group keys {sorted(unknown)}; allowed: {_GROUP_KEYS}")
        lr_name = "lr" if "lr" in group else self._lr_name
        if "step_size" in group:
            lr_name, group["lr"] = _resolve_lr(
                group.get("lr"), group.pop("step_size"), f"parameter group {index}"
            )
        if "prior_grad" in group:
            group["weight_decay"] = _resolve_weight_decay(
                group.pop("prior_grad"), group.get("weight_decay"), f"parameter group {index}"
            )
        seen = {id(z) for g in self.param_groups for z in g["params"]}
        devices = {z.device for g in self.param_groups for z in g["params"]}
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
            if id(z) in seen:
                raise ValueError("a latent tensor appears more than once (it would move twice per step)")
            seen.add(id(z))
            devices.add(z.device)
        if self.mode == "mala" and len(devices) > 1:
            raise ValueError(f"MALA needs every latent on one device, got {sorted(map(str, devices))}")
        if self.backend is not None:
            for device in {z.device for z in params}:  # the reason now, not at the first step
                select_backend(device, self.backend)
        full = {**self.defaults, **group, "params": params}
        # The fused op's own checks, run here so a bad value fails at once, not mid-chain.
        self._check_group(full, lr_name)
        super().add_param_group(full)
        self._plan = None

    def _check_group(self, group: dict[str, Any], lr_name: str = "lr") -> None:
        lr = group["lr"]
        _check_real(lr_name, lr)
        if not lr > 0:
            raise ValueError(f"{lr_name} must be > 0, got {lr}")
        _check_hyper(
            lr,
            group["beta"],
            group["eps"],
            group["temperature"],
            group["bias_correction"],
            self.mode != "ula",
            group["weight_decay"],
        )
        if self.mode == "mala" and not group["temperature"] > 0:
            raise ValueError("MALA needs temperature > 0 (temperature 0 is deterministic descent)")

    def _latents(self) -> list[tuple[dict[str, Any], torch.Tensor]]:
        return [(group, z) for group in self.param_groups for z in group["params"]]

    def _state(self, z: torch.Tensor) -> dict[str, Any]:
        st = self.state[z]
        if "v" not in st:
            st.update(step=0, v=torch.zeros(z.shape, dtype=torch.float32, device=z.device), frozen=False)
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
            "step_size": float(group["lr"]),
            "beta": float(group["beta"]),
            "eps": float(group["eps"]),
            "temperature": float(group["temperature"]),
            "bias_correction": group["bias_correction"],
            "precondition": self.mode != "ula",
            "weight_decay": float(group["weight_decay"]),
        }
        if st["frozen"]:
            # beta = 1 without bias correction leaves v untouched: a fixed preconditioner.
            hyper.update(beta=1.0, bias_correction=False)
        elif self.mode == "mala" and self.freeze_preconditioner_after is None:
            hyper["precondition"] = False
        return hyper

    def _build_plan(self) -> _Plan:
        """Validate the groups, freeze what is due, and split the latents with a gradient into runs."""
        runs: list[_Run] = []
        idle: list[torch.Tensor] = []
        n = self.freeze_preconditioner_after
        for group in self.param_groups:
            self._check_group(group)
            for z in group["params"]:
                if z.grad is None:
                    idle.append(z)  # skipped like an optimizer skips a parameter without a gradient
                    continue
                st = self._state(z)
                self._maybe_freeze(st, group)
                hyper = self._hyper(st, group)
                key = (z.device, st["step"], st["frozen"], *hyper.values())
                if not runs or runs[-1].key != key:
                    freeze_at = None if n is None or st["frozen"] or self.mode == "ula" else n
                    runs.append(_Run(key, st["step"], freeze_at, hyper))
                run = runs[-1]
                run.zs.append(z)
                run.vs.append(st["v"])
                run.states.append(st)
        for run in runs:
            run.counters = rng.foreach_offsets(0, [z.numel() for z in run.zs])[1]
        self._plan = _Plan(runs, idle, _snapshot(self.param_groups), self._settings())
        return self._plan

    def _settings(self) -> tuple:
        """The sampler-wide attributes a plan depends on."""
        return (self.mode, self.freeze_preconditioner_after)

    def _mh_active(self) -> bool:
        if self.mode != "mala":
            return False
        n = self.freeze_preconditioner_after
        if n is None:
            return True
        return all(self.state.get(z, {}).get("step", 0) >= n for _, z in self._latents())

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
            group, z = lat[latent]
        else:
            matches = [(g, z) for g, z in lat if z is latent]
            if not matches:
                raise ValueError("tensor is not one of this sampler's latents")
            group, z = matches[0]
        st = self.state.get(z)
        if not st or not self._hyper(st, group)["precondition"]:
            return torch.ones(z.shape, dtype=torch.float32, device=z.device)
        v = st["v"]
        step = self._device_step() if self._rng_state is not None else st["step"]
        if not st["frozen"] and group["bias_correction"] and step > 0:
            v = v / (1.0 - group["beta"] ** step)
        return 1.0 / (group["eps"] + torch.sqrt(v))

    def _patch_step_function(self) -> None:
        # torch.optim.Optimizer calls this from __init__ and __setstate__ to wrap the class's step with
        # its hooks and a profiler range; ours runs the same hooks without the idle profiler cost.
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        if not getattr(type(self).step, "hooked", None):
            type(self).step = _lean_step_hooks(type(self).step)

    def reset(self, *, restart_adaptation: bool = False) -> None:
        """Start new chains (new batch): zero ``v``, restart the step counters and bias correction.

        The noise stream keeps advancing, so no noise is reused. Dual-averaging adaptation is kept unless
        ``restart_adaptation``. Persistent chains (the same latents continued) need no reset.
        """
        for st in self.state.values():
            if "v" in st:
                st["v"].zero_()
                st["step"] = 0
                st["frozen"] = False
        if self._rng_state is not None:
            self._rng_state[2].fill_(1)  # the device step counter; the noise position keeps advancing
        self._plan = None
        self._cache = None
        self.last_accept = None
        self.diagnostics.chain_accepted = None
        self.diagnostics.chain_proposed = 0
        if restart_adaptation:
            self._dual.restart()

    # ------------------------------------------------------------------ the step

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One Langevin step of every latent with a gradient (one fused call per run of latents).

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
        if self.capturable:
            return self._capturable_step(closure)
        energies = None
        if closure is not None:
            with torch.enable_grad():
                energies = closure()
            self._cache = None
        plan = self._plan
        grads = (
            None
            if plan is None
            else plan.grads(self.param_groups, (self.mode, self.freeze_preconditioner_after))
        )
        if grads is None:
            if self.mode == "mala":
                for _, z in self._latents():
                    if z.grad is None:
                        raise RuntimeError("the closure left a latent without .grad")
            plan = self._build_plan()
            grads = [[z.grad for z in run.zs] for run in plan.runs]
        noise, backend = self._noise, self.backend
        seed = noise.seed
        seed64 = seed - _U64 if seed >= _I64_LIMIT else seed
        ctx = _context_stack[-1] if _context_stack else None
        env = env_request()
        compiling = torch.compiler.is_compiling()
        for run, gs in zip(plan.runs, grads):
            s = run.step = run.step + 1
            for st in run.states:
                st["step"] = s
            # The run's op called directly while the backend selection's inputs (backend=, the
            # use_backend() context, LPC_FAST_BACKEND) are the objects it was chosen for: what the
            # public op's fast path does, without its per-call argument handling. The plan's
            # hyper-parameters are validated; the kernels check the tensors.
            zs, vs = run.zs, run.vs
            offset = noise.reserve(run.counters)
            direct = run.direct
            if direct is not None and direct[0] is ctx and direct[1] is env and not compiling:
                args = (zs[0], gs[0], vs[0]) if len(zs) == 1 else (zs, gs, vs)
                args += (s, *direct[3], seed64, offset - _U64 if offset >= _I64_LIMIT else offset)
                try:
                    if torch.is_grad_enabled():
                        with torch.no_grad():
                            direct[2](*args)
                    else:
                        direct[2](*args)
                    continue
                except (RuntimeError, TypeError, ValueError):
                    pass  # the public op below names the bad argument
            if len(zs) == 1:
                ops.langevin_step_(zs[0], gs[0], vs[0], step=s, seed=seed, offset=offset, backend=backend,
                                   **run.hyper)  # fmt: skip
                name = "langevin_step_"
            else:
                ops.langevin_step_foreach_(zs, gs, vs, step=s, seed=seed, offset=offset, backend=backend,
                                           **run.hyper)  # fmt: skip
                name = "langevin_step_foreach_"
            if not compiling:
                chosen = select_backend(zs[0].device, backend)
                if chosen.name in _CHECKING_BACKENDS:
                    hyper = tuple(run.hyper[k] for k in HYPER_NAMES)
                    run.direct = (ctx, env, chosen._op(name), hyper)
        if self.record_diagnostics:
            self.diagnostics.record(energies, [g for gs in grads for g in gs])
        return energies

    def _capturable_step(self, closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """One step reading and advancing the device state (one fused call, no host-side counters)."""
        energies = None
        if closure is not None:
            with torch.enable_grad():
                energies = closure()
        plan = self._plan
        grads = None if plan is None else plan.grads(self.param_groups, self._settings())
        if grads is None:
            plan = self._build_plan()
            grads = [[z.grad for z in run.zs] for run in plan.runs]
            if len(plan.runs) > 1:
                self._plan = None
                raise ValueError(
                    "capturable=True needs every latent with a gradient in one fused call (one device "
                    "and the same hyper-parameters in every parameter group); these latents need "
                    f"{len(plan.runs)}"
                )
        if not plan.runs:
            return energies
        run, gs = plan.runs[0], grads[0]
        state = self._device_state(run.zs[0].device)
        if len(run.zs) == 1:
            ops.langevin_step_(
                run.zs[0], gs[0], run.vs[0], rng_state=state, backend=self.backend, **run.hyper
            )
        else:
            ops.langevin_step_foreach_(run.zs, gs, run.vs, rng_state=state, backend=self.backend, **run.hyper)
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

    @torch.no_grad()
    def _mala_step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        lat = self._latents()
        for group, _ in lat:
            self._check_group(group)
        self._plan = None
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
            st = self._state(z)
            self._maybe_freeze(st, group)
            st["step"] += 1
            hyper = self._hyper(st, group)
            hyper["step_size"] = float(group["lr"]) * scale
            etas.append((hyper["step_size"], self.preconditioner(i).to(torch.float64)))
            _fused_update(
                [z],
                [g0[i]],
                [st["v"]],
                step=st["step"],
                seed=self.seed,
                offset=self._noise.take(z.numel()),
                backend=self.backend,
                hyper=hyper,
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
            wd = float(group["weight_decay"])
            if wd != 0.0:
                ga, gb = ga + wd * a, gb + wd * b
            denom = 4.0 * eta * tau * p
            fwd = (b - a + eta * p * ga) ** 2 / denom
            rev = (a - b + eta * p * gb) ** 2 / denom
            log_alpha = log_alpha + (fwd - rev).reshape(n_chains, -1).sum(dim=1)
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf, posinf=-math.inf)
        u = rng.philox_uniform(
            n_chains, seed=self.seed, offset=self._noise.take(n_chains), device=log_alpha.device
        )
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
        if self.record_diagnostics:
            d.record(energies, g1)
        return energies

    # ------------------------------------------------------------------ checkpoints

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults, state and groups; the sampler's own attributes (mode,
        # noise stream, adaptation) are part of it too. The cached plan is rebuilt on the next step.
        state = dict(self.__dict__)
        state["_plan"] = None
        return state

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (``state`` per latent index: ``v``, ``step``, ``frozen``; ``param_groups``)
        plus ``sampler``: the mode, the noise stream's position, dual averaging, the MALA cache and the
        diagnostics. With the latents, everything needed to continue the chains bit for bit."""
        if self._rng_state is not None:  # capturable: the device holds the counters
            self._sync_noise()
            step = self._device_step()
            for st in self.state.values():
                if "step" in st:
                    st["step"] = step
        state = super().state_dict()
        cache = None
        if self._cache is not None:
            cache = {
                "z": [c.clone() for c in self._cache["z"]],
                "energy": self._cache["energy"].clone(),
                "grad": [g.clone() for g in self._cache["grad"]],
            }
        state["sampler"] = {
            "mode": self.mode,
            "noise": self._noise.state_dict(),
            "dual_averaging": self._dual.state_dict(),
            "mala_cache": cache,
            "last_accept": None if self.last_accept is None else self.last_accept.clone(),
            "diagnostics": self.diagnostics.state_dict(),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a sampler built over latents of the same shapes."""
        extra = state_dict.get("sampler")
        if not isinstance(extra, dict):
            raise ValueError("state_dict is not a LangevinSampler's (it has no 'sampler' entry)")
        if extra["mode"] != self.mode:
            raise ValueError(f"state is for mode {extra['mode']!r}, this sampler is {self.mode!r}")
        lat = [z for _, z in self._latents()]
        saved_groups = state_dict["param_groups"]
        if any("prior_grad" in g for g in saved_groups):
            # A state saved before weight_decay existed: its prior_grad flag is weight_decay 0 or 1.
            saved_groups = [_upgrade_group(g) for g in saved_groups]
            state_dict = {**state_dict, "param_groups": saved_groups}
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)
        ):
            raise ValueError("state_dict has a different number of latents or parameter groups")
        ids = [i for g in saved_groups for i in g["params"]]
        saved = [state_dict["state"].get(i) for i in ids]
        for st, z in zip(saved, lat):
            v = None if st is None else st.get("v")
            if v is not None and v.shape != z.shape:
                raise ValueError(
                    f"saved state of shape {tuple(v.shape)} for a latent of shape {tuple(z.shape)}"
                )
        super().load_state_dict(state_dict)
        # torch casts floating-point state to each latent's dtype; v is float32 whatever the latents' dtype,
        # so it is restored from the saved tensor itself (exactly).
        for st, z in zip(saved, lat):
            if st is not None and st.get("v") is not None:
                self.state[z]["v"] = st["v"].to(device=z.device, dtype=torch.float32, copy=True)
        self._noise.load_state_dict(extra["noise"])
        if self._rng_state is not None:  # capturable: the same device tensor (graphs hold it) takes the state
            steps = {st["step"] for st in self.state.values() if "step" in st}
            restored = ops.make_rng_state(
                self._noise.seed, self._noise.offset, max(steps, default=0) + 1, device=self._rng_state.device
            )
            self._rng_state.copy_(restored)
        self._dual.load_state_dict(extra["dual_averaging"])
        cache = extra["mala_cache"]
        if cache is None:
            self._cache = None
        else:
            self._cache = {
                "z": [c.to(z.device, copy=True) for c, z in zip(cache["z"], lat)],
                "energy": cache["energy"].clone(),
                "grad": [g.to(z.device, copy=True) for g, z in zip(cache["grad"], lat)],
            }
        la = extra["last_accept"]
        self.last_accept = None if la is None else la.clone()
        self.diagnostics.load_state_dict(extra["diagnostics"])
        self._plan = None

    def __repr__(self) -> str:
        n = len(self._latents())
        return (
            f"LangevinSampler(mode={self.mode!r}, latents={n}, groups={len(self.param_groups)}, "
            f"lr={self.param_groups[0]['lr']}, seed={self.seed}, offset={self.offset})"
        )
