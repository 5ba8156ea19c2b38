"""Every GPU backend against the float64 reference with identical noise.

Backends: ``cuda`` (the C++/CUDA kernels), ``triton`` and ``reference``, through the public API
(``lpc_fast.langevin_step_`` / ``langevin_step`` / ``philox_normal`` / ``philox_uint32``) and,
for ``cuda``, through the dispatcher ops ``torch.ops.lpc_fast.*`` directly.
"""

from __future__ import annotations

import pytest
import torch
from _gpu_common import (
    DEVICE,
    DTYPES,
    GPU_BACKENDS,
    HYPER,
    assert_backward_close,
    assert_forward_close,
    make_inputs,
    oracle_backward,
    oracle_forward,
    skip_unless_backend,
)

import lpc_fast
from lpc_fast import rng

pytestmark = pytest.mark.gpu

# Seeds and offsets with high bits set: the offset's low word carries into the high word within
# a call, and the last one wraps modulo 2**64.
RNG_CASES = [
    (0, 0),
    (1234, 17),
    (2**64 - 1, 2**32 - 3),
    (0x0123456789ABCDEF, 2**64 - 2),
]
SIZES = [1, 3, 4, 5, 4099, 2**20 + 3]
SHAPES = [(1,), (7,), (3, 37), (257, 129)]
# (precondition, weight_decay, bias_correction, beta, temperature): the paper's method, the N(0, I)
# prior gradient in-kernel (weight_decay 1), plain ULA, ULA with a weight-decay prior, deterministic
# PC (temperature 0), a frozen preconditioner with a weight-decay prior.
FLAG_CASES = [
    (True, 0.0, True, 0.99, 1.0),
    (True, 1.0, True, 0.99, 1.0),
    (False, 0.0, True, 0.99, 1.0),
    (False, 2.5, True, 0.99, 1.0),
    (True, 0.0, False, 0.9, 0.0),
    (True, 0.37, False, 1.0, 0.5),
]


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("seed,offset", RNG_CASES)
@pytest.mark.parametrize("n", SIZES)
def test_uint32_stream_bit_exact(backend, seed, offset, n):
    skip_unless_backend(backend)
    out = lpc_fast.philox_uint32(n, seed=seed, offset=offset, device=DEVICE, backend=backend)
    expected = rng.philox_uint32(n, seed=seed, offset=offset)
    assert out.dtype == torch.int64
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("seed,offset", RNG_CASES)
def test_uint32_stream_bit_exact_on_cpu_backend(seed, offset):
    """The C++ CPU kernel gives the same words as the GPU kernels (checked against one oracle)."""
    table = {info.name: info for info in lpc_fast.backends()}
    if "cpu" not in table or not table["cpu"].available:
        pytest.skip("cpu backend unavailable")
    n = 4099
    out = lpc_fast.philox_uint32(n, seed=seed, offset=offset, device="cpu", backend="cpu")
    gpu = lpc_fast.philox_uint32(n, seed=seed, offset=offset, device=DEVICE, backend="cuda")
    assert torch.equal(out, rng.philox_uint32(n, seed=seed, offset=offset))
    assert torch.equal(gpu.cpu(), out)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,offset", RNG_CASES)
def test_normals_match_reference(backend, dtype, seed, offset):
    skip_unless_backend(backend)
    n = 2**16 + 3
    out = lpc_fast.philox_normal(n, seed=seed, offset=offset, device=DEVICE, dtype=dtype, backend=backend)
    expected = rng.philox_normal_reference(n, seed=seed, offset=offset, dtype=torch.float64)
    assert out.dtype == dtype
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-10, 1e-12)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=rtol, atol=atol)


def test_cuda_stream_ops_on_strided_outputs():
    """The dispatcher ops fill non-contiguous outputs in logical order (copy-out path)."""
    skip_unless_backend("cuda")
    n, seed, offset = 1001, 99, 5
    buf = torch.zeros(n, 3, dtype=torch.int64, device=DEVICE)
    torch.ops.lpc_fast.philox_uint32_(buf[:, 1], rng.to_int64(seed), rng.to_int64(offset))
    assert torch.equal(buf[:, 1].cpu(), rng.philox_uint32(n, seed=seed, offset=offset))
    assert not buf[:, 0].any() and not buf[:, 2].any()
    fbuf = torch.zeros(n, 2, dtype=torch.float32, device=DEVICE)
    torch.ops.lpc_fast.philox_normal_(fbuf[:, 0], seed, offset)
    expected = rng.philox_normal_reference(n, seed=seed, offset=offset)
    torch.testing.assert_close(fbuf[:, 0].cpu().double(), expected, rtol=1e-5, atol=1e-6)
    assert not fbuf[:, 1].any()


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------


def _flag_hyper(flags):
    precondition, weight_decay, bias_correction, beta, temperature = flags
    return dict(
        step_size=HYPER["step_size"],
        beta=beta,
        eps=HYPER["eps"],
        temperature=temperature,
        bias_correction=bias_correction,
        precondition=precondition,
        weight_decay=weight_decay,
    )


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "misaligned"])
def test_step_inplace_matches_reference(backend, dtype, shape, layout):
    skip_unless_backend(backend)
    z, g, v = make_inputs(shape, dtype, layout)
    hyper = _flag_hyper(FLAG_CASES[0])
    seed, offset, step = 2**63 + 11, 2**32 - 1, 3
    z_exp, v_exp = oracle_forward(z, g, v, step=step, seed=seed, offset=offset, **hyper)
    g_before = g.clone()
    lpc_fast.langevin_step_(z, g, v, step=step, seed=seed, offset=offset, backend=backend, **hyper)
    assert_forward_close(z, z_exp, dtype)
    assert_forward_close(v, v_exp, torch.float32)
    assert torch.equal(g, g_before), "grad must not be modified"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(map(str, f)))
def test_step_flags_match_reference(backend, dtype, flags):
    skip_unless_backend(backend)
    z, g, v = make_inputs((33, 65), dtype, "contiguous", seed=1)
    hyper = _flag_hyper(flags)
    seed, offset, step = 7, 1000, 2
    z_exp, v_exp = oracle_forward(z, g, v, step=step, seed=seed, offset=offset, **hyper)
    v_before = v.clone()
    lpc_fast.langevin_step_(z, g, v, step=step, seed=seed, offset=offset, backend=backend, **hyper)
    assert_forward_close(z, z_exp, dtype)
    if hyper["precondition"]:
        assert_forward_close(v, v_exp, torch.float32)
    else:
        assert torch.equal(v, v_before), "plain ULA must leave v untouched"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_forward_matches_reference(backend, dtype):
    skip_unless_backend(backend)
    z, g, v = make_inputs((129, 31), dtype, "strided", seed=2)
    hyper = _flag_hyper(FLAG_CASES[1])
    seed, offset, step = 5, 3, 1
    z_exp, v_exp = oracle_forward(z, g, v, step=step, seed=seed, offset=offset, **hyper)
    inputs_before = [t.clone() for t in (z, g, v)]
    z_new, v_new = lpc_fast.langevin_step(
        z, g, v, step=step, seed=seed, offset=offset, backend=backend, **hyper
    )
    assert z_new.dtype == dtype and v_new.dtype == torch.float32
    assert z_new.shape == z.shape and v_new.shape == v.shape
    assert_forward_close(z_new, z_exp, dtype)
    assert_forward_close(v_new, v_exp, torch.float32)
    for before, after in zip(inputs_before, (z, g, v)):
        assert torch.equal(before, after), "the functional op must not modify its inputs"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "misaligned"])
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(map(str, f)))
def test_cuda_dispatcher_fwd_matches_reference(dtype, layout, flags):
    skip_unless_backend("cuda")
    z, g, v = make_inputs((5, 203), dtype, layout, seed=3)
    hyper = _flag_hyper(flags)
    seed, offset, step = 2**64 - 5, 2**33 + 1, 4
    z_exp, v_exp = oracle_forward(z, g, v, step=step, seed=seed, offset=offset, **hyper)
    args = [hyper[k] for k in ("step_size", "beta", "eps", "temperature", "bias_correction")]
    args += [hyper["precondition"], hyper["weight_decay"]]
    z_new, v_new = torch.ops.lpc_fast.langevin_fwd(
        z, g, v, step, *args, rng.to_int64(seed), rng.to_int64(offset)
    )
    assert_forward_close(z_new, z_exp, dtype)
    assert_forward_close(v_new, v_exp, torch.float32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_empty_tensors_are_a_no_op(backend):
    skip_unless_backend(backend)
    z = torch.empty(0, 4, device=DEVICE)
    g, v = torch.empty_like(z), torch.empty_like(z)
    lpc_fast.langevin_step_(z, g, v, step=1, seed=1, offset=0, backend=backend, **HYPER)
    z_new, v_new = lpc_fast.langevin_step(z, g, v, step=1, seed=1, offset=0, backend=backend, **HYPER)
    assert z_new.shape == z.shape and v_new.shape == v.shape


# --------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(map(str, f)))
def test_backward_matches_reference(backend, dtype, flags):
    skip_unless_backend(backend)
    z, g, v = make_inputs((17, 43), dtype, "contiguous", seed=4)
    z = z.clone().requires_grad_(True)
    g = g.clone().requires_grad_(True)
    hyper = _flag_hyper(flags)
    seed, offset, step = 31, 2**32 - 2, 2
    z_new, v_new = lpc_fast.langevin_step(
        z, g, v, step=step, seed=seed, offset=offset, backend=backend, **hyper
    )
    gen = torch.Generator().manual_seed(5)
    gz = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
    gv = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(torch.float32).to(DEVICE)
    torch.autograd.backward([z_new, v_new], [gz, gv])
    exp_z, exp_g = oracle_backward(gz, gv, z, g, v, step=step, seed=seed, offset=offset, **hyper)
    assert_backward_close(z.grad, exp_z, dtype)
    assert_backward_close(g.grad, exp_g, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "misaligned"])
@pytest.mark.parametrize("with_gv", [True, False])
def test_cuda_dispatcher_bwd_matches_reference(dtype, layout, with_gv):
    skip_unless_backend("cuda")
    z, g, v = make_inputs((3, 333), dtype, layout, seed=6)
    gz, gv, _ = make_inputs((3, 333), dtype, layout, seed=7)
    gv = gv.float() if with_gv else None
    hyper = _flag_hyper(FLAG_CASES[1])
    seed, offset, step = 77, 123, 5
    args = [hyper[k] for k in ("step_size", "beta", "eps", "temperature", "bias_correction")]
    args += [hyper["precondition"], hyper["weight_decay"]]
    grad_z, grad_grad = torch.ops.lpc_fast.langevin_bwd(gz, gv, z, g, v, step, *args, seed, offset)
    exp_z, exp_g = oracle_backward(gz, gv, z, g, v, step=step, seed=seed, offset=offset, **hyper)
    assert grad_z.dtype == dtype and grad_grad.dtype == dtype
    assert_backward_close(grad_z, exp_z, dtype)
    assert_backward_close(grad_grad, exp_g, dtype)


# --------------------------------------------------------------------------------------------------
# Dispatcher registration
# --------------------------------------------------------------------------------------------------


def test_cuda_ops_pass_opcheck():
    """Schema, fake kernels and autograd registration agree with the CUDA kernels."""
    skip_unless_backend("cuda")
    z, g, v = make_inputs((8, 9), torch.float32, "contiguous", seed=8)
    hyper = _flag_hyper(FLAG_CASES[0])
    h = [hyper[k] for k in ("step_size", "beta", "eps", "temperature", "bias_correction")]
    h += [hyper["precondition"], hyper["weight_decay"]]
    ops = torch.ops.lpc_fast
    state = lpc_fast.make_rng_state(3, offset=10, step=2, device=DEVICE)
    torch.library.opcheck(ops.langevin_fwd.default, (z, g, v, 2, *h, 3, 10))
    torch.library.opcheck(ops.langevin_bwd.default, (z.clone(), v.clone(), z, g, v, 2, *h, 3, 10))
    torch.library.opcheck(ops.langevin_step_.default, (z.clone(), g, v.clone(), 2, *h, 3, 10))
    torch.library.opcheck(ops.langevin_step_state_.default, (z.clone(), g, v.clone(), state, *h))
    torch.library.opcheck(ops.philox_normal_.default, (torch.empty(10, device=DEVICE), 3, 10))
    torch.library.opcheck(
        ops.philox_uint32_.default, (torch.empty(10, dtype=torch.int64, device=DEVICE), 3, 10)
    )


def test_cuda_ops_reject_bad_inputs():
    skip_unless_backend("cuda")
    z, g, v = make_inputs((4, 4), torch.float32, "contiguous")
    h = [1e-2, 0.99, 1e-3, 1.0, True, True, False]
    ops = torch.ops.lpc_fast
    with pytest.raises(RuntimeError, match="v must be float32"):
        ops.langevin_step_(z, g, v.double(), 1, *h, 1, 0)
    with pytest.raises(RuntimeError, match="grad must have z's dtype"):
        ops.langevin_step_(z, g.half(), v, 1, *h, 1, 0)
    with pytest.raises(RuntimeError, match="shape"):
        ops.langevin_step_(z, g[:2], v, 1, *h, 1, 0)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ops.langevin_step_(z, g.cpu(), v, 1, *h, 1, 0)
    with pytest.raises(RuntimeError, match="bias correction"):
        ops.langevin_step_(z, g, v, 0, *h, 1, 0)
    with pytest.raises(RuntimeError, match="state must"):
        ops.langevin_step_state_(z, g, v, torch.zeros(2, dtype=torch.int64, device=DEVICE), *h)
