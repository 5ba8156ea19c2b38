"""Public ops: argument checks, backend routing and autograd.

The maths is :mod:`lpc_fast.reference`, the noise is :mod:`lpc_fast.rng`; this
module only validates, picks a backend (:mod:`lpc_fast.dispatch`) and calls it.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import rng
from .dispatch import _BACKENDS, get_backend, select_backend

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


def _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, prior_grad) -> dict:
    _check_real("step_size", step_size)
    _check_real("beta", beta)
    _check_real("eps", eps)
    _check_real("temperature", temperature)
    for name, flag in (
        ("bias_correction", bias_correction),
        ("precondition", precondition),
        ("prior_grad", prior_grad),
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
    return {
        "step_size": float(step_size),
        "beta": float(beta),
        "eps": float(eps),
        "temperature": float(temperature),
        "bias_correction": bias_correction,
        "precondition": precondition,
        "prior_grad": prior_grad,
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
    prior_grad: bool = False,
    seed: int | None = None,
    offset: int | None = None,
    rng_state: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """One fused Langevin step, in place on ``z`` and ``v`` (LPC.md §2).

    ``s = grad (+ z if prior_grad)``; ``v <- beta*v + (1-beta)*s**2``;
    ``p = 1/(eps + sqrt(v_hat))``; ``z <- z - step_size*p*s + sqrt(2*step_size*temperature*p)*xi``
    with ``xi`` the contract normals of ``(seed, offset)`` (:mod:`lpc_fast.rng`).

    Parameters
    ----------
    z : Tensor
        Latents, float16 / bfloat16 / float32 / float64, any shape and strides; updated in place.
    grad : Tensor
        ``dE/dz`` at ``z`` (only the likelihood part if ``prior_grad``), same shape and dtype as ``z``.
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
    bias_correction, precondition, prior_grad : bool
        Divide ``v`` by ``1 - beta**step``; use the preconditioner (``False`` is plain ULA); add the
        N(0, I) prior gradient ``z`` in-kernel.
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
    _check_tensors(z, grad, v)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, prior_grad)
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
    prior_grad: bool = False,
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
    step, step_size, beta, eps, temperature, bias_correction, precondition, prior_grad
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
    _check_tensor_lists(zs, grads, vs)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, prior_grad)
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
    prior_grad: bool = False,
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
    _check_tensors(z, grad, v)
    hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, prior_grad)
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
# Dispatcher registration: the reference as custom ops, fake kernels, autograd for every backend.
# --------------------------------------------------------------------------------------------------

_REF = get_backend("reference")
_HYPER_NAMES = ("step_size", "beta", "eps", "temperature", "bias_correction", "precondition", "prior_grad")


def _hyper_from(args) -> dict:
    return dict(zip(_HYPER_NAMES, args))


@torch.library.custom_op("lpc_fast::reference_langevin_fwd", mutates_args=())
def _reference_fwd(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    hyper = _hyper_from((step_size, beta, eps, temperature, bias_correction, precondition, prior_grad))
    return _REF.forward(z, grad, v, step=step, seed=seed, offset=offset, **hyper)


@torch.library.custom_op("lpc_fast::reference_langevin_bwd", mutates_args=())
def _reference_bwd(
    grad_z_new: torch.Tensor,
    grad_v_new: torch.Tensor | None,
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    hyper = _hyper_from((step_size, beta, eps, temperature, bias_correction, precondition, prior_grad))
    return _REF.backward(grad_z_new, grad_v_new, z, grad, v, step=step, seed=seed, offset=offset, **hyper)


def _fake_fwd(z, grad, v, *args):
    # Kernels return fresh contiguous tensors: z_new in z's dtype, v_new float32.
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(z.shape, dtype=torch.float32, device=z.device),
    )


def _fake_bwd(grad_z_new, grad_v_new, z, grad, v, *args):
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
    )


def _fake_void(*args):
    return None


def _setup_context(ctx, inputs, output) -> None:
    z, grad, v, *scalars = inputs
    ctx.save_for_backward(z, grad, v)
    ctx.scalars = scalars


def _make_backward(bwd_op):
    def backward(ctx, grad_z_new, grad_v_new):
        z, grad, v = ctx.saved_tensors
        gz, gg = bwd_op(grad_z_new.contiguous(), grad_v_new, z, grad, v, *ctx.scalars)
        return (gz, gg, None) + (None,) * len(ctx.scalars)

    return backward


torch.library.register_fake("lpc_fast::reference_langevin_fwd")(_fake_fwd)
torch.library.register_fake("lpc_fast::reference_langevin_bwd")(_fake_bwd)
torch.library.register_autograd(
    "lpc_fast::reference_langevin_fwd",
    _make_backward(torch.ops.lpc_fast.reference_langevin_bwd),
    setup_context=_setup_context,
)


class _ReferenceOpsBackend(type(_REF)):
    """The reference backend, routed through its custom ops so autograd and compile see one op."""

    def forward(self, z, grad, v, *, step, seed, offset, **hyper):
        h = [hyper[k] for k in _HYPER_NAMES]
        return torch.ops.lpc_fast.reference_langevin_fwd(z, grad, v, step, *h, seed, offset)


_BACKENDS["reference"] = _ReferenceOpsBackend()


def register_dispatcher_ops(prefix: str) -> None:
    """Register fake kernels and autograd for ``lpc_fast::<prefix>langevin_*`` dispatcher ops.

    Called for the C++ ops (prefix ``""``) once ``lpc_fast._C`` is loaded. Registration that already
    exists (e.g. done by the op's own module) is left alone.
    """
    ns = torch.ops.lpc_fast
    fakes = {
        "langevin_fwd": _fake_fwd,
        "langevin_bwd": _fake_bwd,
        "langevin_step_": _fake_void,
        "langevin_step_state_": _fake_void,
        "langevin_step_foreach_": _fake_void,
        "langevin_step_foreach_state_": _fake_void,
        "philox_normal_": _fake_void,
        "philox_uint32_": _fake_void,
    }
    for name, fake in fakes.items():
        if not hasattr(ns, prefix + name):
            continue
        try:
            torch.library.register_fake(f"lpc_fast::{prefix}{name}")(fake)
        except RuntimeError:
            pass  # already has a fake (registered by its own module)
    if hasattr(ns, f"{prefix}langevin_fwd") and hasattr(ns, f"{prefix}langevin_bwd"):
        try:
            torch.library.register_autograd(
                f"lpc_fast::{prefix}langevin_fwd",
                _make_backward(getattr(ns, f"{prefix}langevin_bwd")),
                setup_context=_setup_context,
            )
        except RuntimeError:
            pass  # its own module registered autograd already


def _register_extension() -> None:
    try:
        import lpc_fast._C  # noqa: F401  (loads the TORCH_LIBRARY schemas)
    except ImportError:
        return
    register_dispatcher_ops("")


_register_extension()
