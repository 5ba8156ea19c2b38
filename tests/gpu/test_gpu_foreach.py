"""The multi-tensor op on CUDA tensors, with the cuda and triton backends: bit-identical to one
``langevin_step_`` per tensor in order (the contract of docs/ARCHITECTURE.md), for mixed dtypes and
layouts, more tensors than one launch takes, and a tensor larger than one chunk table.

The CUDA kernel starts a new launch past 24 tensors or 320 chunks of 4096 elements; the Triton
kernel takes every tensor in one launch. Identity with the per-tensor loop must hold on the GPU,
where compiled code may contract multiply-adds differently in two kernels that the interpreter
runs alike (the float16 / bfloat16 case of the first H100 run).
"""

from __future__ import annotations

import pytest
import torch
from _gpu_common import DEVICE, skip_unless_backend

import lpc_fast
from lpc_fast import rng

SEED = 2**63 + 5
OFFSET = 2**32 - 7  # the low counter word carries into the high word inside the list
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _mixed_list(count: int, seed: int, big: int = 0):
    """``count`` tensors of mixed shapes, dtypes and layouts (plus one of ``big`` elements)."""
    gen = torch.Generator().manual_seed(seed)
    zs, gs, vs = [], [], []
    for i in range(count):
        rows, cols = (int(x) for x in torch.randint(1, 70, (2,), generator=gen))
        dtype = DTYPES[i % len(DTYPES)]
        z = torch.randn(rows, cols, generator=gen)
        g = torch.randn(rows, cols, generator=gen)
        v = torch.rand(rows, cols, generator=gen)
        z, g, v = z.to(DEVICE, dtype), g.to(DEVICE, dtype), v.to(DEVICE)
        if i % 3 == 1:  # transposed views: the kernels copy in and out
            z, g, v = z.t(), g.t(), v.t()
        zs.append(z)
        gs.append(g)
        vs.append(v)
    if big:
        zs.append(torch.randn(big, generator=gen).to(DEVICE))
        gs.append(torch.randn(big, generator=gen).to(DEVICE))
        vs.append(torch.rand(big, generator=gen).to(DEVICE))
    return zs, gs, vs


def _clone(xs):
    return [x.clone() for x in xs]


def _assert_identical(got, want, what):
    differ = [i for i, (a, b) in enumerate(zip(got, want)) if not torch.equal(a, b)]
    assert not differ, f"{what}: tensors {differ} of {len(got)} differ from the per-tensor loop"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize(
    "count, big",
    [
        (30, 0),  # mixed dtypes, one Triton launch, two CUDA launches (past 24 tensors)
        (70, 0),  # several CUDA launches
        (3, 320 * 4096 + 1000),  # one tensor larger than one chunk table
    ],
    ids=["30-mixed", "70-mixed", "larger-than-a-chunk-table"],
)
@pytest.mark.parametrize("precondition", [True, False])
def test_foreach_is_bit_identical_to_the_per_tensor_loop(backend, count, big, precondition):
    skip_unless_backend(backend)
    zs, gs, vs = _mixed_list(count, seed=count + big, big=big)
    kw = dict(step=4, step_size=0.03, beta=0.95, eps=1e-3, temperature=0.7, precondition=precondition)
    z_loop, v_loop = _clone(zs), _clone(vs)
    offset = OFFSET
    for z, g, v in zip(z_loop, gs, v_loop):
        lpc_fast.langevin_step_(z, g, v, seed=SEED, offset=offset, backend=backend, **kw)
        offset = (offset + rng.offset_increment(z.numel())) % 2**64
    z_fe, v_fe = _clone(zs), _clone(vs)
    lpc_fast.langevin_step_foreach_(z_fe, gs, v_fe, seed=SEED, offset=OFFSET, backend=backend, **kw)
    torch.cuda.synchronize()
    _assert_identical(z_fe, z_loop, f"{backend} z")
    if precondition:
        _assert_identical(v_fe, v_loop, f"{backend} v")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_capturable_foreach_matches_the_explicit_offsets_and_advances_the_state(backend):
    skip_unless_backend(backend)
    zs, gs, vs = _mixed_list(30, seed=3)
    kw = dict(step_size=0.03, beta=0.95, eps=1e-3, temperature=1.0)
    z_want, v_want = _clone(zs), _clone(vs)
    lpc_fast.langevin_step_foreach_(
        z_want, gs, v_want, step=2, seed=SEED, offset=OFFSET, backend=backend, **kw
    )
    state = lpc_fast.make_rng_state(SEED, offset=OFFSET, step=2, device=DEVICE)
    lpc_fast.langevin_step_foreach_(zs, gs, vs, rng_state=state, backend=backend, **kw)
    torch.cuda.synchronize()
    _assert_identical(zs, z_want, f"{backend} z")
    _assert_identical(vs, v_want, f"{backend} v")
    _, consumed = rng.foreach_offsets(OFFSET, [z.numel() for z in zs])
    assert state.cpu().tolist() == [rng.to_int64(SEED), rng.to_int64((OFFSET + consumed) % 2**64), 3]
