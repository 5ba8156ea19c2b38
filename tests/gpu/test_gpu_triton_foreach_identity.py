"""Triton foreach against the per-tensor Triton op on a GPU: bit-identical for every dtype.

Both kernels run one tile function (``lpc_fast.triton.kernels._step_tile``), so compiled code that
contracts multiply-adds (which the interpreter never does) must still agree bit for bit: the case
that differed for float16 / bfloat16 before the kernels shared their body.
"""

from __future__ import annotations

import torch
from _gpu_common import DEVICE, skip_unless_backend

import lpc_fast
from lpc_fast import rng

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HYPER = dict(step_size=3e-2, beta=0.9, eps=1e-3, temperature=1.0, prior_grad=True)


def test_triton_foreach_is_bit_identical_to_the_per_tensor_loop_for_mixed_dtypes():
    skip_unless_backend("triton")
    gen = torch.Generator().manual_seed(17)
    shapes = [(97,), (33, 65), (4096 + 7,), (5, 3, 11)] * 8  # 32 tensors, sizes not block multiples
    zs, gs, vs = [], [], []
    for i, shape in enumerate(shapes):
        dtype = DTYPES[i % len(DTYPES)]
        zs.append(torch.randn(shape, generator=gen).to(DEVICE, dtype))
        gs.append(torch.randn(shape, generator=gen).to(DEVICE, dtype))
        vs.append(torch.rand(shape, generator=gen).to(DEVICE))
    seed, offset = 2**63 + 3, 2**32 - 11
    z_loop, v_loop = [z.clone() for z in zs], [v.clone() for v in vs]
    for t in range(1, 4):  # a few steps: bias correction and v feed back
        off = offset
        for z, g, v in zip(z_loop, gs, v_loop):
            lpc_fast.langevin_step_(z, g, v, step=t, seed=seed, offset=off, backend="triton", **HYPER)
            off = (off + rng.offset_increment(z.numel())) % 2**64
        lpc_fast.langevin_step_foreach_(
            zs, gs, vs, step=t, seed=seed, offset=offset, backend="triton", **HYPER
        )
        offset = off
    torch.cuda.synchronize()
    differ = [
        i for i in range(len(zs)) if not (torch.equal(zs[i], z_loop[i]) and torch.equal(vs[i], v_loop[i]))
    ]
    assert not differ, f"tensors {differ} (dtypes {[str(zs[i].dtype) for i in differ]}) differ"
