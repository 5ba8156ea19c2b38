"""Kernel-level tests of the C++ CPU ops (torch.ops.lpc_fast.*) against the RNG contract and the
reference update in float64.

The oracle for every step is ``lpc_fast.reference`` evaluated in float64 on the same inputs (the
low-precision inputs widened exactly) with the contract's noise from
``rng.philox_normal_reference``.
"""

from __future__ import annotations

import math

import lpc_fast._C as _C
import pytest
import torch

from lpc_fast import reference, rng

ops = torch.ops.lpc_fast

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SHAPES = [(1,), (7,), (1025,), (2**17 + 3,), (64, 40), (64, 3, 32, 32)]


def _supported_levels() -> list[str]:
    order = ["baseline", "avx2", "avx512"]
    return order[: order.index(_C.cpu_capabilities()) + 1]


@pytest.fixture(params=_supported_levels())
def simd_level(request):
    """Runs a test under every instruction-set variant this CPU can execute."""
    previous = _C.set_simd_level(request.param)
    try:
        yield request.param
    finally:
        _C.set_simd_level(previous)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# Tolerances of the update vs the float64 oracle, by storage dtype:
# * float64 computes in double with libm's log/sin/cos; the noise differs from the oracle's by a
#   few ulp only, so 1e-10 leaves a wide margin while catching any float32 step.
# * float32: a few float32 roundings (rel ~1e-7 each) of terms of size <~10 in the test data, plus
#   the float32 Box-Muller error (<~1e-6 abs on the noise, times sqrt(2 eta T p) < 1).
# * float16 / bfloat16: the result is rounded to the storage type once (half an ulp: 2^-11
#   and 2^-8 relative), on top of the float32 compute error.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=1.5e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=8e-3),
}
# v' is always float32: computed in float32 (or double, then rounded once).
V_TOL = dict(rtol=2e-6, atol=1e-7)

DEFAULT_HP = dict(
    step=3,
    step_size=0.02,
    beta=0.9,
    eps=1e-3,
    temperature=0.7,
    bias_correction=True,
    precondition=True,
    weight_decay=0.0,
)


def _u64(x: int) -> int:
    return rng.to_int64(x % 2**64)


def _make(shape, dtype, contiguous, seed=0):
    """(z, grad, v) with moderate values; non-contiguous variants are strided views."""
    g = torch.Generator().manual_seed(seed)

    def t(dt, lo=None):
        full = shape + (2,) if not contiguous else shape
        x = torch.randn(full, generator=g, dtype=torch.float64)
        if lo is not None:
            x = x.abs() + lo
        x = x.to(dt)
        return x[..., 1] if not contiguous else x

    z = t(dtype)
    grad = t(dtype)
    v = t(torch.float32, lo=0.05)
    return z, grad, v


def _noise(shape, seed, offset):
    n = math.prod(shape)
    return rng.philox_normal_reference(n, seed=seed, offset=offset).view(shape)


def _ref_forward(z, grad, v, seed, offset, hp):
    noise = _noise(tuple(z.shape), seed, offset)
    return reference.langevin_update(z.double(), grad.double(), v.double(), noise, **hp)


def _op_args(hp, seed, offset):
    return (
        hp["step"],
        hp["step_size"],
        hp["beta"],
        hp["eps"],
        hp["temperature"],
        hp["bias_correction"],
        hp["precondition"],
        hp["weight_decay"],
        _u64(seed),
        _u64(offset),
    )


def _state_args(hp):
    return (
        hp["step_size"],
        hp["beta"],
        hp["eps"],
        hp["temperature"],
        hp["bias_correction"],
        hp["precondition"],
        hp["weight_decay"],
    )


# ----------------------------------------------------------------------------------------------
# The RNG contract


U32_CASES = [
    (0, 0, 1),
    (0, 0, 5),
    (1234, 99, 1000),
    (2**32 - 1, 0, 64),  # key low word all ones
    (2**32, 7, 65),  # key high word only
    (2**64 - 1, 2**64 - 1, 67),  # all-ones key and counter: wraps to 0 after one counter
    (5, 2**32 - 3, 4099),  # low counter word carries into the high word mid-call
    (5, 2**33 - 1, 300),  # carry with a non-zero high word
    (2**63, 2**64 - 20, 500),  # the 64-bit counter wraps modulo 2^64
]


@pytest.mark.parametrize("seed,offset,n", U32_CASES)
def test_uint32_stream_bit_exact(simd_level, seed, offset, n):
    out = torch.empty(n, dtype=torch.int64)
    ops.philox_uint32_(out, rng.to_int64(seed), rng.to_int64(offset))
    assert torch.equal(out, rng.philox_uint32(n, seed=seed, offset=offset))


def test_uint32_stream_non_contiguous():
    base = torch.full((300, 2), -1, dtype=torch.int64)
    ops.philox_uint32_(base[:, 0], 3, 11)
    assert torch.equal(base[:, 0], rng.philox_uint32(300, seed=3, offset=11))
    assert torch.all(base[:, 1] == -1)


@pytest.mark.parametrize("seed,offset,n", U32_CASES + [(42, 1000, 2**17 + 3)])
def test_normals_match_contract(simd_level, seed, offset, n):
    ref = rng.philox_normal_reference(n, seed=seed, offset=offset)
    out32 = torch.empty(n, dtype=torch.float32)
    ops.philox_normal_(out32, rng.to_int64(seed), rng.to_int64(offset))
    # float32 Box-Muller: the uniforms and angle are bit-exact, log/sqrt/sin/cos are evaluated in
    # float32 (about 1 ulp for the radius, 1e-7 absolute for sin/cos times a radius <= 5.7), so
    # the contract's relative 1e-5 plus 1e-6 absolute (near the zeros of sin/cos) bounds it.
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-6)
    # float64 evaluates Box-Muller in double (libm) from the same float32 inputs: a few ulp.
    out64 = torch.empty(n, dtype=torch.float64)
    ops.philox_normal_(out64, rng.to_int64(seed), rng.to_int64(offset))
    torch.testing.assert_close(out64, ref, rtol=1e-13, atol=1e-14)


def test_normals_moments():
    n = 2**18
    out = torch.empty(n, dtype=torch.float64)
    ops.philox_normal_(out, 7, 0)
    # 6 standard errors: a false alarm rate below 1e-8.
    assert abs(out.mean().item()) < 6 / math.sqrt(n)
    assert abs(out.var().item() - 1) < 6 * math.sqrt(2 / n)
    assert out.abs().max().item() <= math.sqrt(-2 * math.log(1e-7)) + 1e-9


# ----------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_forward_matches_reference(dtype, shape, contiguous):
    seed, offset = 2**40 + 17, 2**32 - 100
    z, grad, v = _make(shape, dtype, contiguous)
    z_ref, v_ref = _ref_forward(z, grad, v, seed, offset, DEFAULT_HP)

    z_new, v_new = ops.langevin_fwd(z, grad, v, *_op_args(DEFAULT_HP, seed, offset))
    assert z_new.dtype == dtype and v_new.dtype == torch.float32
    assert z_new.shape == z.shape and v_new.shape == z.shape
    torch.testing.assert_close(z_new.double(), z_ref, **TOL[dtype])
    torch.testing.assert_close(v_new.double(), v_ref, **V_TOL)

    # In place, through the (possibly strided) views: same values, other memory untouched.
    g0 = grad.clone()
    others = [t._base[..., 0].clone() for t in (z, v)] if not contiguous else []
    ops.langevin_step_(z, grad, v, *_op_args(DEFAULT_HP, seed, offset))
    assert torch.equal(z, z_new) and torch.equal(v, v_new)
    assert torch.equal(grad, g0)
    for t, before in zip((z, v), others):
        assert torch.equal(t._base[..., 0], before)


FLAG_CASES = [
    dict(precondition=True, weight_decay=0.0, bias_correction=True),
    dict(precondition=True, weight_decay=1.0, bias_correction=True),
    dict(precondition=True, weight_decay=0.37, bias_correction=True),
    dict(precondition=True, weight_decay=0.0, bias_correction=False),
    dict(precondition=False, weight_decay=0.0, bias_correction=True),
    dict(precondition=False, weight_decay=1.0, bias_correction=False),
    dict(precondition=False, weight_decay=2.5, bias_correction=False),
    dict(precondition=True, weight_decay=1.0, bias_correction=False, temperature=0.0),
    dict(precondition=True, weight_decay=0.0, bias_correction=True, step=1, beta=0.99),
]


@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_flags(simd_level, dtype, flags):
    hp = {**DEFAULT_HP, **flags}
    z, grad, v = _make((515,), dtype, True, seed=1)
    z_ref, v_ref = _ref_forward(z, grad, v, 9, 4, hp)
    z_new, v_new = ops.langevin_fwd(z, grad, v, *_op_args(hp, 9, 4))
    torch.testing.assert_close(z_new.double(), z_ref, **TOL[dtype])
    torch.testing.assert_close(v_new.double(), v_ref, **V_TOL)
    if not hp["precondition"]:
        assert torch.equal(v_new, v)  # plain ULA leaves the state untouched
        v_in = v.clone()
        ops.langevin_step_(z, grad, v, *_op_args(hp, 9, 4))
        assert torch.equal(v, v_in)


def test_frozen_preconditioner_keeps_v_exactly():
    hp = {**DEFAULT_HP, "beta": 1.0, "bias_correction": False}
    z, grad, v = _make((1000,), torch.float32, True)
    z_ref, _ = _ref_forward(z, grad, v, 1, 2, hp)
    z_new, v_new = ops.langevin_fwd(z, grad, v, *_op_args(hp, 1, 2))
    assert torch.equal(v_new, v)
    torch.testing.assert_close(z_new.double(), z_ref, **TOL[torch.float32])


def test_temperature_zero_is_deterministic_descent():
    hp = {**DEFAULT_HP, "temperature": 0.0}
    z, grad, v = _make((333,), torch.float64, True)
    a, _ = ops.langevin_fwd(z, grad, v, *_op_args(hp, 1, 0))
    b, _ = ops.langevin_fwd(z, grad, v, *_op_args(hp, 2, 50))
    assert torch.equal(a, b)
    s = grad
    vn = hp["beta"] * v.double() + (1 - hp["beta"]) * s * s
    p = 1 / (hp["eps"] + torch.sqrt(vn / (1 - hp["beta"] ** hp["step"])))
    torch.testing.assert_close(a, z - hp["step_size"] * p * s, rtol=1e-12, atol=1e-12)


def test_noise_advances_with_offset():
    z, grad, v = _make((64,), torch.float32, True)
    a, _ = ops.langevin_fwd(z, grad, v, *_op_args(DEFAULT_HP, 1, 0))
    b, _ = ops.langevin_fwd(z, grad, v, *_op_args(DEFAULT_HP, 1, 16))
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Backward


def _ref_backward(gz, gv, z, grad, v, seed, offset, hp):
    noise = _noise(tuple(z.shape), seed, offset)
    return reference.langevin_update_backward(
        gz.double(),
        None if gv is None else gv.double(),
        z.double(),
        grad.double(),
        v.double(),
        noise,
        **hp,
    )


@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_backward_matches_reference(dtype, shape, contiguous):
    seed, offset = 77, 2**64 - 5
    z, grad, v = _make(shape, dtype, contiguous, seed=2)
    gz, _, gv = _make(shape, dtype, contiguous, seed=3)
    ref_z, ref_g = _ref_backward(gz, gv, z, grad, v, seed, offset, DEFAULT_HP)
    grad_z, grad_grad = ops.langevin_bwd(gz, gv, z, grad, v, *_op_args(DEFAULT_HP, seed, offset))
    assert grad_z.dtype == dtype and grad_grad.dtype == dtype
    assert grad_z.shape == z.shape and grad_grad.shape == z.shape
    torch.testing.assert_close(grad_z.double(), ref_z, **TOL[dtype])
    torch.testing.assert_close(grad_grad.double(), ref_g, **TOL[dtype])


@pytest.mark.parametrize("with_gv", [True, False], ids=["gv", "no-gv"])
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_backward_flags(simd_level, dtype, flags, with_gv):
    hp = {**DEFAULT_HP, **flags}
    z, grad, v = _make((515,), dtype, True, seed=4)
    gz, _, gv = _make((515,), dtype, True, seed=5)
    gv = gv if with_gv else None
    ref_z, ref_g = _ref_backward(gz, gv, z, grad, v, 3, 8, hp)
    grad_z, grad_grad = ops.langevin_bwd(gz, gv, z, grad, v, *_op_args(hp, 3, 8))
    torch.testing.assert_close(grad_z.double(), ref_z, **TOL[dtype])
    torch.testing.assert_close(grad_grad.double(), ref_g, **TOL[dtype])


def test_backward_subgradient_at_zero():
    """s = 0 and v = 0 give q = 0: dq/ds is taken as 0 and the gradients stay finite."""
    hp = {**DEFAULT_HP, "weight_decay": 1.0}
    z = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    grad = -z.clone()  # s = grad + z = 0
    v = torch.zeros(3, dtype=torch.float32)
    gz = torch.ones(3, dtype=torch.float64)
    ref_z, ref_g = _ref_backward(gz, None, z, grad, v, 0, 0, hp)
    grad_z, grad_grad = ops.langevin_bwd(gz, None, z, grad, v, *_op_args(hp, 0, 0))
    assert torch.isfinite(grad_z).all() and torch.isfinite(grad_grad).all()
    torch.testing.assert_close(grad_z, ref_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_grad, ref_g, rtol=1e-12, atol=1e-12)


def test_backward_matches_autograd_of_reference():
    """The kernel's VJP equals autograd through the reference forward (same noise)."""
    hp = DEFAULT_HP
    z, grad, v = _make((200,), torch.float64, True, seed=6)
    z.requires_grad_(True)
    grad.requires_grad_(True)
    z_ref, v_ref = reference.langevin_update(z, grad, v.double(), _noise((200,), 5, 6), **hp)
    gz = torch.randn(200, dtype=torch.float64)
    gv = torch.randn(200, dtype=torch.float32)  # v' is float32: so is its cotangent
    dz, dg = torch.autograd.grad((z_ref, v_ref), (z, grad), (gz, gv.double()))
    grad_z, grad_grad = ops.langevin_bwd(gz, gv, z.detach(), grad.detach(), v, *_op_args(hp, 5, 6))
    torch.testing.assert_close(grad_z, dz, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_grad, dg, rtol=1e-10, atol=1e-10)
    assert dz.shape == grad_z.shape and dg.shape == grad_grad.shape


# ----------------------------------------------------------------------------------------------
# Launch-configuration independence, capturable state, empty tensors, argument checks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_results_independent_of_thread_count(restore_threads, dtype):
    n = 2**18 + 13  # several parallel chunks plus a partial last block
    z, grad, v = _make((n,), dtype, True)
    gz, _, gv = _make((n,), dtype, True, seed=8)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fwd = ops.langevin_fwd(z, grad, v, *_op_args(DEFAULT_HP, 5, 123))
        bwd = ops.langevin_bwd(gz, gv, z, grad, v, *_op_args(DEFAULT_HP, 5, 123))
        normal = torch.empty(n, dtype=torch.float32)
        ops.philox_normal_(normal, 5, 123)
        outs.append((*fwd, *bwd, normal))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_results_independent_of_call_splitting():
    """The stream of one call equals the concatenation of calls on sub-ranges (offset moved)."""
    n = 1000
    whole = torch.empty(n, dtype=torch.float32)
    ops.philox_normal_(whole, 3, 10)
    first = torch.empty(4 * 37, dtype=torch.float32)
    rest = torch.empty(n - 4 * 37, dtype=torch.float32)
    ops.philox_normal_(first, 3, 10)
    ops.philox_normal_(rest, 3, 10 + 37)
    assert torch.equal(whole, torch.cat([first, rest]))


@pytest.mark.parametrize(
    "seed,offset,step,n", [(11, 0, 1, 1025), (2**64 - 1, 2**64 - 2, 5, 9), (3, 2**32 - 1, 2, 64)]
)
def test_state_variant_matches_and_advances(seed, offset, step, n):
    hp = {**DEFAULT_HP, "step": step}
    z, grad, v = _make((n,), torch.float32, True)
    z2, v2 = z.clone(), v.clone()
    state = torch.tensor([rng.to_int64(seed), rng.to_int64(offset), step], dtype=torch.int64)
    ops.langevin_step_state_(z, grad, v, state, *_state_args(hp))
    ops.langevin_step_(z2, grad, v2, *_op_args(hp, seed, offset))
    assert torch.equal(z, z2) and torch.equal(v, v2)
    new_offset = (offset + rng.offset_increment(n)) % 2**64
    assert state.tolist() == [rng.to_int64(seed), rng.to_int64(new_offset), step + 1]
    # The next call uses the advanced state: fresh noise, next bias correction.
    ops.langevin_step_state_(z, grad, v, state, *_state_args(hp))
    ops.langevin_step_(z2, grad, v2, *_op_args({**hp, "step": step + 1}, seed, new_offset))
    assert torch.equal(z, z2) and torch.equal(v, v2)


def test_empty_tensors_are_noops_except_the_step_count():
    for dtype in DTYPES:
        z = torch.empty(0, 3, dtype=dtype)
        grad = torch.empty(0, 3, dtype=dtype)
        v = torch.empty(0, 3, dtype=torch.float32)
        ops.langevin_step_(z, grad, v, *_op_args(DEFAULT_HP, 0, 0))
        z_new, v_new = ops.langevin_fwd(z, grad, v, *_op_args(DEFAULT_HP, 0, 0))
        assert z_new.shape == (0, 3) and v_new.shape == (0, 3) and z_new.dtype == dtype
        gz, gg = ops.langevin_bwd(z, None, z, grad, v, *_op_args(DEFAULT_HP, 0, 0))
        assert gz.shape == (0, 3) and gg.shape == (0, 3)
        state = torch.tensor([1, 2, 3], dtype=torch.int64)
        ops.langevin_step_state_(z, grad, v, state, *_state_args(DEFAULT_HP))
        # One call is one step on every backend: offset += ceil(0/4) = 0, step += 1.
        assert state.tolist() == [1, 2, 4]
    ops.philox_normal_(torch.empty(0), 0, 0)
    ops.philox_uint32_(torch.empty(0, dtype=torch.int64), 0, 0)


def test_argument_checks():
    z, grad, v = _make((10,), torch.float32, True)
    args = _op_args(DEFAULT_HP, 0, 0)
    with pytest.raises(RuntimeError, match="shape"):
        ops.langevin_step_(z, grad[:5], v, *args)
    with pytest.raises(RuntimeError, match="shape"):
        ops.langevin_fwd(z, grad, v[:5], *args)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.langevin_step_(z, grad.double(), v, *args)
    with pytest.raises(RuntimeError, match="float32"):
        ops.langevin_step_(z, grad, v.double(), *args)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        ops.langevin_fwd(z.int(), grad.int(), v, *args)
    with pytest.raises(RuntimeError, match="state"):
        ops.langevin_step_state_(z, grad, v, torch.zeros(2, dtype=torch.int64), *_state_args(DEFAULT_HP))
    with pytest.raises(RuntimeError, match="int64"):
        ops.langevin_step_state_(z, grad, v, torch.zeros(3), *_state_args(DEFAULT_HP))
    with pytest.raises(RuntimeError, match="bias correction"):
        ops.langevin_fwd(z, grad, v, *_op_args({**DEFAULT_HP, "step": 0}, 0, 0))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.philox_normal_(torch.empty(3, dtype=torch.float16), 0, 0)
    with pytest.raises(RuntimeError, match="int64"):
        ops.philox_uint32_(torch.empty(3, dtype=torch.int32), 0, 0)


def test_introspection():
    assert _C.simd_level() in {"baseline", "avx2", "avx512"}
    assert _C.cpu_capabilities() in {"baseline", "avx2", "avx512"}
    assert isinstance(_C.with_cuda(), bool)
    with pytest.raises(RuntimeError):
        _C.set_simd_level("sse9")
