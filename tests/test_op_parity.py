"""Every backend x dtype x odd shape x layout against the float64 reference with identical noise.

The expectation is computed by lpc_fast.reference in float64 from the same inputs, with the noise
of the RNG contract (lpc_fast.rng, itself checked against Random123's known answers), never from
what a kernel returns. The Triton backend runs the same tests under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import TOLERANCES, cpu_backend_params, make_layout

import lpc_fast
from lpc_fast import reference, rng

SHAPES = [(1,), (7,), (1025,), (2**17 + 3,), (64, 40), (64, 3, 32, 32)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HYPER = dict(step_size=0.05, beta=0.9, eps=1e-3, temperature=0.8, bias_correction=True)
SEED, OFFSET, STEP = 2**33 + 17, 2**32 - 5, 3  # offset straddles the low-word carry


def _inputs(shape, dtype, contiguous, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = make_layout(shape, dtype, contiguous, lambda s: torch.randn(s, generator=gen, dtype=torch.float64))
    g = make_layout(shape, dtype, contiguous, lambda s: torch.randn(s, generator=gen, dtype=torch.float64))
    v = make_layout(
        shape, torch.float32, contiguous, lambda s: torch.rand(s, generator=gen, dtype=torch.float64)
    )
    return z, g, v


def _expected(z, g, v, *, precondition=True, prior_grad=False, **over):
    hyper = {**HYPER, **over}
    noise = rng.philox_normal_reference(z.numel(), seed=SEED, offset=OFFSET).view(z.shape)
    return reference.langevin_update(
        z.double(),
        g.double(),
        v.double(),
        noise,
        step=STEP,
        precondition=precondition,
        prior_grad=prior_grad,
        **hyper,
    )


def _close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_inplace_step_matches_float64_reference(backend, dtype, shape, contiguous):
    z, g, v = _inputs(shape, dtype, contiguous)
    z_exp, v_exp = _expected(z, g, v)
    lpc_fast.langevin_step_(z, g, v, step=STEP, seed=SEED, offset=OFFSET, backend=backend, **HYPER)
    _close(z, z_exp.to(dtype), dtype, "z")
    # v is float32 state: its only error is float32 rounding of beta*v + (1-beta)*s^2.
    torch.testing.assert_close(v.double(), v_exp.float().double(), rtol=2e-6, atol=1e-7)
    assert z.dtype == dtype and v.dtype == torch.float32


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("precondition", [True, False], ids=["precond", "ula"])
@pytest.mark.parametrize("prior_grad", [False, True], ids=["lik", "prior"])
def test_options_match_reference(backend, dtype, precondition, prior_grad):
    z, g, v = _inputs((1031,), dtype, True, seed=1)
    v_before = v.clone()
    z_exp, v_exp = _expected(z, g, v, precondition=precondition, prior_grad=prior_grad)
    lpc_fast.langevin_step_(
        z,
        g,
        v,
        step=STEP,
        seed=SEED,
        offset=OFFSET,
        precondition=precondition,
        prior_grad=prior_grad,
        backend=backend,
        **HYPER,
    )
    _close(z, z_exp.to(dtype), dtype, "z")
    if precondition:
        torch.testing.assert_close(v.double(), v_exp.float().double(), rtol=2e-6, atol=1e-7)
    else:
        assert torch.equal(v, v_before), "plain ULA must leave the state untouched"


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (1025,), (64, 3, 32, 32)], ids=str)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_functional_forward_and_backward_match_reference(backend, dtype, shape, contiguous):
    z, g, v = _inputs(shape, dtype, contiguous, seed=2)
    z_exp, v_exp = _expected(z, g, v, prior_grad=True)
    z_new, v_new = lpc_fast.langevin_step(
        z, g, v, step=STEP, seed=SEED, offset=OFFSET, prior_grad=True, backend=backend, **HYPER
    )
    _close(z_new, z_exp.to(dtype), dtype, "z_new")
    torch.testing.assert_close(v_new.double(), v_exp.float().double(), rtol=2e-6, atol=1e-7)

    gen = torch.Generator().manual_seed(3)
    gz = torch.randn(shape, generator=gen, dtype=torch.float64)
    # v_new is float32, so its cotangent is float32 too: round it once here for the oracle as well.
    gv = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
    noise = rng.philox_normal_reference(z.numel(), seed=SEED, offset=OFFSET).view(shape)
    want_z, want_g = reference.langevin_update_backward(
        gz,
        gv,
        z.double(),
        g.double(),
        v.double(),
        noise,
        step=STEP,
        prior_grad=True,
        precondition=True,
        **HYPER,
    )
    zr = z.detach().clone().requires_grad_(True)
    gr = g.detach().clone().requires_grad_(True)
    out_z, out_v = lpc_fast.langevin_step(
        zr, gr, v, step=STEP, seed=SEED, offset=OFFSET, prior_grad=True, backend=backend, **HYPER
    )
    torch.autograd.backward([out_z, out_v], [gz.to(dtype), gv.float()])
    # The backward has a few more operations than the forward (p**2, 1/sqrt(p)): double the atol.
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(want_g.abs().max()))
    torch.testing.assert_close(gr.grad.double(), want_g, rtol=rtol * 4, atol=atol * 4 * scale)
    torch.testing.assert_close(zr.grad.double(), want_z, rtol=rtol * 4, atol=atol * 4 * scale)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_zero_temperature_isolates_the_drift(backend):
    z, g, v = _inputs((4099,), torch.float64, True, seed=4)
    s = g.double()
    v_new = 0.9 * v.double() + 0.1 * s * s
    p = 1.0 / (1e-3 + torch.sqrt(v_new / (1 - 0.9**STEP)))
    want = z - 0.05 * p * s
    lpc_fast.langevin_step_(
        z,
        g,
        v,
        step=STEP,
        step_size=0.05,
        beta=0.9,
        eps=1e-3,
        temperature=0.0,
        seed=SEED,
        offset=OFFSET,
        backend=backend,
    )
    torch.testing.assert_close(z, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_zero_gradient_and_frozen_state_isolate_the_noise(backend, dtype):
    # g = 0, v = 0, beta = 1 (frozen): v stays 0, p = 1/eps, so z' - z = sqrt(2*eta*tau/eps) * xi.
    n = 4099
    z = torch.zeros(n, dtype=dtype)
    g = torch.zeros(n, dtype=dtype)
    v = torch.zeros(n, dtype=torch.float32)
    lpc_fast.langevin_step_(
        z,
        g,
        v,
        step=1,
        step_size=1e-3,
        beta=1.0,
        bias_correction=False,
        eps=1e-3,
        temperature=1.0,
        seed=SEED,
        offset=OFFSET,
        backend=backend,
    )
    assert torch.count_nonzero(v) == 0
    xi = rng.philox_normal_reference(n, seed=SEED, offset=OFFSET)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(z.double() / (2.0**0.5), xi, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize(
    "seed,offset", [(0, 0), (7, 2**32 - 1), (2**32 + 3, 2**33), (2**64 - 1, 2**64 - 2), (2**63, 2**63 - 1)]
)
def test_uint32_stream_is_bit_exact(backend, seed, offset):
    n = 4103  # not a multiple of 4: the last counter is used partially
    got = lpc_fast.philox_uint32(n, seed=seed, offset=offset, backend=backend)
    assert torch.equal(got, rng.philox_uint32(n, seed=seed, offset=offset))


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_normals_agree_with_the_contract(backend, dtype):
    n = 50_001
    got = lpc_fast.philox_normal(n, seed=77, offset=2**32 - 9, dtype=dtype, backend=backend)
    want = rng.philox_normal_reference(n, seed=77, offset=2**32 - 9)
    # float32 log/sqrt/sin/cos: relative 1e-5 (LPC.md §5) plus an absolute term for values near the
    # zeros of cos/sin, where the fp32 angle's rounding dominates.
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_empty_tensors_are_a_no_op(backend):
    z = torch.empty(0, 3)
    v = torch.empty(0, 3)
    lpc_fast.langevin_step_(z, z.clone(), v, step=1, step_size=0.1, seed=0, offset=0, backend=backend)
    z_new, v_new = lpc_fast.langevin_step(
        z, z.clone(), v, step=1, step_size=0.1, seed=0, offset=0, backend=backend
    )
    assert z_new.shape == (0, 3) and v_new.shape == (0, 3)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_capturable_state_equals_explicit_arguments_and_advances(backend):
    n = 1030
    z1, g, v1 = _inputs((n,), torch.float32, True, seed=5)
    z2, v2 = z1.clone(), v1.clone()
    state = lpc_fast.make_rng_state(SEED, OFFSET, STEP)
    for k in range(3):
        lpc_fast.langevin_step_(z1, g, v1, rng_state=state, backend=backend, **HYPER)
        lpc_fast.langevin_step_(
            z2,
            g,
            v2,
            step=STEP + k,
            seed=SEED,
            offset=OFFSET + k * rng.offset_increment(n),
            backend=backend,
            **HYPER,
        )
    assert torch.equal(z1, z2) and torch.equal(v1, v2)
    assert state.tolist() == [SEED, OFFSET + 3 * rng.offset_increment(n), STEP + 3]
