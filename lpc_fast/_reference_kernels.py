"""Kernels of the ``reference`` backend: one function per op of :data:`lpc_fast._schemas.OPS`.

Plain PyTorch (:mod:`lpc_fast.reference` for the maths, :mod:`lpc_fast.rng` for the
noise), registered as the ``lpc_fast::reference_<op>`` custom ops on import so that
autograd, ``opcheck`` and ``torch.compile`` see one op per call, as for the other
backends. Each function takes the op's arguments as keywords named as in the schema;
``seed`` and ``offset`` are int64 carrying the bits of the uint64 values. Half-precision
and float32 inputs are computed in float32, float64 in float64.
"""

from __future__ import annotations

import sys

import torch

from . import _schemas, reference, rng


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _noise(z: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    return rng.philox_normal_reference(
        z.numel(),
        seed=rng.to_uint64(seed),
        offset=rng.to_uint64(offset),
        device=z.device,
        dtype=_compute_dtype(z),
    ).view(z.shape)


def _fresh(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype, copy=True, memory_format=torch.contiguous_format)


def _hyper(kw: dict) -> dict:
    return {k: kw[k] for k in _schemas.HYPER_NAMES}


def langevin_fwd(*, z, grad, v, step, seed, offset, **hyper):
    dt = _compute_dtype(z)
    z_new, v_new = reference.langevin_update(
        z.to(dt), grad.to(dt), v.to(dt), _noise(z, seed, offset), step=step, **_hyper(hyper)
    )
    # Fresh contiguous outputs (never views of an input, which a custom op may not return).
    return _fresh(z_new, z.dtype), _fresh(v_new, torch.float32)


def langevin_bwd(*, grad_z_new, grad_v_new, z, grad, v, step, seed, offset, **hyper):
    dt = _compute_dtype(z)
    gz, gg = reference.langevin_update_backward(
        grad_z_new.to(dt),
        None if grad_v_new is None else grad_v_new.to(dt),
        z.to(dt),
        grad.to(dt),
        v.to(dt),
        _noise(z, seed, offset),
        step=step,
        **_hyper(hyper),
    )
    return _fresh(gz, z.dtype), _fresh(gg, z.dtype)


def langevin_step_(*, z, grad, v, **kw) -> None:
    z_new, v_new = langevin_fwd(z=z, grad=grad, v=v, **kw)
    z.copy_(z_new)
    v.copy_(v_new)


def langevin_step_state_(*, z, grad, v, state, **hyper) -> None:
    seed, offset, step = (int(x) for x in state.tolist())
    if z.numel():
        langevin_step_(z=z, grad=grad, v=v, step=step, seed=seed, offset=offset, **hyper)
    advance = torch.tensor([0, rng.offset_increment(z.numel()), 1], dtype=torch.int64, device=state.device)
    # int64 addition wraps modulo 2**64, as the uint64 offset does.
    state.add_(advance)


def langevin_step_foreach_(*, zs, grads, vs, step, seed, offset, **hyper) -> None:
    # The per-tensor loop that the one-launch kernels reproduce bit for bit.
    offsets, _ = rng.foreach_offsets(offset, [z.numel() for z in zs])
    for z, g, v, off in zip(zs, grads, vs, offsets):
        if z.numel():
            off = rng.to_int64(off) if isinstance(off, int) else off  # a SymInt passes through
            langevin_step_(z=z, grad=g, v=v, step=step, seed=seed, offset=off, **hyper)


def langevin_step_foreach_state_(*, zs, grads, vs, state, **hyper) -> None:
    seed, offset, step = (int(x) for x in state.tolist())
    langevin_step_foreach_(zs=zs, grads=grads, vs=vs, step=step, seed=seed, offset=offset, **hyper)
    _, total = rng.foreach_offsets(0, [z.numel() for z in zs])
    advance = torch.tensor([0, rng.to_int64(total), 1], dtype=torch.int64, device=state.device)
    state.add_(advance)  # int64 addition wraps modulo 2**64, as the uint64 offset does


def philox_normal_(*, out, seed, offset) -> None:
    normals = rng.philox_normal_reference(
        out.numel(),
        seed=rng.to_uint64(seed),
        offset=rng.to_uint64(offset),
        device=out.device,
        dtype=torch.float64,
    )
    out.copy_(normals.view(out.shape))


def philox_uint32_(*, out, seed, offset) -> None:
    words = rng.philox_uint32(
        out.numel(), seed=rng.to_uint64(seed), offset=rng.to_uint64(offset), device=out.device
    )
    out.copy_(words.view(out.shape))


_schemas.register_python_kernels("reference", sys.modules[__name__])
