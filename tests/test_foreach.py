"""The multi-tensor op ``langevin_step_foreach_``: bit-identical to the per-tensor loop on every
backend, the same checks and errors, capturable mode and torch.compile (opcheck of its dispatcher
ops on every backend: tests/test_dispatcher_ops.py).

The Triton cases run under ``TRITON_INTERPRET=1`` on CPU (skipped otherwise, with the reason).
Sizes stay small: the interpreter pays per program, not per element.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import cpu_backend_params

import lpc_fast
from lpc_fast import rng

SEED = 2**63 + 99  # above 2**63: exercises the unsigned -> int64 carrier
OFFSET = 2**32 - 5  # the low counter word carries into the high word inside the list
HP = dict(step=3, step_size=0.05, beta=0.9, eps=1e-3, temperature=0.8)


def _list(specs, seed=0):
    """(zs, grads, vs) for ``specs`` = [(shape, dtype, contiguous), ...]."""
    gen = torch.Generator().manual_seed(seed)
    zs, gs, vs = [], [], []
    for shape, dtype, contiguous in specs:
        z = torch.randn(shape, generator=gen).to(dtype)
        g = torch.randn(shape, generator=gen).to(dtype)
        v = torch.rand(shape, generator=gen)
        if not contiguous:
            z, g, v = z.t(), g.t(), v.t()  # transposed views (2-D shapes)
        zs.append(z)
        gs.append(g)
        vs.append(v)
    return zs, gs, vs


MIXED = [
    ((5, 7), torch.float32, True),
    ((300,), torch.float64, True),
    ((0,), torch.float32, True),  # empty: consumes no counters
    ((9, 4), torch.float16, False),
    ((1,), torch.bfloat16, True),
    ((3, 6), torch.float32, False),
    ((257,), torch.float32, True),
]


def _clone(xs):
    return [x.clone() for x in xs]


def _loop(zs, gs, vs, *, seed, offset, backend, **kw):
    for z, g, v in zip(zs, gs, vs):
        lpc_fast.langevin_step_(z, g, v, seed=seed, offset=offset, backend=backend, **kw)
        offset = (offset + rng.offset_increment(z.numel())) % 2**64


def _assert_bitwise(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), f"tensor {i} differs"


def test_foreach_offsets_is_the_running_sum_of_increments():
    offsets, total = rng.foreach_offsets(2**64 - 2, [9, 0, 4, 1])
    # increments 3, 0, 1, 1; the counter wraps modulo 2**64
    assert offsets == [2**64 - 2, 1, 1, 2]
    assert total == 5
    assert rng.foreach_offsets(7, []) == ([], 0)


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize(
    "flags",
    [
        dict(precondition=True, prior_grad=False),
        dict(precondition=True, prior_grad=True, bias_correction=False),
        dict(precondition=False, prior_grad=True),
        dict(precondition=True, prior_grad=False, temperature=0.0),
    ],
    ids=["pre", "pre-prior-nobc", "ula-prior", "pre-T0"],
)
def test_foreach_is_bit_identical_to_the_per_tensor_loop(backend, flags):
    zs, gs, vs = _list(MIXED)
    kw = {**HP, **flags}
    z_loop, v_loop = _clone(zs), _clone(vs)
    _loop(z_loop, gs, v_loop, seed=SEED, offset=OFFSET, backend=backend, **kw)
    z_fe, v_fe = _clone(zs), _clone(vs)
    lpc_fast.langevin_step_foreach_(z_fe, gs, v_fe, seed=SEED, offset=OFFSET, backend=backend, **kw)
    _assert_bitwise(z_fe, z_loop)
    _assert_bitwise(v_fe, v_loop)
    assert not torch.equal(z_fe[0], zs[0])  # something happened


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_foreach_offset_wraps_modulo_2_64_like_the_loop(backend):
    zs, gs, vs = _list(
        [((13,), torch.float32, True), ((10,), torch.float64, True), ((6,), torch.float32, True)]
    )
    offset = 2**64 - 4  # the second tensor starts past the wrap
    z_loop, v_loop = _clone(zs), _clone(vs)
    _loop(z_loop, gs, v_loop, seed=5, offset=offset, backend=backend, **HP)
    z_fe, v_fe = _clone(zs), _clone(vs)
    lpc_fast.langevin_step_foreach_(z_fe, gs, v_fe, seed=5, offset=offset, backend=backend, **HP)
    _assert_bitwise(z_fe, z_loop)
    _assert_bitwise(v_fe, v_loop)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_capturable_foreach_reads_and_advances_the_state(backend):
    zs, gs, vs = _list(MIXED[:4], seed=1)
    kw = dict(HP)
    step = kw.pop("step")
    z_loop, v_loop = _clone(zs), _clone(vs)
    offset = 2**64 - 9
    for t in range(2):  # two steps: the second reads what the first wrote
        _loop(z_loop, gs, v_loop, seed=SEED, offset=offset, backend=backend, step=step + t, **kw)
        offset = (offset + rng.foreach_offsets(0, [z.numel() for z in zs])[1]) % 2**64
    state = lpc_fast.make_rng_state(SEED, 2**64 - 9, step)
    z_fe, v_fe = _clone(zs), _clone(vs)
    for _ in range(2):
        lpc_fast.langevin_step_foreach_(z_fe, gs, v_fe, rng_state=state, backend=backend, **kw)
    _assert_bitwise(z_fe, z_loop)
    _assert_bitwise(v_fe, v_loop)
    assert state.tolist() == lpc_fast.make_rng_state(SEED, offset, step + 2).tolist()


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_empty_lists_and_empty_tensors(backend):
    lpc_fast.langevin_step_foreach_([], [], [], seed=1, offset=2, backend=backend, **HP)
    state = lpc_fast.make_rng_state(1, 2, 3)
    kw = {k: x for k, x in HP.items() if k != "step"}
    lpc_fast.langevin_step_foreach_([], [], [], rng_state=state, backend=backend, **kw)
    assert state.tolist() == [1, 2, 4]  # one call is one step, as for an empty tensor
    z, g, v = torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3)
    lpc_fast.langevin_step_foreach_([z, z], [g, g], [v, v], rng_state=state, backend=backend, **kw)
    assert state.tolist() == [1, 2, 5]


def _triple(n=4, dtype=torch.float32):
    return torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype), torch.zeros(n)


OK = dict(step=1, step_size=0.1, seed=0, offset=0)


def test_bad_lists_are_named():
    a, b = _triple(), _triple(3, torch.float64)
    zs, gs, vs = [a[0], b[0]], [a[1], b[1]], [a[2], b[2]]
    f = lpc_fast.langevin_step_foreach_
    with pytest.raises(TypeError, match=r"zs must be a list or tuple of tensors, got Tensor"):
        f(a[0], gs, vs, **OK)
    with pytest.raises(ValueError, match=r"grads must hold one tensor per tensor of zs \(2\), got 1"):
        f(zs, gs[:1], vs, **OK)
    with pytest.raises(ValueError, match=r"vs must hold one tensor per tensor of zs \(2\), got 3"):
        f(zs, gs, vs + vs[:1], **OK)
    with pytest.raises(TypeError, match=r"grads\[1\] must have the dtype of zs\[1\] \(torch.float64\)"):
        f(zs, [gs[0], gs[1].float()], vs, **OK)
    with pytest.raises(TypeError, match=r"vs\[0\] \(the preconditioner state\) must be float32"):
        f(zs, gs, [vs[0].double(), vs[1]], **OK)
    with pytest.raises(ValueError, match=r"vs\[1\] must have the shape of zs\[1\] \(3,\), got \(4,\)"):
        f(zs, gs, [vs[0], vs[0]], **OK)
    with pytest.raises(TypeError, match=r"zs\[1\] must have dtype float16, bfloat16, float32 or float64"):
        f([zs[0], zs[1].int()], [gs[0], gs[1].int()], vs, **OK)
    with pytest.raises(TypeError, match=r"zs\[0\] must be a torch.Tensor, got list"):
        f([[0.0], zs[1]], gs, vs, **OK)
    with pytest.raises(ValueError, match=r"grads\[0\] must be on zs\[0\]'s device"):
        f(zs, [gs[0].to("meta"), gs[1]], vs, **OK)
    with pytest.raises(ValueError, match=r"zs\[1\] must be on zs\[0\]'s device"):
        f([zs[0], zs[1].to("meta")], [gs[0], gs[1].to("meta")], [vs[0], vs[1].to("meta")], **OK)
    with pytest.raises(TypeError, match=r"langevin_step_foreach_ needs step, seed"):
        f(zs, gs, vs, step_size=0.1, offset=0)
    with pytest.raises(ValueError, match=r"either rng_state or"):
        f(zs, gs, vs, step_size=0.1, rng_state=lpc_fast.make_rng_state(1), seed=1)
    with pytest.raises(ValueError, match=r"rng_state must be an int64 tensor of shape \(3,\)"):
        f(zs, gs, vs, step_size=0.1, rng_state=torch.zeros(3))
    with pytest.raises(ValueError, match=r"backend must be one of"):
        f([], [], [], backend="gpu", **OK)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(step=0), ValueError, r"step must be >= 1"),
        (dict(step_size=0.0), ValueError, r"step_size must be > 0"),
        (dict(beta=1.0), ValueError, r"beta must be in \[0, 1\)"),
        (dict(eps=0.0), ValueError, r"eps must be > 0"),
        (dict(temperature=-1.0), ValueError, r"temperature must be >= 0"),
        (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"),
        (dict(offset=2**64), ValueError, r"offset must be in \[0, 2\*\*64\)"),
        (dict(prior_grad=1), TypeError, r"prior_grad must be a bool"),
        (dict(weight_decay=-0.5), ValueError, r"weight_decay \(.*precision\) must be >= 0"),
        (dict(weight_decay=float("nan")), ValueError, r"weight_decay must be finite"),
        (dict(weight_decay="1"), TypeError, r"weight_decay must be a real number"),
        (dict(prior_grad=True, weight_decay=0.5), ValueError, r"prior_grad=True and weight_decay=0.5 dis"),
        (dict(prior_grad=False, weight_decay=1.0), ValueError, r"prior_grad=False and weight_decay=1.0"),
    ],
)
def test_bad_scalars_are_named_as_for_the_single_op(change, exc, match):
    z, g, v = _triple()
    with pytest.raises(exc, match=match):
        lpc_fast.langevin_step_foreach_([z], [g], [v], **{**OK, **change})


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_compiled_foreach_loop_matches_eager_with_at_most_one_recompile(backend):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    zs0, _, _ = _list([((16, 8), torch.float32, True), ((40,), torch.float64, True)])
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(z.shape, generator=gen).to(z.dtype) for z in zs0] for _ in range(6)]
    inc = rng.foreach_offsets(0, [z.numel() for z in zs0])[1]

    def step(zs, gs, vs, t, offset):
        lpc_fast.langevin_step_foreach_(
            zs, gs, vs, step=t, step_size=0.01, seed=5, offset=offset, backend=backend
        )
        return zs

    compiled = torch.compile(step, fullgraph=True)
    z_e, v_e = _clone(zs0), [torch.zeros(z.shape) for z in zs0]
    z_c, v_c = _clone(zs0), [torch.zeros(z.shape) for z in zs0]
    for t in range(1, 7):
        step(z_e, grads[t - 1], v_e, t, (t - 1) * inc)
        compiled(z_c, grads[t - 1], v_c, t, (t - 1) * inc)
    for a, b in zip(z_c + v_c, z_e + v_e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def test_fast_path_keeps_the_named_errors():
    a, b = _triple(), _triple(3, torch.float64)
    zs, gs, vs = [a[0], b[0]], [a[1], b[1]], [a[2], b[2]]
    for _ in range(3):  # checked path, then the key cache, then the memo of the last call
        lpc_fast.langevin_step_foreach_(zs, gs, vs, **OK)
    f = lpc_fast.langevin_step_foreach_
    with pytest.raises(ValueError, match=r"vs\[1\] must have the shape of zs\[1\] \(3,\), got \(4,\)"):
        f(zs, gs, [vs[0], vs[0]], **OK)
    with pytest.raises(TypeError, match=r"grads\[1\] must have the dtype of zs\[1\]"):
        f(zs, [gs[0], gs[1].float()], vs, **OK)
    with pytest.raises(ValueError, match=r"grads must hold one tensor per tensor of zs \(2\), got 1"):
        f(zs, gs[:1], vs, **OK)
    with pytest.raises(ValueError, match=r"grads\[0\] must be on zs\[0\]'s device"):
        f(zs, [gs[0].to("meta"), gs[1]], vs, **OK)
    with pytest.raises(TypeError, match=r"zs\[1\] must be a torch.Tensor, got list"):
        f([zs[0], [0.0]], gs, vs, **OK)
