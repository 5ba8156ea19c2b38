"""Kernels of the ``reference`` backend: one function per op of :data:`lpc_fast._schemas.OPS`.

Plain PyTorch (:mod:`lpc_fast.reference` for the maths, :mod:`lpc_fast.rng` for the
noise), registered as the ``lpc_fast::reference_<op>`` custom ops on import so that
autograd, ``opcheck`` and ``torch.compile`` see one op per call, as for the other
backends. Each function takes the op's arguments as keywords named as in the schema;
``seed`` and ``offset`` are int64 carrying the bits of the uint64 values. Half-precision
and float32 inputs are computed in float32, float64 in float64.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def _autograd_on() -> Iterator[None]:
    """Record autograd inside an op kernel, which runs with the autograd dispatch keys excluded."""
    keys = (
        torch._C.DispatchKey.AutogradFunctionality,
        torch._C.DispatchKey.AutogradOther,
        torch._C.DispatchKey.AutogradNestedTensor,
    )
    before = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in keys]
    try:
        for k in keys:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
        with torch.enable_grad():
            yield
    finally:
        for k, was in zip(keys, before):
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, was)


def log_likelihood_grad(*, x, out, log_sigma, log_sigma_value, kind, sigmoid, num_levels):
    """The fused likelihood op by autograd of the reference formulas (in ``out``'s dtype).

    ``log sigma`` enters as one leaf per data point, so that one backward gives the per-point
    derivative the op returns.
    """
    from .models.likelihood_math import pixel_log_likelihood_reference

    rows = out.shape[0]
    with _autograd_on():
        o = out.detach().to(copy=True).requires_grad_(True)
        if log_sigma is not None:
            ls0 = log_sigma.detach().to(out.dtype).reshape(())
        else:
            ls0 = torch.tensor(log_sigma_value, dtype=out.dtype, device=out.device)
        ls = ls0.expand(rows).clone().requires_grad_(True)
        pixels = pixel_log_likelihood_reference(
            x.to(out.dtype), o, ls.view((rows,) + (1,) * (out.dim() - 1)), kind, sigmoid, num_levels
        )
        log_prob = pixels.reshape(rows, -1).sum(1)
        grad_out, grad_ls = torch.autograd.grad(log_prob.sum(), [o, ls], allow_unused=True)
    if grad_ls is None:  # Bernoulli: no scale
        grad_ls = torch.zeros_like(ls)
    return log_prob.detach(), grad_out.contiguous(), grad_ls.detach()


_schemas.register_python_kernels("reference", sys.modules[__name__])
