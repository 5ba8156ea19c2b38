"""Host launchers of the Triton kernels: argument checks, layout, launch configuration.

This is the one module that launches Triton kernels (:func:`_launch_on` is the only launch
site); the rest of :mod:`lpc_fast.triton` calls it. It holds one launcher per op of the table
(:data:`lpc_fast._schemas.OPS`), named like the op, the foreach launchers included (their device
tables come from :mod:`lpc_fast.triton.foreach`).

The launchers take the dispatcher ops' arguments (seeds and offsets as int64
values with the bits of the unsigned 64-bit numbers) and are shared by both
registrations in :mod:`lpc_fast.triton.ops`: called directly inside an opaque
``custom_op`` (interpreter) or, with ``wrap=torch.library.wrap_triton``, inside
a ``triton_op`` so that inductor sees the kernels; and called directly, without the
dispatcher, on the plain eager path (:mod:`lpc_fast.triton.ops`).

Parameters common to the launchers
----------------------------------
z, grad, v, state, step, seed, offset, step_size, beta, eps, temperature, ...
    As in the op schemas of docs/ARCHITECTURE.md; ``seed``/``offset`` are int64
    (or SymInt) values with the bits of the unsigned 64-bit numbers.
block : int, optional
    Elements per program, a power of two >= 4 (default :func:`default_block`);
    results are bit-identical for every value.
wrap : callable, optional
    Applied to each kernel before launch (``torch.library.wrap_triton`` inside a ``triton_op``).

Every launch runs with the tensors' CUDA device current (:func:`_device_guard`), as
the C++/CUDA kernels do with a device guard: Triton launches on the current device.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from typing import Any

import torch
import triton

from . import foreach, kernels
from ._interpret import interpreter_enabled

__all__ = [
    "CPU_BLOCK",
    "GPU_BLOCK",
    "interpreter_enabled",
    "default_block",
    "langevin_step_",
    "langevin_step_state_",
    "langevin_fwd",
    "langevin_bwd",
    "langevin_step_foreach_",
    "langevin_step_foreach_state_",
    "philox_normal_",
    "philox_uint32_",
]

#: Largest number of elements per program under the interpreter, whose cost is mostly a fixed
#: ~20 ms per program of this kernel (2**20 elements: 1.5 s at 16384, 0.6 s at 65536).
CPU_BLOCK = 65536
#: Elements per program on a GPU (BLOCK // 4 Philox counters): 8 elements per thread at Triton's
#: default of 4 warps. num_warps is left at that default rather than passed, which keeps the launch
#: the same through ``wrap_triton``.
GPU_BLOCK = 1024

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

Wrap = Callable[[Any], Any] | None


#: Whether kernels run under the interpreter (Triton reads TRITON_INTERPRET once, at its import).
_INTERPRETER = interpreter_enabled()


def _next_power_of_2(n: Any) -> int:
    # Plain integer arithmetic: triton.next_power_of_2 and triton.cdiv are constexpr functions in
    # recent Triton releases, a few microseconds per host call. SymInts take Triton's.
    if type(n) is int:
        return 1 << (n - 1).bit_length() if n > 1 else 1
    return triton.next_power_of_2(n)


def default_block(device: torch.device, n: int) -> int:
    """Elements per program for ``n`` elements on ``device`` (results never depend on it)."""
    if _INTERPRETER or device.type == "cpu":
        # One program for small tensors: the interpreter pays per program, not per element.
        return min(CPU_BLOCK, max(16, _next_power_of_2(n)))
    return GPU_BLOCK


def _device_guard(device: torch.device) -> Any:
    """The context that makes ``device`` current for a launch: ``torch.cuda.device`` for CUDA
    tensors (Triton launches on the current device, whatever the tensors' device), None for other
    tensors and when ``device`` is current already (entering the context costs microseconds)."""
    if device.type != "cuda":
        return None
    if torch.cuda.is_initialized() and device.index == torch.cuda.current_device():
        return None
    return torch.cuda.device(device)


def _launch_on(
    device: torch.device,
    kernel: Any,
    grid: tuple[int, ...],
    wrap: Wrap,
    args: tuple,
    meta: dict[str, Any],
    block: int | None = None,
) -> None:
    """Launch ``kernel[grid](*args, **meta)`` (and ``BLOCK=block`` if given) with ``device``
    current: the only launch site. Arguments travel as one tuple and one dict (no repacking)."""
    fn = kernel if wrap is None else wrap(kernel)
    guard = _device_guard(device)
    if guard is None:  # CPU tensors (interpreter), or the device is current: no context to enter
        if block is None:
            fn[grid](*args, **meta)
        else:
            fn[grid](*args, BLOCK=block, **meta)
    else:
        with guard:
            if block is None:
                fn[grid](*args, **meta)
            else:
                fn[grid](*args, BLOCK=block, **meta)


def _launch(
    kernel: Any,
    n: int,
    block: int | None,
    device: torch.device,
    wrap: Wrap,
    args: tuple,
    meta: dict[str, Any],
) -> None:
    block = default_block(device, n) if block is None else int(block)
    if block < 4 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 4, got {block}")
    _launch_on(device, kernel, (-(-n // block),), wrap, args, meta, block)


def _split(name: str, x: float) -> tuple[float, float]:
    """``(hi, lo)`` float32 values with ``hi + lo`` = x to ~48 bits (the kernels rebuild float64)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    try:
        hi = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        raise ValueError(f"{name}={x} is outside the float32 range") from None
    lo = struct.unpack("f", struct.pack("f", x - hi))[0]
    return hi, lo


def _scalar_args(
    step_size: float, beta: float, eps: float, temperature: float, weight_decay: float
) -> tuple[float, ...]:
    """The kernels' float arguments of the hyper-parameters."""
    if temperature < 0 or step_size < 0:
        raise ValueError(f"step_size and temperature must be >= 0, got {step_size} and {temperature}")
    noise_scale = math.sqrt(2.0 * float(step_size) * float(temperature))
    return (
        *_split("step_size", step_size),
        *_split("beta", beta),
        *_split("1 - beta", 1.0 - float(beta)),
        *_split("eps", eps),
        *_split("sqrt(2*step_size*temperature)", noise_scale),
        *_split("weight_decay", weight_decay),
    )


def _check_int64(name: str, value: Any) -> Any:
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} must be an int64 (the bits of a uint64, see rng.to_int64), got {value}")
    return value


def _check_update_args(z: torch.Tensor, grad: torch.Tensor, v: torch.Tensor) -> None:
    if z.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"z must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if grad.dtype != z.dtype:
        raise TypeError(f"grad must have z's dtype {z.dtype}, got {grad.dtype}")
    if v.dtype != torch.float32:
        raise TypeError(f"v must be float32, got {v.dtype}")
    if grad.shape != z.shape or v.shape != z.shape:
        raise ValueError(f"z, grad and v must share a shape, got {tuple(z.shape)}, {grad.shape}, {v.shape}")
    if grad.device != z.device or v.device != z.device:
        raise ValueError(f"z, grad and v must be on one device, got {z.device}, {grad.device}, {v.device}")


def _check_state(state: torch.Tensor, z: torch.Tensor) -> None:
    if state.dtype != torch.int64 or state.shape != (3,) or not state.is_contiguous():
        raise ValueError(
            f"state must be a contiguous int64 tensor of shape (3,), got {state.dtype} {tuple(state.shape)}"
        )
    if state.device != z.device:
        raise ValueError(f"state must be on z's device {z.device}, got {state.device}")


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _bound(
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    weight_decay: float,
    f64: bool | None,
    **extra: bool,
) -> tuple[tuple[float, ...], dict[str, Any]]:
    """:func:`_bound_cached`, for plain Python floats (a traced SymFloat is not hashable)."""
    args = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay, f64)
    floats = (step_size, beta, eps, temperature, weight_decay)
    if all(type(x) is float for x in floats):
        return _bound_cached(*args, **extra)
    return _bound_cached.__wrapped__(*args, **extra)


@functools.lru_cache(maxsize=256)
def _bound_cached(
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    weight_decay: float,
    f64: bool | None,
    **extra: bool,
) -> tuple[tuple[float, ...], dict[str, Any]]:
    """``(float arguments, constexpr arguments)`` of an update launch, computed once per set of
    hyper-parameters (a chain repeats them: the launch is then pre-bound but for tensors and
    counters). ``f64=None``: no ``F64`` argument (the foreach kernel). The dict is shared: callers
    only spread it."""
    precondition = bool(precondition)
    meta = {
        "BIAS_CORRECTION": bool(bias_correction) and precondition,
        "PRECONDITION": precondition,
        # The prior term is compiled out at weight_decay = 0 (s = grad exactly, whatever z holds).
        "PRIOR_GRAD": float(weight_decay) != 0.0,
        **extra,
    }
    if f64 is not None:
        meta["F64"] = f64
    return _scalar_args(step_size, beta, eps, temperature, weight_decay), meta


def langevin_step_(
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
    weight_decay: float,
    seed: int,
    offset: int,
    *,
    block: int | None = None,
    wrap: Wrap = None,
) -> None:
    """Update ``z`` and ``v`` in place (non-contiguous tensors go through contiguous copies)."""
    _check_update_args(z, grad, v)
    n = z.numel()
    if n == 0:
        return
    zc, gc, vc = _contig(z), _contig(grad), _contig(v)
    scalars, meta = _bound(
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        weight_decay,
        z.dtype is torch.float64,
        USE_STATE=False,
        STORE_V=bool(precondition),
    )
    args = (
        zc,
        gc,
        vc,
        zc,
        vc,
        zc,
        n,
        _check_int64("seed", seed),
        _check_int64("offset", offset),
        step,
        *scalars,
    )
    _launch(kernels.langevin_fwd_kernel, n, block, z.device, wrap, args, meta)
    if zc is not z:
        z.copy_(zc)
    if precondition and vc is not v:
        v.copy_(vc)


def langevin_step_state_(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    weight_decay: float,
    *,
    block: int | None = None,
    wrap: Wrap = None,
) -> None:
    """In-place step reading ``[seed, offset, step]`` from ``state``, then advancing it.

    The state is advanced by a second one-program kernel on the same stream:
    programs of the update kernel run concurrently, so none of them may write
    the state that the others still read.
    """
    _check_update_args(z, grad, v)
    _check_state(state, z)
    n = z.numel()
    if n > 0:
        zc, gc, vc = _contig(z), _contig(grad), _contig(v)
        scalars, meta = _bound(
            step_size,
            beta,
            eps,
            temperature,
            bias_correction,
            precondition,
            weight_decay,
            z.dtype is torch.float64,
            USE_STATE=True,
            STORE_V=bool(precondition),
        )
        args = (zc, gc, vc, zc, vc, state, n, 0, 0, 0, *scalars)
        _launch(kernels.langevin_fwd_kernel, n, block, z.device, wrap, args, meta)
        if zc is not z:
            z.copy_(zc)
        if precondition and vc is not v:
            v.copy_(vc)
    # One call is one step even for an empty tensor: the step counter always advances.
    _launch_on(z.device, kernels.advance_state_kernel, (1,), wrap, (state, (n + 3) // 4), {})


def langevin_fwd(
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
    weight_decay: float,
    seed: int,
    offset: int,
    *,
    block: int | None = None,
    wrap: Wrap = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional step: returns new contiguous ``(z_new, v_new)`` (``v_new`` float32)."""
    _check_update_args(z, grad, v)
    z_new = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    v_new = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    n = z.numel()
    if n == 0:
        return z_new, v_new
    scalars, meta = _bound(
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        weight_decay,
        z.dtype is torch.float64,
        USE_STATE=False,
        STORE_V=True,
    )
    args = (_contig(z), _contig(grad), _contig(v), z_new, v_new, z_new, n, _check_int64("seed", seed),
            _check_int64("offset", offset), step, *scalars)  # fmt: skip
    _launch(kernels.langevin_fwd_kernel, n, block, z.device, wrap, args, meta)
    return z_new, v_new


def langevin_bwd(
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
    weight_decay: float,
    seed: int,
    offset: int,
    *,
    block: int | None = None,
    wrap: Wrap = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-Jacobian product w.r.t. ``(z, grad)``: returns ``(grad_z, grad_grad)`` in z's dtype."""
    _check_update_args(z, grad, v)
    for name, t in (("grad_z_new", grad_z_new), ("grad_v_new", grad_v_new)):
        if t is None:
            continue
        if t.shape != z.shape or t.device != z.device or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor of z's shape on z's device")
    grad_z = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    grad_grad = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    n = z.numel()
    if n == 0:
        return grad_z, grad_grad
    gz = _contig(grad_z_new)
    scalars, meta = _bound(
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        weight_decay,
        z.dtype is torch.float64,
        HAS_GV=grad_v_new is not None,
    )
    args = (gz, gz if grad_v_new is None else _contig(grad_v_new), _contig(z), _contig(grad), _contig(v),
            grad_z, grad_grad, n, _check_int64("seed", seed), _check_int64("offset", offset), step,
            *scalars)  # fmt: skip
    _launch(kernels.langevin_bwd_kernel, n, block, z.device, wrap, args, meta)
    return grad_z, grad_grad


def philox_normal_(
    out: torch.Tensor, seed: int, offset: int, *, block: int | None = None, wrap: Wrap = None
) -> None:
    """Fill ``out`` (float32 or float64) with the contract's standard normals."""
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    n = out.numel()
    if n == 0:
        return
    oc = _contig(out)
    args = (oc, n, _check_int64("seed", seed), _check_int64("offset", offset))
    _launch(kernels.philox_normal_kernel, n, block, out.device, wrap, args, _F64[out.dtype is torch.float64])
    if oc is not out:
        out.copy_(oc)


def philox_uint32_(
    out: torch.Tensor, seed: int, offset: int, *, block: int | None = None, wrap: Wrap = None
) -> None:
    """Fill the int64 tensor ``out`` with the contract's uint32 words (values in ``[0, 2**32)``)."""
    if out.dtype != torch.int64:
        raise TypeError(f"out must be int64, got {out.dtype}")
    n = out.numel()
    if n == 0:
        return
    oc = _contig(out)
    args = (oc, n, _check_int64("seed", seed), _check_int64("offset", offset))
    _launch(kernels.philox_uint32_kernel, n, block, out.device, wrap, args, {})
    if oc is not out:
        out.copy_(oc)


#: The constexpr argument of the normal kernel by output precision.
_F64 = {False: {"F64": False}, True: {"F64": True}}


# --------------------------------------------------------------------------------------------------
# The multi-tensor step: one launch over device tables of the tensors (lpc_fast.triton.foreach)
# --------------------------------------------------------------------------------------------------


def _check_lists(zs, grads, vs) -> None:
    if len(grads) != len(zs) or len(vs) != len(zs):
        raise ValueError(f"zs, grads and vs must have one length, got {len(zs)}, {len(grads)} and {len(vs)}")
    device = zs[0].device if zs else None
    for i, (z, g, v) in enumerate(zip(zs, grads, vs)):
        try:
            _check_update_args(z, g, v)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"tensor {i} of the lists: {exc}") from None
        if z.device != device:
            raise ValueError(f"zs[{i}] must be on zs[0]'s device {device}, got {z.device}")


_F32 = torch.float32


def _prepare_lists(zs, grads, vs, device: torch.device) -> tuple[list, list, list, list, int, bool]:
    """One pass over the lists (each call costs per tensor): ``(zc, gc, vc, key, largest numel,
    copied)`` with contiguous versions of the tensors (``copied``: some are copies), and the
    table-cache key of their addresses, sizes and dtypes. A tensor that fails the quick checks
    re-runs :func:`_check_lists` for the message."""
    if len(grads) != len(zs) or len(vs) != len(zs):
        _check_lists(zs, grads, vs)
    zc, gc, vc, key = [], [], [], []
    largest = 0
    copied = False
    for z, g, v in zip(zs, grads, vs):
        dtype = z.dtype
        shape = z.shape
        if (
            dtype not in _FLOAT_DTYPES
            or g.dtype is not dtype
            or v.dtype is not _F32
            or g.shape != shape
            or v.shape != shape
            or z.device != device
            or g.device != device
            or v.device != device
        ):
            _check_lists(zs, grads, vs)
        if not (z.is_contiguous() and g.is_contiguous() and v.is_contiguous()):
            z, g, v, copied = z.contiguous(), g.contiguous(), v.contiguous(), True
        n = z.numel()
        if n > largest:
            largest = n
        zc.append(z)
        gc.append(g)
        vc.append(v)
        key.append((z.data_ptr(), g.data_ptr(), v.data_ptr(), n, dtype))
    return zc, gc, vc, key, largest, copied


def _launch_foreach(zs, grads, vs, state, seed, offset, step, hyper: tuple, block: int | None) -> int:
    """Check the lists and launch the foreach kernel; returns the total offset increment."""
    step_size, beta, eps, temperature, bias_correction, precondition, weight_decay = hyper
    device = zs[0].device
    zc, gc, vc, key, largest, copied = _prepare_lists(zs, grads, vs, device)
    if block is None:
        block = default_block(device, largest)
    else:
        block = int(block)
        if block < 4 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 4, got {block}")
    tensors, programs, count, total = foreach.tables_for(zc, gc, vc, device, block, key)
    if count == 0:  # every tensor is empty
        return total
    scalars, meta = _bound(
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        weight_decay,
        None,
        USE_STATE=state is not None,
    )
    args = (tensors, programs, tensors if state is None else state, _check_int64("seed", seed),
            _check_int64("offset", offset), step, *scalars)  # fmt: skip
    _launch_on(device, kernels.langevin_foreach_kernel, (count,), None, args, meta, block)
    if not copied:
        return total
    for z, v, z_c, v_c in zip(zs, vs, zc, vc):
        if z_c is not z:
            z.copy_(z_c)
        if precondition and v_c is not v:
            v.copy_(v_c)
    return total


def langevin_step_foreach_(
    zs: list[torch.Tensor],
    grads: list[torch.Tensor],
    vs: list[torch.Tensor],
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    weight_decay: float,
    seed: int,
    offset: int,
    *,
    block: int | None = None,
) -> None:
    """Update every ``(zs[i], vs[i])`` in place with one launch (:mod:`lpc_fast.triton.foreach`)."""
    if not zs:
        _check_lists(zs, grads, vs)
    else:
        hyper = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
        _launch_foreach(zs, grads, vs, None, seed, offset, step, hyper, block)


def langevin_step_foreach_state_(
    zs: list[torch.Tensor],
    grads: list[torch.Tensor],
    vs: list[torch.Tensor],
    state: torch.Tensor,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    weight_decay: float,
    *,
    block: int | None = None,
) -> None:
    """Capturable variant: reads ``[seed, offset, step]`` from ``state``, then advances it by the
    sum of the tensors' increments and one step (a second one-program launch, as for one tensor)."""
    total = 0
    if not zs:
        _check_lists(zs, grads, vs)
    else:
        _check_state(state, zs[0])
        hyper = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
        total = _launch_foreach(zs, grads, vs, state, 0, 0, 0, hyper, block)
    _launch_on(state.device, kernels.advance_state_kernel, (1,), None, (state, total), {})


# The fused likelihood's launcher has its own module; it is registered with the table's other ops.
from .likelihood import log_likelihood_grad  # noqa: E402,F401
