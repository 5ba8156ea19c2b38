"""The Triton backend against the RNG contract and the float64 reference.

Expectations come from :mod:`lpc_fast.rng` (an independent vectorised Philox)
and :mod:`lpc_fast.reference` evaluated in float64 with the same noise, never
from the kernels' own output. On a CPU-only machine the kernels run in Triton's
interpreter, which must be enabled before Python starts::

    TRITON_INTERPRET=1 python -m pytest tests/test_triton_backend.py
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import pytest
import torch

from lpc_fast import reference, rng

pytest.importorskip("triton", reason="triton is not installed (pip install 'lpc_fast[triton]')")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "no CUDA device and TRITON_INTERPRET is unset: run with TRITON_INTERPRET=1 in the environment "
        "before Python starts to test the Triton kernels on CPU",
        allow_module_level=True,
    )

from lpc_fast import _schemas  # noqa: E402
from lpc_fast.dispatch import get_backend  # noqa: E402
from lpc_fast.triton import kernels, launch, load_ops  # noqa: E402

load_ops()
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
# The backend object the dispatcher routes to; like every backend it takes seeds and offsets as
# the int64 values with the bits of the uint64 ones (rng.to_int64), as lpc_fast.ops passes them.
BACKEND = get_backend("triton")
LIB = torch.ops.lpc_fast

# A seed above 2**63 (exercises the unsigned -> int64 mapping) and an offset 7 counters below
# 2**32, so the low counter word carries into the high word inside every tensor of > 28 elements.
SEED = 2**63 + 12345
SEED64 = rng.to_int64(SEED)
OFFSET = 2**32 - 7
PARAMS = dict(
    step=3,
    step_size=0.05,
    beta=0.9,
    eps=1e-3,
    temperature=1.0,
    bias_correction=True,
    precondition=True,
    # A prior precision other than 1, and a power of two: lambda * z is exact, so s = g + lambda z has
    # one rounding relative to |s| as with lambda = 1, which TOL_V assumes (a product's rounding is
    # relative to |lambda z|, which cancellation in s can make far larger than |s|). Other values of
    # lambda: tests/test_closed_form.py and tests/test_cpu_kernel.py.
    weight_decay=0.5,
)
HYPER = {key: value for key, value in PARAMS.items() if key != "step"}
SHAPES = [(1,), (7,), (1025,), (2**17 + 3,), (64, 40), (64, 3, 32, 32)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# Tolerances (rtol, atol relative to max(1, max|expected|)) of z-like outputs against the float64
# reference with identical noise:
# * float64 computes the same double formula; only libm rounding (~1 ulp per log/cos/sqrt) and the
#   48-bit (hi, lo) float32 split of the float parameters differ: ~1e-15, checked at 1e-12.
# * float32: a few float32 roundings (~6e-8 each) in the update, and float32 Box–Muller noise
#   within ~3e-7 absolute of the float64 value (r <= 5.7), scaled by sqrt(2*eta*p) <= 10: 1e-5.
# * float16 / bfloat16 compute in float32 and round once on store: the error is at most half
#   an ulp of the result, i.e. 2**-11 / 2**-8 relative; checked at twice that (2**-10 / 2**-7).
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2.0**-10, 1e-5),
    torch.bfloat16: (2.0**-7, 1e-5),
}
# v_new is float32 for every dtype, a sum of two positive terms: a few float32 roundings (or
# one rounding of the float64 value): relative 1e-6.
TOL_V = (1e-6, 0.0)
# Normals against the float64 evaluation of the same uniforms: float32 log/sqrt/cos/sin (approximate
# on GPUs, FACTS: relative ~1e-5) give |error| <= 1e-5*|x| + 2e-6 for |x| <= 5.7; float64 ones
# agree to a few ulp.
NORMAL_TOL = {torch.float32: (1e-5, 2e-6), torch.float64: (1e-13, 1e-13)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float], what: str) -> None:
    """|actual - expected| <= rtol*|expected| + atol*max(1, max|expected|), elementwise."""
    rtol, atol = tol
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    err = (a - e).abs()
    bound = rtol * e.abs() + atol * scale
    bad = ~(err <= bound)
    if bad.any():
        worst = (err / bound.clamp_min(1e-300))[bad].max().item()
        pytest.fail(f"{what}: {int(bad.sum())}/{e.numel()} elements out of tolerance, worst at {worst:.3g}x")


@functools.lru_cache(maxsize=8)
def _noise(n: int, seed: int, offset: int) -> torch.Tensor:
    return rng.philox_normal_reference(n, seed=seed, offset=offset)  # ~2 s for 2**17 elements


def noise_for(shape: tuple[int, ...], seed: int = SEED, offset: int = OFFSET) -> torch.Tensor:
    return _noise(math.prod(shape), seed, offset).view(shape)


def make_inputs(shape, dtype, contiguous: bool, seed: int = 0):
    """(z, grad, v); non-contiguous ones are every other element of a wider buffer."""
    gen = torch.Generator().manual_seed(seed)
    wide = (*shape[:-1], shape[-1] * (1 if contiguous else 2))

    def build(t: torch.Tensor) -> torch.Tensor:
        t = t.to(DEVICE)
        return t if contiguous else t[..., ::2]

    z = build((1.5 * torch.randn(wide, generator=gen)).to(dtype))
    g = build(torch.randn(wide, generator=gen).to(dtype))
    v = build(0.05 * torch.rand(wide, generator=gen))
    return z, g, v


def strided_copy(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy with the same strides (and its base buffer), to test in-place copy-back."""
    if t.is_contiguous():
        c = t.clone()
        return c, c
    base = torch.empty((*t.shape[:-1], t.shape[-1] * 2), dtype=t.dtype, device=t.device).fill_(123.0)
    view = base[..., ::2]
    view.copy_(t)
    return view, base


def ref_forward(z, g, v, noise, **params):
    return reference.langevin_update(z.double().cpu(), g.double().cpu(), v.double().cpu(), noise, **params)


def ref_backward(gz, gv, z, g, v, noise, **params):
    return reference.langevin_update_backward(
        gz.double().cpu(),
        None if gv is None else gv.double().cpu(),
        z.double().cpu(),
        g.double().cpu(),
        v.double().cpu(),
        noise,
        **params,
    )


# ------------------------------------------------------------------------------------------------
# RNG contract
# ------------------------------------------------------------------------------------------------

RNG_CASES = [
    (0, 0),
    (1, 2**32 - 3),  # low word carries into the high word after 3 counters
    (2**32 - 1, 2**32),  # seed with an all-ones low key word; offset exactly 2**32
    (2**32, 5 * 2**32 - 100),  # seed with only the high key word set
    (2**63, 2**63 - 10),  # sign bit of seed; offset crosses 2**63
    (2**64 - 1, 2**64 - 10),  # counter wraps modulo 2**64
]


@pytest.mark.parametrize("seed,offset", RNG_CASES)
def test_uint32_stream_is_bit_exact(seed, offset):
    n = 4099  # not a multiple of 4, several programs at block 256
    out = torch.full((n,), -1, dtype=torch.int64, device=DEVICE)
    launch.philox_uint32_(out, rng.to_int64(seed), rng.to_int64(offset), block=256)
    expected = rng.philox_uint32(n, seed=seed, offset=offset)
    assert torch.equal(out.cpu(), expected)
    # The registered op, with the seed given unsigned and as int64, strided output.
    wide = torch.full((2 * n,), -1, dtype=torch.int64, device=DEVICE)
    BACKEND.uint32_(wide[::2], seed=rng.to_int64(seed), offset=rng.to_int64(offset))
    assert torch.equal(wide[::2].cpu(), expected)
    assert bool((wide[1::2] == -1).all())
    again = torch.empty(n, dtype=torch.int64, device=DEVICE)
    BACKEND.uint32_(again, seed=rng.to_int64(seed), offset=rng.to_int64(offset))
    assert torch.equal(again.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,offset", [RNG_CASES[1], RNG_CASES[5]])
def test_normals_match_contract(dtype, seed, offset):
    n = 10_001
    out = torch.empty(n, dtype=dtype, device=DEVICE)
    BACKEND.normal_(out, seed=rng.to_int64(seed), offset=rng.to_int64(offset))
    expected = rng.philox_normal_reference(n, seed=seed, offset=offset)
    assert_close(out, expected, NORMAL_TOL[dtype], f"normals {dtype}")


def test_normal_rejects_other_dtypes():
    with pytest.raises(TypeError):
        BACKEND.normal_(torch.empty(4, dtype=torch.float16, device=DEVICE), seed=0, offset=0)
    with pytest.raises(TypeError):
        BACKEND.uint32_(torch.empty(4, dtype=torch.int32, device=DEVICE), seed=0, offset=0)


# ------------------------------------------------------------------------------------------------
# forward / backward against the float64 reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_update_matches_reference(dtype, shape, contiguous):
    z, g, v = make_inputs(shape, dtype, contiguous)
    noise = noise_for(shape)
    tol = TOL[dtype]

    z_new, v_new = BACKEND.forward(z, g, v, seed=SEED64, offset=OFFSET, **PARAMS)
    assert z_new.dtype == dtype and v_new.dtype == torch.float32
    assert z_new.shape == shape and v_new.shape == shape
    z_ref, v_ref = ref_forward(z, g, v, noise, **PARAMS)
    assert_close(z_new, z_ref, tol, "z_new")
    assert_close(v_new, v_ref, TOL_V, "v_new")

    # In place: the same kernel, so bit-identical; strided tensors keep their untouched gaps.
    z2, z2_base = strided_copy(z)
    v2, v2_base = strided_copy(v)
    BACKEND.step_(z2, g, v2, seed=SEED64, offset=OFFSET, **PARAMS)
    assert torch.equal(z2, z_new) and torch.equal(v2, v_new)
    if not contiguous:
        assert bool((z2_base[..., 1::2] == 123.0).all()) and bool((v2_base[..., 1::2] == 123.0).all())

    gen = torch.Generator().manual_seed(1)
    gz = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    gv = torch.randn(shape, generator=gen).to(DEVICE)
    for grad_v_new in (gv, None):
        grad_z, grad_grad = BACKEND.backward(gz, grad_v_new, z, g, v, seed=SEED64, offset=OFFSET, **PARAMS)
        assert grad_z.dtype == dtype and grad_grad.dtype == dtype
        gz_ref, gg_ref = ref_backward(gz, grad_v_new, z, g, v, noise, **PARAMS)
        label = "with" if grad_v_new is not None else "without"
        assert_close(grad_z, gz_ref, tol, f"grad_z ({label} grad_v_new)")
        assert_close(grad_grad, gg_ref, tol, f"grad_grad ({label} grad_v_new)")


FLAGS = [(pc, wd, bc) for pc in (True, False) for wd in (1.0, 0.0, 4.0) for bc in (True, False)]


@pytest.mark.parametrize("precondition,weight_decay,bias_correction", FLAGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_flags_match_reference(dtype, precondition, weight_decay, bias_correction):
    shape = (1025,)
    params = dict(
        PARAMS, step=1, precondition=precondition, weight_decay=weight_decay, bias_correction=bias_correction
    )
    z, g, v = make_inputs(shape, dtype, True, seed=2)
    noise = noise_for(shape, seed=7, offset=11)
    z_new, v_new = BACKEND.forward(z, g, v, seed=7, offset=11, **params)
    z_ref, v_ref = ref_forward(z, g, v, noise, **params)
    assert_close(z_new, z_ref, TOL[dtype], "z_new")
    assert_close(v_new, v_ref, TOL_V, "v_new")
    if not precondition:
        assert torch.equal(v_new, v)
        z2, v2 = z.clone(), v.clone()
        BACKEND.step_(z2, g, v2, seed=7, offset=11, **params)
        assert torch.equal(v2, v)  # plain ULA leaves the state alone
    gz = torch.randn(shape, dtype=dtype, device=DEVICE)
    gv = torch.randn(shape, device=DEVICE)
    grad_z, grad_grad = BACKEND.backward(gz, gv, z, g, v, seed=7, offset=11, **params)
    gz_ref, gg_ref = ref_backward(gz, gv, z, g, v, noise, **params)
    assert_close(grad_z, gz_ref, TOL[dtype], "grad_z")
    assert_close(grad_grad, gg_ref, TOL[dtype], "grad_grad")


def test_zero_temperature_is_deterministic_drift():
    shape = (64, 40)
    params = dict(PARAMS, temperature=0.0)
    z, g, v = make_inputs(shape, torch.float64, True, seed=3)
    a, va = BACKEND.forward(z, g, v, seed=1, offset=0, **params)
    b, vb = BACKEND.forward(z, g, v, seed=99, offset=12345, **params)
    assert torch.equal(a, b) and torch.equal(va, vb)  # no noise reaches the result
    z_ref, v_ref = ref_forward(z, g, v, torch.zeros(shape, dtype=torch.float64), **params)
    assert_close(a, z_ref, TOL[torch.float64], "drift")
    gz = torch.randn(shape, dtype=torch.float64, device=DEVICE)
    ga = BACKEND.backward(gz, None, z, g, v, seed=1, offset=0, **params)
    gb = BACKEND.backward(gz, None, z, g, v, seed=99, offset=12345, **params)
    assert torch.equal(ga[0], gb[0]) and torch.equal(ga[1], gb[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_drift_isolates_the_noise(dtype):
    # z = 0, grad = 0, no preconditioner: z_new = sqrt(2*eta*tau) * noise exactly.
    n = 5003
    zeros = torch.zeros(n, dtype=dtype, device=DEVICE)
    v = torch.zeros(n, device=DEVICE)
    params = dict(PARAMS, precondition=False, step_size=0.02, temperature=2.0)
    z_new, _ = BACKEND.forward(zeros, zeros, v, seed=5, offset=2**40, **params)
    normals = torch.empty(n, dtype=dtype, device=DEVICE)
    BACKEND.normal_(normals, seed=5, offset=2**40)
    assert_close(z_new, math.sqrt(2 * 0.02 * 2.0) * normals.double(), (1e-6, 0.0), "noise")


def test_frozen_preconditioner_keeps_v():
    # beta = 1 without bias correction: v' = v exactly (the setting of a Metropolis-adjusted chain).
    z, g, v = make_inputs((1025,), torch.float32, True, seed=4)
    params = dict(PARAMS, beta=1.0, bias_correction=False)
    z_new, v_new = BACKEND.forward(z, g, v, seed=1, offset=2, **params)
    assert torch.equal(v_new, v)
    assert_close(z_new, ref_forward(z, g, v, noise_for((1025,), 1, 2), **params)[0], TOL[torch.float32], "z")


# ------------------------------------------------------------------------------------------------
# launch configuration, capturable state, edge cases
# ------------------------------------------------------------------------------------------------


def test_results_do_not_depend_on_block_size():
    n = 333
    offset = rng.to_int64(2**32 - 40)  # the carry happens inside a program at every block size
    seed = rng.to_int64(SEED)
    blocks = [16, 64, 1024]
    for dtype in (torch.float32, torch.float64):
        z, g, v = make_inputs((n,), dtype, True, seed=5)
        gz = torch.randn(n, dtype=dtype, device=DEVICE)
        gv = torch.randn(n, device=DEVICE)
        args = (3, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, seed, offset)
        fwd = [launch.langevin_fwd(z, g, v, *args, block=b) for b in blocks]
        bwd = [launch.langevin_bwd(gz, gv, z, g, v, *args, block=b) for b in blocks]
        for other_f, other_b in zip(fwd[1:], bwd[1:]):
            assert all(torch.equal(x, y) for x, y in zip(fwd[0], other_f))
            assert all(torch.equal(x, y) for x, y in zip(bwd[0], other_b))
        normals = []
        for b in blocks:
            out = torch.empty(n, dtype=dtype, device=DEVICE)
            launch.philox_normal_(out, seed, offset, block=b)
            normals.append(out)
        assert all(torch.equal(normals[0], x) for x in normals[1:])


@pytest.mark.parametrize(
    "dtype,contiguous", [(torch.float32, True), (torch.float16, False), (torch.float64, True)]
)
def test_state_variant_equals_explicit_and_advances(dtype, contiguous):
    shape = (64, 40)
    n = math.prod(shape)
    seed, offset0, step0 = 2**64 - 3, 2**64 - 2 * rng.offset_increment(n) + 1, 1  # offset wraps at 2**64
    z, g, v = make_inputs(shape, dtype, contiguous, seed=6)
    z_state, _ = strided_copy(z)
    v_state, _ = strided_copy(v)
    state = torch.tensor([rng.to_int64(seed), rng.to_int64(offset0), step0], dtype=torch.int64, device=DEVICE)
    params = {key: value for key, value in PARAMS.items() if key != "step"}
    offset = offset0
    for k in range(3):
        BACKEND.step_(z, g, v, step=step0 + k, seed=rng.to_int64(seed), offset=rng.to_int64(offset), **params)
        BACKEND.step_state_(z_state, g, v_state, state, **params)
        offset = (offset + rng.offset_increment(n)) % 2**64
        assert torch.equal(z_state, z) and torch.equal(v_state, v)
        expected_state = [rng.to_int64(seed), rng.to_int64(offset), step0 + k + 1]
        assert state.cpu().tolist() == expected_state


def test_empty_tensors_are_noops():
    e = torch.empty(0, 3, device=DEVICE)
    BACKEND.step_(e, e, e, seed=1, offset=2, **PARAMS)
    z_new, v_new = BACKEND.forward(e, e, e, seed=1, offset=2, **PARAMS)
    assert z_new.shape == (0, 3) and v_new.shape == (0, 3)
    gz, gg = BACKEND.backward(e, None, e, e, e, seed=1, offset=2, **PARAMS)
    assert gz.shape == (0, 3) and gg.shape == (0, 3)
    BACKEND.normal_(e, seed=1, offset=2)
    BACKEND.uint32_(torch.empty(0, dtype=torch.int64, device=DEVICE), seed=1, offset=2)
    # One call is one step: an empty tensor consumes no counters but advances the step.
    state = torch.tensor([1, 2, 3], dtype=torch.int64, device=DEVICE)
    BACKEND.step_state_(e, e, e, state, **HYPER)
    assert state.cpu().tolist() == [1, 2, 4]


def test_argument_checks():
    z = torch.zeros(8, device=DEVICE)
    with pytest.raises(TypeError, match="v must be float32"):
        BACKEND.forward(z, z, z.double(), seed=0, offset=0, **PARAMS)
    with pytest.raises(TypeError, match="grad must have"):
        BACKEND.forward(z, z.half(), z, seed=0, offset=0, **PARAMS)
    with pytest.raises(ValueError, match="state"):
        BACKEND.step_state_(z, z, z, torch.zeros(3, dtype=torch.int32, device=DEVICE), **HYPER)
    with pytest.raises(ValueError, match="seed must be an int64"):
        launch.philox_uint32_(torch.empty(4, dtype=torch.int64, device=DEVICE), 2**64, 0)


# ------------------------------------------------------------------------------------------------
# device pinning: Triton launches on the current CUDA device, so every launch enters z's device
# ------------------------------------------------------------------------------------------------


def test_device_guard_is_the_cuda_device_context_for_cuda_tensors_only():
    assert launch._device_guard(torch.device("cpu")) is None
    guard = launch._device_guard(torch.device("cuda", 1))  # constructing it needs no GPU
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def _run_every_launcher(device):
    z, g, v = make_inputs((3, 5), torch.float32, False, seed=10)  # strided: copy-back paths too
    scal = (2, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, SEED64, OFFSET)
    launch.langevin_step_(z, g, v, *scal)
    launch.langevin_step_state_(z, g, v, torch.tensor([1, 2, 3], device=device), *scal[1:8])
    launch.langevin_step_state_(z[:0], g[:0], v[:0], torch.tensor([1, 2, 3], device=device), *scal[1:8])
    launch.langevin_fwd(z, g, v, *scal)
    launch.langevin_bwd(torch.ones_like(z), torch.ones_like(v), z, g, v, *scal)
    launch.philox_normal_(torch.empty(7, device=device), 1, 1)
    launch.philox_uint32_(torch.empty(7, dtype=torch.int64, device=device), 1, 1)
    z2, g2, v2 = make_inputs((4,), torch.float64, True, seed=11)
    launch.langevin_step_foreach_([z, z2], [g, g2], [v, v2], *scal)
    launch.langevin_step_foreach_state_(
        [z, z2], [g, g2], [v, v2], torch.tensor([1, 2, 3], device=device), *scal[1:8]
    )


def test_every_launch_runs_inside_the_guard_of_the_tensors_device(monkeypatch):
    # No second GPU here: make the guard a recorder for every device (on a GPU it is entered only
    # for CUDA tensors, checked above), wrap each kernel to see whether it launches inside it,
    # and run every launcher.
    entered: list[torch.device] = []
    active: list[torch.device] = []
    launched: list[tuple[str, torch.device | None]] = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)
            active.append(self.device)

        def __exit__(self, *exc):
            active.pop()

    class Kernel:
        def __init__(self, name, real):
            self.name, self.real = name, real

        def __getitem__(self, grid):
            def run(*args, **meta):
                launched.append((self.name, active[-1] if active else None))
                return self.real[grid](*args, **meta)

            return run

    monkeypatch.setattr(launch, "_device_guard", Guard)
    names = ["langevin_fwd_kernel", "langevin_bwd_kernel", "advance_state_kernel"]
    names += ["philox_normal_kernel", "philox_uint32_kernel", "langevin_foreach_kernel"]
    for name in names:
        monkeypatch.setattr(launch.kernels, name, Kernel(name, getattr(launch.kernels, name)))
    _run_every_launcher(DEVICE)
    assert {name for name, _ in launched} == set(names)
    assert all(device == DEVICE for _, device in launched), launched
    assert len(entered) == len(launched)


# ------------------------------------------------------------------------------------------------
# dispatcher integration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_schemas.OPS))
def test_registered_schemas(name):
    # Registered from the op table, whichever way this machine registers them.
    op = getattr(LIB, f"triton_{name}").default
    assert _schemas.same_schema(name, op), f"{op._schema} != {_schemas.schema(name)}"
    # The GPU registration (triton_op) infers its schema from the signature that the table gives
    # the launcher: check that the inference reproduces the table here, without a GPU.
    fn = _schemas.as_op_function(name, getattr(launch, name))
    inferred = torch.library.infer_schema(fn, mutates_args=_schemas.mutated_args(name))
    assert _schemas.normalised_schema(inferred) == _schemas.normalised_schema(_schemas.schema(name))


def test_triton_op_registration_from_the_table():
    # A GPU registers the launchers as triton_op (inductor sees the kernels); this machine may not.
    # Register that flavour under another prefix and check its schemas and an eager call: eager
    # triton_op calls launch the kernels directly (wrap_triton is off), so they run here too.
    if not hasattr(LIB, "tritonop_langevin_fwd"):
        _schemas.register_python_kernels(
            "triton", launch, triton_op=True, wrap=torch.library.wrap_triton, prefix="tritonop_"
        )
    for name in _schemas.OPS:
        assert _schemas.same_schema(name, getattr(LIB, f"tritonop_{name}").default), name
    try:
        torch.library.wrap_triton(kernels.langevin_fwd_kernel)
    except RuntimeError as exc:  # torch 2.11 refuses the interpreter's InterpretedFunction
        pytest.skip(f"torch {torch.__version__}'s wrap_triton cannot wrap interpreted kernels ({exc})")
    z, g, v = make_inputs((33,), torch.float32, True, seed=11)
    args = (z, g, v, 1, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, SEED64, OFFSET)
    want = LIB.triton_langevin_fwd(*args)
    got = LIB.tritonop_langevin_fwd(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # Its autograd comes from the table too.
    z.requires_grad_()
    grads = [
        torch.autograd.grad(op(z, *args[1:])[0].sum(), z)[0]
        for op in (LIB.triton_langevin_fwd, LIB.tritonop_langevin_fwd)
    ]
    assert torch.equal(grads[0], grads[1])


def _opcheck_cases():
    def upd(dtype=torch.float32, grad=False):
        z, g, v = make_inputs((5, 7), dtype, True, seed=8)
        return z.requires_grad_(grad), g.requires_grad_(grad), v

    scal = (3, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, SEED64, OFFSET)
    z, g, v = upd()
    zd, gd, vd = upd(torch.float64, grad=True)
    state = torch.tensor([5, 2**32 - 1, 2], dtype=torch.int64, device=DEVICE)
    return {
        "langevin_step_": (z, g, v, *scal),
        "langevin_step_state_": (z, g, v, state, *scal[1:8]),
        "langevin_fwd": (zd, gd, vd, *scal),
        "langevin_bwd": (torch.randn_like(z), torch.randn_like(v), z, g, v, *scal),
        "langevin_step_foreach_": ([z, zd.detach().clone()], [g, gd.detach()], [v, vd.clone()], *scal),
        "langevin_step_foreach_state_": (
            [z, zd.detach().clone()],
            [g, gd.detach()],
            [v, vd.clone()],
            state,
            *scal[1:8],
        ),
        "philox_normal_": (torch.empty(5, 7, device=DEVICE), 3, 2**33 + 1),
        "philox_uint32_": (torch.empty(5, 7, dtype=torch.int64, device=DEVICE), -1, 2**40),
        "log_likelihood_grad": (
            torch.rand(3, 2, 4, dtype=torch.float64, device=DEVICE),
            torch.randn(3, 2, 4, dtype=torch.float64, device=DEVICE).requires_grad_(True),
            torch.tensor(-2.0, device=DEVICE, requires_grad=True),
            0.0,
            0,
            True,
            256,
        ),
    }


@pytest.mark.parametrize("name", sorted(_schemas.OPS))
def test_opcheck(name):
    args = _opcheck_cases()[name]
    torch.library.opcheck(getattr(LIB, f"triton_{name}").default, args)


def test_gradcheck_functional_op():
    # float64 at a fixed (seed, offset); values keep q away from the kink at 0. Only z_new is
    # checked: v_new is stored in float32, too coarse for finite differences.
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(6, dtype=torch.float64, generator=gen).to(DEVICE).requires_grad_()
    g = torch.randn(6, dtype=torch.float64, generator=gen).to(DEVICE).requires_grad_()
    v = (0.05 + torch.rand(6, generator=gen)).to(DEVICE)

    def f(z, g):
        return LIB.triton_langevin_fwd(z, g, v, 2, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, 3, 4)[0]

    assert torch.autograd.gradcheck(f, (z, g))


def test_compiled_loop_matches_eager_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend

    shape = (64, 40)
    inc = rng.offset_increment(math.prod(shape))

    def loop(z, g, v, seed, offset):
        for t in range(20):
            LIB.triton_langevin_step_(
                z, g, v, t + 1, 0.05, 0.9, 1e-3, 1.0, True, True, 1.0, seed, offset + t * inc
            )
        return z, v

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(loop, fullgraph=True, backend=counter)
    for call, (seed, offset) in enumerate([(11, 0), (12, 20 * inc), (13, 2**32 - 5)]):
        z, g, v = make_inputs(shape, torch.float32, True, seed=call)
        ze, ve = loop(z.clone(), g, v.clone(), seed, offset)
        zc, vc = compiled(z.clone(), g, v.clone(), seed, offset)
        assert torch.equal(zc, ze) and torch.equal(vc, ve)
    # First call specialises on the ints, the second makes them dynamic, the third reuses it.
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations"


# ------------------------------------------------------------------------------------------------
# packaging
# ------------------------------------------------------------------------------------------------


def test_availability_and_devices():
    ok, reason = BACKEND.availability()
    assert ok, reason
    assert BACKEND.name == "triton"
    assert BACKEND.supports_device(DEVICE)
    assert not BACKEND.supports_device(torch.device("meta"))


def test_package_imports_without_triton():
    # A finder that hides triton: lpc_fast and lpc_fast.triton still import, the backend says why not.
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import torch, lpc_fast, lpc_fast.triton\n"
        "assert 'triton' not in sys.modules\n"
        "backend = lpc_fast.dispatch.get_backend('triton')\n"
        "ok, reason = backend.availability()\n"
        "assert not ok and 'not installed' in reason, reason\n"
        "assert 'not installed' in backend.unsupported_reason(torch.device('cpu'))\n"
    )
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
