"""Host launchers of the Triton kernels: argument checks, layout, launch configuration.

The launchers take the dispatcher ops' arguments (seeds and offsets as int64
values with the bits of the unsigned 64-bit numbers) and are shared by both
registrations in :mod:`lpc_fast.triton.ops`: called directly inside an opaque
``custom_op`` (interpreter) or, with ``wrap=torch.library.wrap_triton``, inside
a ``triton_op`` so that inductor sees the kernels.

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

import math
import struct
from collections.abc import Callable
from typing import Any

import torch
import triton

from . import interpreter_enabled, kernels

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


def default_block(device: torch.device, n: int) -> int:
    """Elements per program for ``n`` elements on ``device`` (results never depend on it)."""
    if device.type == "cpu" or interpreter_enabled():
        # One program for small tensors: the interpreter pays per program, not per element.
        return min(CPU_BLOCK, max(16, triton.next_power_of_2(n)))
    return GPU_BLOCK


def _device_guard(device: torch.device) -> Any:
    """The context that makes ``device`` current for a launch: ``torch.cuda.device`` for CUDA
    tensors (Triton launches on the current device, whatever the tensors' device), None otherwise."""
    return torch.cuda.device(device) if device.type == "cuda" else None


def _launch_on(device: torch.device, kernel: Any, grid: tuple[int, ...], wrap: Wrap, *args: Any, **meta: Any):
    """Launch ``kernel[grid](*args, **meta)`` with ``device`` current (the only launch site)."""
    fn = kernel if wrap is None else wrap(kernel)
    guard = _device_guard(device)
    if guard is None:  # CPU tensors (interpreter): nothing to pin, no context to enter
        fn[grid](*args, **meta)
    else:
        with guard:
            fn[grid](*args, **meta)


def _launch(
    kernel: Any, n: int, block: int | None, device: torch.device, wrap: Wrap, *args: Any, **meta: Any
):
    block = default_block(device, n) if block is None else int(block)
    if block < 4 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 4, got {block}")
    _launch_on(device, kernel, (triton.cdiv(n, block),), wrap, *args, BLOCK=block, **meta)


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


def _scalar_args(step_size: float, beta: float, eps: float, temperature: float) -> tuple[float, ...]:
    if temperature < 0 or step_size < 0:
        raise ValueError(f"step_size and temperature must be >= 0, got {step_size} and {temperature}")
    noise_scale = math.sqrt(2.0 * float(step_size) * float(temperature))
    return (
        *_split("step_size", step_size),
        *_split("beta", beta),
        *_split("1 - beta", 1.0 - float(beta)),
        *_split("eps", eps),
        *_split("sqrt(2*step_size*temperature)", noise_scale),
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


def _fwd_meta(z: torch.Tensor, bias_correction: bool, precondition: bool, prior_grad: bool) -> dict[str, Any]:
    return {
        "F64": z.dtype == torch.float64,
        "BIAS_CORRECTION": bool(bias_correction) and bool(precondition),
        "PRECONDITION": bool(precondition),
        "PRIOR_GRAD": bool(prior_grad),
    }


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
    prior_grad: bool,
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
    _launch(
        kernels.langevin_fwd_kernel,
        n,
        block,
        z.device,
        wrap,
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
        *_scalar_args(step_size, beta, eps, temperature),
        USE_STATE=False,
        STORE_V=bool(precondition),
        **_fwd_meta(z, bias_correction, precondition, prior_grad),
    )
    if not z.is_contiguous():
        z.copy_(zc)
    if precondition and not v.is_contiguous():
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
    prior_grad: bool,
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
        _launch(
            kernels.langevin_fwd_kernel,
            n,
            block,
            z.device,
            wrap,
            zc,
            gc,
            vc,
            zc,
            vc,
            state,
            n,
            0,
            0,
            0,
            *_scalar_args(step_size, beta, eps, temperature),
            USE_STATE=True,
            STORE_V=bool(precondition),
            **_fwd_meta(z, bias_correction, precondition, prior_grad),
        )
        if not z.is_contiguous():
            z.copy_(zc)
        if precondition and not v.is_contiguous():
            v.copy_(vc)
    # One call is one step even for an empty tensor: the step counter always advances.
    _launch_on(z.device, kernels.advance_state_kernel, (1,), wrap, state, (n + 3) // 4)


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
    prior_grad: bool,
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
    _launch(
        kernels.langevin_fwd_kernel,
        n,
        block,
        z.device,
        wrap,
        _contig(z),
        _contig(grad),
        _contig(v),
        z_new,
        v_new,
        z_new,
        n,
        _check_int64("seed", seed),
        _check_int64("offset", offset),
        step,
        *_scalar_args(step_size, beta, eps, temperature),
        USE_STATE=False,
        STORE_V=True,
        **_fwd_meta(z, bias_correction, precondition, prior_grad),
    )
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
    prior_grad: bool,
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
    _launch(
        kernels.langevin_bwd_kernel,
        n,
        block,
        z.device,
        wrap,
        gz,
        gz if grad_v_new is None else _contig(grad_v_new),
        _contig(z),
        _contig(grad),
        _contig(v),
        grad_z,
        grad_grad,
        n,
        _check_int64("seed", seed),
        _check_int64("offset", offset),
        step,
        *_scalar_args(step_size, beta, eps, temperature),
        HAS_GV=grad_v_new is not None,
        **_fwd_meta(z, bias_correction, precondition, prior_grad),
    )
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
    _launch(
        kernels.philox_normal_kernel,
        n,
        block,
        out.device,
        wrap,
        oc,
        n,
        _check_int64("seed", seed),
        _check_int64("offset", offset),
        F64=out.dtype == torch.float64,
    )
    if not out.is_contiguous():
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
    _launch(
        kernels.philox_uint32_kernel,
        n,
        block,
        out.device,
        wrap,
        oc,
        n,
        _check_int64("seed", seed),
        _check_int64("offset", offset),
    )
    if not out.is_contiguous():
        out.copy_(oc)


# The multi-tensor step (its own module: a pointer-table kernel with a host-side table cache).
from .foreach import langevin_step_foreach_, langevin_step_foreach_state_  # noqa: E402

# The fused likelihood's launcher has its own module; it is registered with the table's other ops.
from .likelihood import log_likelihood_grad  # noqa: E402,F401
