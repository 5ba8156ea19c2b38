"""The multi-tensor Langevin step in Triton: one launch over a table of tensor pointers.

``lpc_fast::triton_langevin_step_foreach_`` updates a list of tensors in place with one kernel
launch (plus the one-program state advance in the capturable variant). The host builds two
int64 tables on the device:

* one row per non-empty tensor: the addresses of ``z``, ``grad`` and ``v``, the element count,
  the tensor's noise offset relative to the call's ``offset`` (:func:`lpc_fast.rng.foreach_offsets`)
  and a dtype code;
* one row per program: the tensor it works on and its block index within that tensor.

The kernel casts the addresses to pointers of the tensor's dtype and branches on the dtype
code at run time, so tensors of different dtypes share the launch. Program ``(t, b)`` computes
exactly what program ``b`` of the single-tensor kernel computes for tensor ``t`` (same noise
counters, same arithmetic), so the result is bit-identical to one ``langevin_step_`` call per
tensor in order.

The tables depend only on the tensors' addresses, sizes and dtypes and on the block size; they
are cached under that key (a few entries), so a sampler that steps the same tensors every
iteration builds and copies them once. A cache hit also means no host-to-device copy, so a
capturable step can be recorded into a CUDA graph once it has run eagerly on the same tensors.
Non-contiguous tensors go through contiguous copies (whose addresses change from call to call).

The ops are registered (as ``lpc_fast::triton_langevin_step_foreach_`` and ``..._state_``) from
the op table through :mod:`lpc_fast.triton.launch`, always as opaque ``custom_op``
(``OpSpec.opaque``): the table is built from real addresses, which ``torch.compile`` cannot
trace through ``triton_op``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton

from .. import rng
from . import kernels, launch

__all__ = ["langevin_step_foreach_", "langevin_step_foreach_state_", "TABLE_CACHE_SIZE"]

#: Tables kept (one per distinct list of tensors): a sampler and its fast loop each use one.
TABLE_CACHE_SIZE = 8
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_TENSOR_COLUMNS = 6  # z address, grad address, v address, numel, relative offset, dtype code
_tables: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = OrderedDict()


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------


def _check_lists(zs, grads, vs) -> None:
    if len(grads) != len(zs) or len(vs) != len(zs):
        raise ValueError(f"zs, grads and vs must have one length, got {len(zs)}, {len(grads)} and {len(vs)}")
    for i, (z, g, v) in enumerate(zip(zs, grads, vs)):
        try:
            launch._check_update_args(z, g, v)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"tensor {i} of the lists: {exc}") from None
        if z.device != zs[0].device:
            raise ValueError(f"zs[{i}] must be on zs[0]'s device {zs[0].device}, got {z.device}")


def block_size(device: torch.device, zs) -> int:
    """Elements per program for a list (the largest tensor decides; results never depend on it)."""
    return launch.default_block(device, max((z.numel() for z in zs), default=1))


def _tables_for(zc, gc, vc, device: torch.device, block: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(tensor table, program table, programs)`` for contiguous lists, from the cache if possible."""
    key = (device, block) + tuple(
        (z.data_ptr(), g.data_ptr(), v.data_ptr(), z.numel(), z.dtype) for z, g, v in zip(zc, gc, vc)
    )
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        return hit
    rel, _ = rng.foreach_offsets(0, [z.numel() for z in zc])
    tensor_rows, program_rows = [], []
    for z, g, v, r in zip(zc, gc, vc, rel):
        n = z.numel()
        if n == 0:
            continue
        row = len(tensor_rows)
        tensor_rows.append(
            [z.data_ptr(), g.data_ptr(), v.data_ptr(), n, rng.to_int64(r), _DTYPE_CODES[z.dtype]]
        )
        program_rows.extend([row, b] for b in range(triton.cdiv(n, block)))
    tensors = torch.tensor(tensor_rows, dtype=torch.int64, device=device).reshape(-1, _TENSOR_COLUMNS)
    programs = torch.tensor(program_rows, dtype=torch.int64, device=device).reshape(-1, 2)
    entry = (tensors, programs, len(program_rows))
    _tables[key] = entry
    while len(_tables) > TABLE_CACHE_SIZE:
        _tables.popitem(last=False)
    return entry


def _launch_foreach(zs, grads, vs, state, seed, offset, step, hyper: tuple, block: int | None) -> None:
    step_size, beta, eps, temperature, bias_correction, precondition, weight_decay = hyper
    if not any(z.numel() for z in zs):
        return
    device = zs[0].device
    block = block_size(device, zs) if block is None else int(block)
    if block < 4 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 4, got {block}")
    zc = [launch._contig(z) for z in zs]
    gc = [launch._contig(g) for g in grads]
    vc = [launch._contig(v) for v in vs]
    tensors, programs, count = _tables_for(zc, gc, vc, device, block)
    launch._launch_on(
        device,
        kernels.langevin_foreach_kernel,
        (count,),
        None,
        tensors,
        programs,
        tensors if state is None else state,
        launch._check_int64("seed", seed),
        launch._check_int64("offset", offset),
        step,
        *launch._scalar_args(step_size, beta, eps, temperature, weight_decay),
        BLOCK=block,
        BIAS_CORRECTION=bool(bias_correction) and bool(precondition),
        PRECONDITION=bool(precondition),
        PRIOR_GRAD=float(weight_decay) != 0.0,
        USE_STATE=state is not None,
    )
    for z, v, z_c, v_c in zip(zs, vs, zc, vc):
        if z_c is not z:
            z.copy_(z_c)
        if precondition and v_c is not v:
            v.copy_(v_c)


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
    """Update every ``(zs[i], vs[i])`` in place with one launch (see the module docstring)."""
    _check_lists(zs, grads, vs)
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
    _check_lists(zs, grads, vs)
    if zs:
        launch._check_state(state, zs[0])
    hyper = (step_size, beta, eps, temperature, bias_correction, precondition, weight_decay)
    _launch_foreach(zs, grads, vs, state, 0, 0, 0, hyper, block)
    _, total = rng.foreach_offsets(0, [z.numel() for z in zs])
    launch._launch_on(state.device, kernels.advance_state_kernel, (1,), None, state, total)
