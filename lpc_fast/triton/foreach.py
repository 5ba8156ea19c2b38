"""Device tables of the multi-tensor Triton step: one launch over a table of tensor pointers.

``lpc_fast::triton_langevin_step_foreach_`` updates a list of tensors in place with one kernel
launch (plus the one-program state advance in the capturable variant; the launchers are in
:mod:`lpc_fast.triton.launch`). The host builds two int64 tables on the device:

* one row per non-empty tensor: the addresses of ``z``, ``grad`` and ``v``, the element count,
  the tensor's noise offset relative to the call's ``offset`` (:func:`lpc_fast.rng.foreach_offsets`)
  and a dtype code;
* one row per program: the tensor it works on and its block index within that tensor.

The kernel casts the addresses to pointers of the tensor's dtype and branches on the dtype
code at run time, so tensors of different dtypes share the launch. Program ``(t, b)`` runs the
tile function of the single-tensor kernel on block ``b`` of tensor ``t`` (same noise counters,
same code), so the result is bit-identical to one ``langevin_step_`` call per tensor in order.

The tables depend only on the tensors' addresses, sizes and dtypes and on the block size; they
are cached under that key (a few entries), so a sampler that steps the same tensors every
iteration builds and copies them once. A cache hit also means no host-to-device copy, so a
capturable step can be recorded into a CUDA graph once it has run eagerly on the same tensors.
Non-contiguous tensors go through contiguous copies (whose addresses change from call to call).

The ops are always registered as opaque ``custom_op`` (``OpSpec.opaque``): the table is built
from real addresses, which ``torch.compile`` cannot trace through ``triton_op``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton

from .. import rng

__all__ = ["TABLE_CACHE_SIZE", "DTYPE_CODES", "tables_for"]

#: Tables kept (one per distinct list of tensors): a sampler and its fast loop each use one.
TABLE_CACHE_SIZE = 8
#: Dtype code of a tensor row (the kernel's run-time branch).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_TENSOR_COLUMNS = 6  # z address, grad address, v address, numel, relative offset, dtype code
_tables: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int, int]] = OrderedDict()


def tables_for(
    zc, gc, vc, device: torch.device, block: int, key: list | None = None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(tensor table, program table, programs, total offset increment)`` for contiguous lists,
    from the cache when the same tensors (addresses, sizes, dtypes) come again. ``key``: the
    per-tensor ``(z, grad, v addresses, numel, dtype)`` when the caller has them already."""
    if key is None:
        key = [(z.data_ptr(), g.data_ptr(), v.data_ptr(), z.numel(), z.dtype) for z, g, v in zip(zc, gc, vc)]
    key = (device, block, *key)
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        return hit
    rel, total = rng.foreach_offsets(0, [z.numel() for z in zc])
    tensor_rows, program_rows = [], []
    for z, g, v, r in zip(zc, gc, vc, rel):
        n = z.numel()
        if n == 0:
            continue
        row = len(tensor_rows)
        tensor_rows.append(
            [z.data_ptr(), g.data_ptr(), v.data_ptr(), n, rng.to_int64(r), DTYPE_CODES[z.dtype]]
        )
        program_rows.extend([row, b] for b in range(triton.cdiv(n, block)))
    tensors = torch.tensor(tensor_rows, dtype=torch.int64, device=device).reshape(-1, _TENSOR_COLUMNS)
    programs = torch.tensor(program_rows, dtype=torch.int64, device=device).reshape(-1, 2)
    entry = (tensors, programs, len(program_rows), total)
    _tables[key] = entry
    while len(_tables) > TABLE_CACHE_SIZE:
        _tables.popitem(last=False)
    return entry
