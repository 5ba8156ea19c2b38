"""The ops as the dispatcher, autograd and torch.compile see them: opcheck, gradcheck, compile."""

from __future__ import annotations

import pytest
import torch
from _helpers import cpu_backend_params

import lpc_fast
from lpc_fast import _schemas, reference, rng
from lpc_fast.dispatch import get_backend

SCALARS = (0.05, 0.9, 1e-3, 0.7, True, True, 0.37)  # step_size, beta, eps, temperature, bc, pc, wd


def test_reference_backward_formula_equals_autograd_of_the_forward():
    # Independent oracle for langevin_update_backward: autograd through langevin_update in float64.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(300, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.rand(300, dtype=torch.float64, generator=gen) + 0.01  # q > 0: smooth everywhere
    xi = torch.randn(300, dtype=torch.float64, generator=gen)
    for precondition in (True, False):
        for weight_decay in (1.0, 0.0, 0.37):
            kw = dict(step=4, step_size=0.03, beta=0.95, eps=1e-3, temperature=0.6)
            kw.update(precondition=precondition, weight_decay=weight_decay)
            zn, vn = reference.langevin_update(z, g, v, xi, **kw)
            a = torch.randn(300, dtype=torch.float64, generator=gen)
            b = torch.randn(300, dtype=torch.float64, generator=gen)
            loss = (zn * a).sum() + ((vn * b).sum() if precondition else 0.0)
            want_z, want_g = torch.autograd.grad(loss, (z, g))
            got_z, got_g = reference.langevin_update_backward(a, b, z.detach(), g.detach(), v, xi, **kw)
            torch.testing.assert_close(got_z, want_z, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("weight_decay", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("precondition", [True, False])
def test_gradcheck_float64_at_fixed_seed_and_offset(backend, weight_decay, precondition):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(23, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(23, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.rand(23, generator=gen) + 0.01

    def f(z, g):
        z_new, _ = lpc_fast.langevin_step(
            z,
            g,
            v,
            step=3,
            step_size=0.05,
            beta=0.9,
            temperature=0.7,
            weight_decay=weight_decay,
            precondition=precondition,
            seed=11,
            offset=2**32 - 2,
            backend=backend,
        )
        return z_new

    # v_new is float32 by contract, so only z_new is finite-differenced; its cotangent path is
    # checked against the reference backward in test_op_parity.
    assert torch.autograd.gradcheck(f, (z, g), eps=1e-6, atol=1e-7, rtol=1e-6)


def _sample_args(dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(37, 3, dtype=dtype, generator=gen).requires_grad_(requires_grad)
    g = torch.randn(37, 3, dtype=dtype, generator=gen).requires_grad_(requires_grad)
    v = torch.rand(37, 3, generator=gen)
    return z, g, v


def _opcheck_cases(dtype: torch.dtype) -> dict[str, list[tuple]]:
    """Arguments for every op of the table (keyed by op name)."""
    seed, offset = rng.to_int64(2**63 + 5), rng.to_int64(2**32 - 1)
    z, g, v = _sample_args(dtype, requires_grad=True)
    zs, gs, vs = _sample_args(dtype)
    gz, gv = torch.randn_like(zs), torch.randn_like(vs)
    # The foreach ops: a list of two tensors of different shapes and dtypes.
    z2, g2, v2 = (
        x[:5].clone() for x in _sample_args(torch.float16 if dtype == torch.float32 else torch.float32)
    )
    lists = ([zs.clone(), z2], [gs, g2], [vs.clone(), v2])
    return {
        "langevin_fwd": [(z, g, v, 3, *SCALARS, seed, offset)],
        "langevin_bwd": [
            (gz, gv, zs, gs, vs, 3, *SCALARS, seed, offset),
            (gz, None, zs, gs, vs, 3, *SCALARS, seed, offset),
        ],
        "langevin_step_": [(zs, gs, vs, 3, *SCALARS, seed, offset)],
        "langevin_step_state_": [(zs, gs, vs, lpc_fast.make_rng_state(7, 9, 2), *SCALARS)],
        "langevin_step_foreach_": [(*lists, 3, *SCALARS, seed, offset)],
        "langevin_step_foreach_state_": [(*lists, lpc_fast.make_rng_state(7, 9, 2), *SCALARS)],
        "philox_normal_": [(torch.empty(41, dtype=dtype), seed, offset)],
        "philox_uint32_": [(torch.empty(41, dtype=torch.int64), seed, offset)],
        "log_likelihood_grad": _likelihood_cases(dtype),
    }


def _likelihood_cases(dtype: torch.dtype) -> list[tuple]:
    """Every likelihood kind; fixed and learned (float32 parameter) log sigma."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 17, (3, 1, 2, 4), generator=gen).to(dtype) / 16
    out = torch.randn(3, 1, 2, 4, generator=gen).to(dtype).requires_grad_(True)
    ls = torch.tensor(-2.0, requires_grad=True)
    return [
        (x, out, None, -2.3, 0, True, 17),
        (x, out, ls, 0.0, 0, False, 17),
        (x, out, ls, 0.0, 1, True, 0),
        (x, out, None, -1.0, 1, False, 0),
        (x, out, None, 0.0, 2, False, 0),
    ]


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_opcheck_every_op(backend):
    prefix = _schemas.PREFIXES[backend]
    chosen = get_backend(backend)
    for dtype in (torch.float32, torch.float64):
        cases = _opcheck_cases(dtype)
        assert set(cases) == set(_schemas.OPS), "every op of the table needs a case here"
        for name in _schemas.OPS:
            call = chosen._op(name)
            # The Triton backend calls its op through the eager bypass (lpc_fast._eager), which
            # holds the op as .dispatcher_op; the other backends call the op itself.
            op = getattr(call, "dispatcher_op", call)
            assert op is getattr(torch.ops.lpc_fast, prefix + name).default
            assert _schemas.same_schema(name, op), f"{op._schema} != {_schemas.schema(name)}"
            for args in cases[name]:
                torch.library.opcheck(op, args)


def test_cpp_kernels_attach_to_every_table_op():
    # The C++ extension defines no schema: every table op gets its kernel from TORCH_LIBRARY_IMPL.
    if get_backend("cpu").unsupported_reason(torch.device("cpu")) is not None:
        pytest.skip("lpc_fast._C is not built")
    for name in _schemas.OPS:
        qualname = _schemas.qualname("", name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), qualname


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_compiled_20_step_loop_matches_eager_with_at_most_one_recompile(backend):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    n = 2560  # an LPC batch: 64 x 40
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(n, generator=gen)
    grads = torch.randn(20, n, generator=gen)
    inc = rng.offset_increment(n)

    def step(z, g, v, t, offset):
        lpc_fast.langevin_step_(z, g, v, step=t, step_size=0.01, seed=5, offset=offset, backend=backend)
        return z

    compiled = torch.compile(step, fullgraph=True)
    z_e, v_e = z0.clone(), torch.zeros(n)
    z_c, v_c = z0.clone(), torch.zeros(n)
    for t in range(1, 21):
        step(z_e, grads[t - 1], v_e, t, (t - 1) * inc)
        compiled(z_c, grads[t - 1], v_c, t, (t - 1) * inc)
    torch.testing.assert_close(z_c, z_e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_c, v_e, rtol=1e-6, atol=1e-7)
    # One graph for the first call, one more once step/offset become dynamic; none after that.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_compiled_functional_step_is_differentiable(backend):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    z, g, v = _sample_args(torch.float32, requires_grad=True)

    def f(z, g, offset):
        z_new, v_new = lpc_fast.langevin_step(
            z, g, v, step=2, step_size=0.05, seed=1, offset=offset, backend=backend
        )
        return (z_new**2).sum() + v_new.sum()

    compiled = torch.compile(f, fullgraph=True)
    want = torch.autograd.grad(f(z, g, 8), (z, g))
    got = torch.autograd.grad(compiled(z, g, 8), (z, g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
