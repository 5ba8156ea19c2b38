"""Public ops: argument checks, backend routing and autograd.

The maths is :mod:`lpc_fast.reference`, the noise is :mod:`lpc_fast.rng`; this
module only validates, picks a backend (:mod:`lpc_fast.dispatch`) and calls it.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import rng
from ._schemas import HYPER_NAMES
from .dispatch import _context_stack, _load_extension, env_request, get_backend, select_backend
from .reference import resolve_weight_decay

__all__ = [
    "SUPPORTED_DTYPES",
    "langevin_step_",
    "langevin_step_foreach_",
    "langevin_step",
    "philox_normal",
    "make_rng_state",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_TYPES = (int, torch.SymInt)


# --------------------------------------------------------------------------------------------------
# Argument checks: one clear error naming the argument and what was expected.
# --------------------------------------------------------------------------------------------------


def _is_int(x: object) -> bool:
    return type(x) is int or (isinstance(x, _INT_TYPES) and not isinstance(x, bool))


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_real(name: str, x: object) -> float:
    if type(x) is float:  # the common case first: the checks run once per Langevin step
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x}")
        return x
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if isinstance(x, numbers.Real) and not math.isfinite(float(x)):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _check_u64(name: str, x: object) -> int:
    if not _is_int(x):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(x).__name__}")
    if isinstance(x, int) and not 0 <= x <= rng.UINT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64), got {x}")
    return x


def _as_int64(x):
    """uint64 -> the int64 with the same bits (SymInts are already in range by construction)."""
    return rng.to_int64(x) if isinstance(x, int) else x


def _check_tensors(z, grad, v, names: tuple[str, str, str] = ("z", "grad", "v")) -> None:
    zn, gn, vn = names
    _check_tensor(zn, z)
    _check_tensor(gn, grad)
    _check_tensor(vn, v)
    if z.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{zn} must have dtype float16, bfloat16, float32 or float64, got {z.dtype}")
    if grad.dtype != z.dtype:
        raise TypeError(f"{gn} must have the dtype of {zn} ({z.dtype}), got {grad.dtype}")
    if v.dtype != torch.float32:
        raise TypeError(
            f"{vn} (the preconditioner state) must be float32 whatever {zn}'s dtype, got {v.dtype}"
        )
    if grad.shape != z.shape:
        raise ValueError(f"{gn} must have the shape of {zn} {tuple(z.shape)}, got {tuple(grad.shape)}")
    if v.shape != z.shape:
        raise ValueError(f"{vn} must have the shape of {zn} {tuple(z.shape)}, got {tuple(v.shape)}")
    if grad.device != z.device:
        raise ValueError(f"{gn} must be on {zn}'s device ({z.device}), got {grad.device}")
    if v.device != z.device:
        raise ValueError(f"{vn} must be on {zn}'s device ({z.device}), got {v.device}")


def _check_tensor_lists(zs, grads, vs) -> None:
    """The foreach op's lists: same length, each triple as the single op wants it, one device."""
    for name, xs in (("zs", zs), ("grads", grads), ("vs", vs)):
        if not isinstance(xs, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(xs).__name__}")
    if len(grads) != len(zs):
        raise ValueError(f"grads must hold one tensor per tensor of zs ({len(zs)}), got {len(grads)}")
    if len(vs) != len(zs):
        raise ValueError(f"vs must hold one tensor per tensor of zs ({len(zs)}), got {len(vs)}")
    device = None
    for i, (z, g, v) in enumerate(zip(zs, grads, vs)):
        _check_tensors(z, g, v, (f"zs[{i}]", f"grads[{i}]", f"vs[{i}]"))
        if device is None:
            device = z.device
        elif z.device != device:
            raise ValueError(f"zs[{i}] must be on zs[0]'s device ({device}), got {z.device}")


def _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay) -> dict:
    _check_real("step_size", step_size)
    _check_real("beta", beta)
    _check_real("eps", eps)
    _check_real("temperature", temperature)
    _check_real("weight_decay", weight_decay)
    for name, flag in (
        ("bias_correction", bias_correction),
        ("precondition", precondition),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 <= beta <= 1:
        raise ValueError(
            f"beta must be in [0, 1) (or exactly 1, a frozen preconditioner, with bias_correction=False), "
            f"got {beta}"
        )
    if beta == 1 and bias_correction:
        raise ValueError(
            "beta must be in [0, 1) with bias_correction=True (1 - beta**step would be 0); "
            "beta=1 (a frozen preconditioner) needs bias_correction=False"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay (the Gaussian prior's precision) must be >= 0, got {weight_decay}")
    return {
        "step_size": float(step_size),
        "beta": float(beta),
        "eps": float(eps),
        "temperature": float(temperature),
        "bias_correction": bias_correction,
        "precondition": precondition,
        "weight_decay": float(weight_decay),
    }


def _check_step(step) -> None:
    if not _is_int(step):
        raise TypeError(f"step must be an int >= 1 (the 1-based inner-step index), got {type(step).__name__}")
    if isinstance(step, int) and step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based inner-step index), got {step}")


def _check_rng_state(rng_state: torch.Tensor, z: torch.Tensor | None, zname: str = "z") -> None:
    _check_tensor("rng_state", rng_state)
    if rng_state.dtype != torch.int64 or tuple(rng_state.shape) != (3,):
        raise ValueError(
            "rng_state must be an int64 tensor of shape (3,) holding [seed, offset, step] "
            f"(see lpc_fast.make_rng_state), got {rng_state.dtype} of shape {tuple(rng_state.shape)}"
        )
    if z is not None and rng_state.device != z.device:
        raise ValueError(f"rng_state must be on {zname}'s device ({z.device}), got {rng_state.device}")


# --------------------------------------------------------------------------------------------------
# The fast path of langevin_step_ (the common call: exact int/float/bool scalars, tensors, eager).
# It skips what costs microseconds per call in Python: the tensor dtype/shape checks, which the
# C++/CUDA/Triton kernels make themselves before touching memory (a refusal re-runs the Python
# checks, so the error still names the argument); re-validating hyper-parameters seen before; and
# backend selection, cached as the raw op per (device, backend=, use_backend context,
# LPC_FAST_BACKEND), all in one cache key. The reference backend's kernel checks nothing and keeps
# the checked path, as do meta tensors (their kernel is the no-op fake).
# --------------------------------------------------------------------------------------------------

_Tensor = torch.Tensor
_U64 = rng.UINT64_MAX
_I64 = 2**63 - 1
_2_64 = 2**64
_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_FAST_BACKENDS = ("cpu", "cuda", "triton")
_CACHE_LIMIT = 256  # distinct keys kept (a hyper-parameter sweep must not grow it without bound)
#: (op name, device, backend=, context, environment, 7 hyper-parameters)
#: -> (the backend's raw op, the validated hyper-parameters in schema order)
_fast_calls: dict[tuple, tuple] = {}


def _fast_key(name, device, backend, step, seed, offset, step_size, beta, eps, temperature, bc, pc, wd):
    """The fast path's cache key, or None when the call needs the checked path.

    Only exact types qualify (``True == 1 == 1.0`` as dict keys, but only a bool is a valid flag);
    ``step``, ``seed`` and ``offset`` are range-checked here since they change every call.
    """
    if (
        type(step) is int
        and type(seed) is int
        and type(offset) is int
        and type(step_size) is float
        and type(beta) is float
        and type(eps) is float
        and type(temperature) is float
        and type(bc) is bool
        and type(pc) is bool
        and type(wd) is float
        and 1 <= step
        and 0 <= seed <= _U64
        and 0 <= offset <= _U64
        and not _is_compiling()
    ):
        ctx = _context_stack[-1] if _context_stack else None
        return (name, device, backend, ctx, env_request(), step_size, beta, eps, temperature, bc, pc, wd)
    return None


#: The last fast call of each op: (7 hyper-parameter objects, backend=, context, environment,
#: z on CPU (else CUDA), (op, hyper)). A call repeating the same objects, as a sampler does every
#: step, is recognised by identity, without hashing a key.
_memo_step: list[tuple | None] = [None]
_memo_foreach: list[tuple | None] = [None]


def _fast_lookup(memo, name, z, backend, step, seed, offset, raw):
    """``(op, hyper)`` for a call the fast path may take, or None (the checked path)."""
    if _is_compiling():  # torch.compile traces the checked path (its selection is constant-folded)
        return None
    m = memo[0]
    ctx = _context_stack[-1] if _context_stack else None
    env = env_request()
    if (
        m is not None
        and raw[0] is m[0]
        and raw[1] is m[1]
        and raw[2] is m[2]
        and raw[3] is m[3]
        and raw[4] is m[4]
        and raw[5] is m[5]
        and raw[6] is m[6]
        and backend is m[7]
        and ctx is m[8]
        and env is m[9]
        and (z.is_cpu if m[10] else z.is_cuda)
        and type(step) is int
        and type(seed) is int
        and type(offset) is int
        and 1 <= step
        and 0 <= seed <= _U64
        and 0 <= offset <= _U64
    ):
        return m[11]
    device = z.device
    if device.type not in ("cpu", "cuda"):
        return None
    key = _fast_key(name, device, backend, step, seed, offset, *raw)
    hit = None if key is None else _fast_calls.get(key)
    if hit is not None:
        memo[0] = (*raw, backend, ctx, env, device.type == "cpu", hit)
    return hit


def _remember(name, device, chosen, backend, hyper, step, seed, offset, *raw) -> None:
    """After a fully checked call: cache its backend's raw op ``name`` and its validated
    hyper-parameters under the fast path's key."""
    if chosen.name not in _FAST_BACKENDS:
        return
    key = _fast_key(name, device, backend, step, seed, offset, *raw)
    if key is not None:
        if len(_fast_calls) >= _CACHE_LIMIT:
            _fast_calls.clear()
        _fast_calls[key] = (chosen._op(name), tuple(hyper[k] for k in HYPER_NAMES))


# --------------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------------


def langevin_step_(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    *,
    step: int | None = None,
    step_size: float,
    beta: float = 0.99,
    eps: float = 1e-3,
    temperature: float = 1.0,
    bias_correction: bool = True,
    precondition: bool = True,
    prior_grad: bool | None = None,
    weight_decay: float | None = None,
    seed: int | None = None,
    offset: int | None = None,
    rng_state: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """One fused Langevin step, in place on ``z`` and ``v`` (LPC.md §2).

    ``s = grad + weight_decay*z``; ``v <- beta*v + (1-beta)*s**2``;
    ``p = 1/(eps + sqrt(v_hat))``; ``z <- z - step_size*p*s + sqrt(2*step_size*temperature*p)*xi``
    with ``xi`` the contract normals of ``(seed, offset)`` (:mod:`lpc_fast.rng`).

    Parameters
    ----------
    z : Tensor
        Latents, float16 / bfloat16 / float32 / float64, any shape and strides; updated in place.
    grad : Tensor
        ``dE/dz`` at ``z`` without the Gaussian prior's part ``weight_decay*z``, same shape and dtype
        as ``z``.
    v : Tensor
        float32 second-moment state, same shape as ``z``; updated in place (untouched if
        ``precondition=False``). Reset it to zero for each new batch.
    step : int
        1-based inner-step index, for bias correction.
    step_size : float
        Langevin step size ``eta > 0``.
    beta : float
        EMA coefficient in ``[0, 1)``; ``beta=1`` with ``bias_correction=False`` freezes ``v``.
    eps : float
        ``lambda > 0`` in ``p = 1/(lambda + sqrt(v_hat))``.
    temperature : float
        ``tau >= 0``; 0 is deterministic predictive coding.
    bias_correction, precondition : bool
        Divide ``v`` by ``1 - beta**step``; use the preconditioner (``False`` is plain ULA).
    weight_decay : float, optional
        ``lambda >= 0``: the kernel adds the gradient ``lambda*z`` of a Gaussian prior
        N(0, I/lambda) to ``grad`` (as ``torch.optim``'s weight decay); default 0.
    prior_grad : bool, optional
        Alias: ``True`` is ``weight_decay=1`` (the N(0, I) prior), ``False`` is ``weight_decay=0``.
        Giving both is an error unless they agree.
    seed, offset : int
        Unsigned 64-bit noise key and counter; advance ``offset`` by
        ``lpc_fast.rng.offset_increment(z.numel())`` after each call.
    rng_state : Tensor, optional
        Capturable mode: an int64 tensor ``[seed, offset, step]`` on ``z``'s device
        (:func:`make_rng_state`) that the kernel reads and advances itself (``offset += ceil(n/4)``,
        ``step += 1``), so a captured CUDA graph replays with fresh noise. Excludes ``step``,
        ``seed`` and ``offset``.
    backend : str, optional
        ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"reference"``; default: see :mod:`lpc_fast.dispatch`.
    """
    if prior_grad is not None or weight_decay is None:
        weight_decay = resolve_weight_decay(prior_grad, weight_decay)
    hit = None
    if rng_state is None and isinstance(z, _Tensor) and isinstance(grad, _Tensor) and isinstance(v, _Tensor):
        if not (grad.is_meta or v.is_meta):  # a meta tensor's kernel is the no-op fake
            raw = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
            hit = _fast_lookup(_memo_step, "langevin_step_", z, backend, step, seed, offset, raw)
    if hit is not None:
        op, hyper = hit
        args = (z, grad, v, step, *hyper, seed - _2_64 if seed > _I64 else seed)
        args += (offset - _2_64 if offset > _I64 else offset,)
        try:
            # no_grad (about a microsecond) only matters for tensors that require grad.
            if _grad_enabled() and (z.requires_grad or grad.requires_grad or v.requires_grad):
                with torch.no_grad():
                    op(*args)
            else:
                op(*args)
            return
        except (RuntimeError, TypeError, ValueError) as exc:
            refused = exc
        _check_tensors(z, grad, v)  # names the argument when the kernel refused one
        raise refused
    _langevin_step_checked(
        z,
        grad,
        v,
        step=step,
        step_size=step_size,
        beta=beta,
        eps=eps,
        temperature=temperature,
        bias_correction=bias_correction,
        precondition=precondition,
        weight_decay=weight_decay,
        seed=seed,
        offset=offset,
        rng_state=rng_state,
        backend=backend,
    )


def _langevin_step_checked(
    z,
    grad,
    v,
    *,
    step,
    step_size,
    beta,
    eps,
    temperature,
    bias_correction,
    precondition,
    weight_decay,
    seed,
    offset,
    rng_state,
    backend,
) -> None:
    """:func:`langevin_step_` with every argument checked in Python, for any argument types.

    Fills the fast path's caches: validated exact float/bool hyper-parameters, and the raw op of
    the chosen backend per (device, backend argument, context, environment) when its kernel
    checks the tensors itself.
    """
    _check_tensors(z, grad, v)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
    chosen = select_backend(z.device, backend)
    if rng_state is not None:
        if step is not None or seed is not None or offset is not None:
            raise ValueError("pass either rng_state or (step, seed, offset), not both")
        _check_rng_state(rng_state, z)
        # Even an empty z advances the state (step += 1), as every kernel does: a captured loop's
        # step count must not depend on the batch being empty.
        if torch.is_grad_enabled():
            with torch.no_grad():
                chosen.step_state_(z, grad, v, rng_state, **hyper)
        else:
            chosen.step_state_(z, grad, v, rng_state, **hyper)
        return
    if step is None or seed is None or offset is None:
        missing = [n for n, x in (("step", step), ("seed", seed), ("offset", offset)) if x is None]
        raise TypeError(f"langevin_step_ needs {', '.join(missing)} (or rng_state=)")
    _check_step(step)
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    _remember(
        "langevin_step_",
        z.device,
        chosen,
        backend,
        hyper,
        step,
        seed,
        offset,
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        weight_decay,
    )
    if z.numel() == 0:
        return
    if torch.is_grad_enabled():  # entering no_grad costs about a microsecond: skip it when already off
        with torch.no_grad():
            chosen.step_(z, grad, v, step=step, seed=_as_int64(seed), offset=_as_int64(offset), **hyper)
    else:
        chosen.step_(z, grad, v, step=step, seed=_as_int64(seed), offset=_as_int64(offset), **hyper)


def langevin_step_foreach_(
    zs: list[torch.Tensor],
    grads: list[torch.Tensor],
    vs: list[torch.Tensor],
    *,
    step: int | None = None,
    step_size: float,
    beta: float = 0.99,
    eps: float = 1e-3,
    temperature: float = 1.0,
    bias_correction: bool = True,
    precondition: bool = True,
    prior_grad: bool | None = None,
    weight_decay: float | None = None,
    seed: int | None = None,
    offset: int | None = None,
    rng_state: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """:func:`langevin_step_` on every tensor of a list, in one kernel launch per backend.

    Tensor ``i`` draws its noise at ``offset + sum_{j<i} offset_increment(zs[j].numel())``
    (:func:`lpc_fast.rng.foreach_offsets`), so the result is bit-identical to calling
    :func:`langevin_step_` on each tensor in order with ``offset`` advanced after each call.

    Parameters
    ----------
    zs : list of Tensor
        Latents of any shapes; float16 / bfloat16 / float32 / float64 (dtypes may differ
        between tensors), all on one device; updated in place.
    grads : list of Tensor
        ``grads[i]`` is ``dE/dzs[i]``, with ``zs[i]``'s shape and dtype.
    vs : list of Tensor
        float32 second-moment states, ``vs[i]`` of ``zs[i]``'s shape; updated in place (untouched
        if ``precondition=False``).
    step, step_size, beta, eps, temperature, bias_correction, precondition, weight_decay, prior_grad
        As in :func:`langevin_step_`, shared by all tensors.
    seed, offset : int
        Unsigned 64-bit noise key and the first tensor's counter; advance ``offset`` by
        ``lpc_fast.rng.foreach_offsets(offset, numels)[1]`` after each call.
    rng_state : Tensor, optional
        Capturable mode: an int64 ``[seed, offset, step]`` tensor on the tensors' device that the
        kernel reads and advances itself (``offset`` by the sum of the tensors' increments,
        ``step`` by 1, also for empty lists). Excludes ``step``, ``seed`` and ``offset``.
    backend : str, optional
        ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"reference"``; default: see :mod:`lpc_fast.dispatch`.
    """
    if prior_grad is not None or weight_decay is None:
        weight_decay = resolve_weight_decay(prior_grad, weight_decay)
    hit = None
    if rng_state is None and type(zs) in (list, tuple) and zs and isinstance(zs[0], _Tensor):
        raw = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
        hit = _fast_lookup(_memo_foreach, "langevin_step_foreach_", zs[0], backend, step, seed, offset, raw)
    if hit is not None:
        # The kernels check every tensor (dtype, shape, device; the fake kernel that meta tensors
        # reach checks devices) before writing any.
        op, hyper = hit
        args = (zs, grads, vs, step, *hyper, seed - _2_64 if seed > _I64 else seed)
        args += (offset - _2_64 if offset > _I64 else offset,)
        try:
            if _grad_enabled():
                with torch.no_grad():
                    op(*args)
            else:
                op(*args)
            return
        except (RuntimeError, TypeError, ValueError) as exc:
            refused = exc
        _check_tensor_lists(zs, grads, vs)  # names the list and index when a kernel refused one
        raise refused
    _langevin_step_foreach_checked(
        zs,
        grads,
        vs,
        step=step,
        step_size=step_size,
        beta=beta,
        eps=eps,
        temperature=temperature,
        bias_correction=bias_correction,
        precondition=precondition,
        weight_decay=weight_decay,
        seed=seed,
        offset=offset,
        rng_state=rng_state,
        backend=backend,
    )


def _langevin_step_foreach_checked(
    zs,
    grads,
    vs,
    *,
    step,
    step_size,
    beta,
    eps,
    temperature,
    bias_correction,
    precondition,
    weight_decay,
    seed,
    offset,
    rng_state,
    backend,
) -> None:
    """:func:`langevin_step_foreach_` with every argument checked in Python (fills the fast path's cache)."""
    _check_tensor_lists(zs, grads, vs)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
    z0 = zs[0] if len(zs) else None
    if rng_state is not None:
        if step is not None or seed is not None or offset is not None:
            raise ValueError("pass either rng_state or (step, seed, offset), not both")
        _check_rng_state(rng_state, z0, "zs[0]")
        chosen = select_backend(rng_state.device, backend)
        if torch.is_grad_enabled():
            with torch.no_grad():
                chosen.step_foreach_state_(list(zs), list(grads), list(vs), rng_state, **hyper)
        else:
            chosen.step_foreach_state_(list(zs), list(grads), list(vs), rng_state, **hyper)
        return
    if step is None or seed is None or offset is None:
        missing = [n for n, x in (("step", step), ("seed", seed), ("offset", offset)) if x is None]
        raise TypeError(f"langevin_step_foreach_ needs {', '.join(missing)} (or rng_state=)")
    _check_step(step)
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    if z0 is None:
        if backend is not None:
            get_backend(backend)  # an unknown name is an error even with nothing to update
        return
    chosen = select_backend(z0.device, backend)
    _remember("langevin_step_foreach_", z0.device, chosen, backend, hyper, step, seed, offset, step_size,
              beta, eps, temperature, bias_correction, precondition, weight_decay)  # fmt: skip
    if torch.is_grad_enabled():
        with torch.no_grad():
            chosen.step_foreach_(
                list(zs),
                list(grads),
                list(vs),
                step=step,
                seed=_as_int64(seed),
                offset=_as_int64(offset),
                **hyper,
            )
    else:
        chosen.step_foreach_(
            list(zs),
            list(grads),
            list(vs),
            step=step,
            seed=_as_int64(seed),
            offset=_as_int64(offset),
            **hyper,
        )


def langevin_step(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    *,
    step: int,
    step_size: float,
    beta: float = 0.99,
    eps: float = 1e-3,
    temperature: float = 1.0,
    bias_correction: bool = True,
    precondition: bool = True,
    prior_grad: bool | None = None,
    weight_decay: float | None = None,
    seed: int,
    offset: int,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional, differentiable Langevin step: returns ``(z_new, v_new)``.

    Same arguments as :func:`langevin_step_`. Differentiable w.r.t. ``z`` and
    ``grad`` (exactly: through the preconditioner and the noise scale too); ``v``
    is not differentiable. The backward is a fused kernel that regenerates the
    noise from ``(seed, offset)`` instead of storing it.
    """
    weight_decay = resolve_weight_decay(prior_grad, weight_decay)
    _check_tensors(z, grad, v)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
    _check_step(step)
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    chosen = select_backend(z.device, backend)
    if z.numel() == 0:
        return z.clone(), v.clone()
    return chosen.forward(z, grad, v, step=step, seed=_as_int64(seed), offset=_as_int64(offset), **hyper)


def philox_normal(
    n: int,
    *,
    seed: int,
    offset: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """The ``n`` standard normals a step with ``(seed, offset)`` uses (RNG contract, LPC.md §5).

    Parameters
    ----------
    n : int
        Number of normals (element ``i`` is the noise of the ``i``-th element of ``z`` in
        row-major order).
    seed, offset : int
        Unsigned 64-bit key and counter.
    device, dtype
        Where and in which precision (float32 or float64) to return them.
    backend : str, optional
        Which implementation generates them (default: automatic for ``device``).
    """
    if not _is_int(n) or (isinstance(n, int) and n < 0):
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    out = torch.empty(n, dtype=dtype, device=device)
    if n == 0:
        return out
    select_backend(out.device, backend).normal_(out, seed=_as_int64(seed), offset=_as_int64(offset))
    return out


def philox_uint32(
    n: int,
    *,
    seed: int,
    offset: int,
    device: torch.device | str = "cpu",
    backend: str | None = None,
) -> torch.Tensor:
    """The contract's raw uint32 words (as int64 in ``[0, 2**32)``) from a backend's generator."""
    if not _is_int(n) or (isinstance(n, int) and n < 0):
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    out = torch.empty(n, dtype=torch.int64, device=device)
    if n == 0:
        return out
    select_backend(out.device, backend).uint32_(out, seed=_as_int64(seed), offset=_as_int64(offset))
    return out


def make_rng_state(
    seed: int, offset: int = 0, step: int = 1, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """An int64 ``[seed, offset, step]`` tensor for the capturable mode of :func:`langevin_step_`."""
    _check_u64("seed", seed)
    _check_u64("offset", offset)
    _check_step(step)
    return torch.tensor(
        [rng.to_int64(seed), rng.to_int64(offset), int(step)], dtype=torch.int64, device=device
    )


# --------------------------------------------------------------------------------------------------
# Dispatcher registration (lpc_fast._schemas): the C++ ops' schemas then the extension's kernels,
# and the reference backend's ops, so that torch.ops.lpc_fast.<op> exist once lpc_fast is imported.
# The Triton ops register when that backend is first used (it needs Triton).
# --------------------------------------------------------------------------------------------------

_load_extension()
get_backend("reference")._register()
