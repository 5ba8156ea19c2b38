"""The plain eager path (:mod:`lpc_fast._eager`): a Python backend's kernel called without its op.

Two parts. The routing logic, with recording stand-ins for the op and the kernel (no Triton
needed): which one runs under each context the bypass must leave to the op (``torch.compile``,
``torch.func``, autograd, ``FakeTensor``, dispatch and function modes, the profiler, JIT tracing,
meta tensors and subclasses, CUDA-graph capture). Then the Triton ops end to end under the
interpreter: the bypass gives the op's results bit for bit, bumps version counters as the
dispatcher does, and each of those contexts still sees and runs the registered op.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lpc_fast
from lpc_fast import _eager, rng

SCALARS = (3, 0.05, 0.9, 1e-3, 1.0, True, True, True, 7, 1000)  # step ... seed, offset


class Recorder:
    """Stand-ins for an op and its kernel: which one ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def op(self, *args, **kwargs):
        self.calls.append("op")

    def kernel(self, *args):
        self.calls.append("kernel")


def _step(rec: Recorder):
    return _eager.bypass("langevin_step_", rec.op, rec.kernel)


def _tensors(requires_grad: bool = False, device: str = "cpu"):
    z = torch.zeros(4, device=device, requires_grad=requires_grad)
    return z, torch.zeros(4, device=device), torch.zeros(4, device=device)


def test_plain_call_runs_the_kernel_and_bumps_the_written_tensors_versions():
    rec = Recorder()
    z, g, v = _tensors()
    before = (z._version, g._version, v._version)
    _step(rec)(z, g, v, *SCALARS)
    assert rec.calls == ["kernel"]
    # z and v are written (Tensor(a!), Tensor(b!)), grad is not: as the dispatcher bumps them.
    assert (z._version, g._version, v._version) == (before[0] + 1, before[1], before[2] + 1)


def test_foreach_bumps_every_written_list():
    rec = Recorder()
    call = _eager.bypass("langevin_step_foreach_", rec.op, rec.kernel)
    zs, gs, vs = [torch.zeros(3), torch.zeros(2)], [torch.zeros(3), torch.zeros(2)], [torch.zeros(3)] * 2
    call(zs, gs, [torch.zeros(3), torch.zeros(2)], *SCALARS)
    assert rec.calls == ["kernel"]
    assert [z._version for z in zs] == [1, 1] and [g._version for g in gs] == [0, 0]
    call([], [], [], *SCALARS)  # nothing to check the context on: the op decides
    assert rec.calls == ["kernel", "op"]
    del vs


def test_autograd_decides_by_grad_mode_and_requires_grad():
    rec = Recorder()
    z, g, v = _tensors(requires_grad=True)
    _step(rec)(z, g, v, *SCALARS)  # grad mode on and z requires grad: autograd must see the op
    with torch.no_grad():
        _step(rec)(z, g, v, *SCALARS)
    assert rec.calls == ["op", "kernel"]
    p = torch.nn.Parameter(torch.zeros(4))
    with torch.no_grad():
        _step(rec)(p, g, v, *SCALARS)  # a Parameter is a plain tensor
    assert rec.calls[-1] == "kernel"


class Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class FunctionPassthrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("context", ["dispatch_mode", "function_mode", "fake_mode", "profiler"])
def test_modes_and_the_profiler_take_the_op(context):
    rec = Recorder()
    z, g, v = _tensors()
    if context == "dispatch_mode":
        manager = Passthrough()
    elif context == "function_mode":
        manager = FunctionPassthrough()
    elif context == "fake_mode":
        from torch._subclasses.fake_tensor import FakeTensorMode

        manager = FakeTensorMode(allow_non_fake_inputs=True)
    else:
        manager = torch.autograd.profiler.profile()
    with manager:
        _step(rec)(z, g, v, *SCALARS)
    _step(rec)(z, g, v, *SCALARS)
    assert rec.calls == ["op", "kernel"]


def test_fake_meta_and_subclass_tensors_take_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = Recorder()
    with FakeTensorMode() as mode:
        fz, fg, fv = _tensors()
    assert type(fz) is not torch.Tensor
    _step(rec)(fz, fg, fv, *SCALARS)
    _step(rec)(*_tensors(device="meta"), *SCALARS)

    class Sub(torch.Tensor):
        pass

    z, g, v = _tensors()
    _step(rec)(z.as_subclass(Sub), g, v, *SCALARS)
    _step(rec)(z, g.as_subclass(Sub), v, *SCALARS)
    assert rec.calls == ["op"] * 4
    del mode


def test_torch_func_transforms_take_the_op():
    rec = Recorder()
    _, g, v = _tensors()

    def f(z):
        _step(rec)(z, g, v, *SCALARS)
        return (z * z).sum()

    torch.func.grad(f)(torch.ones(4))
    torch.func.vmap(lambda z: _step(rec)(z, g[0], v[0], *SCALARS) or z)(torch.ones(2, 4).T)
    assert rec.calls and set(rec.calls) == {"op"}


def test_compiling_and_jit_tracing_take_the_op(monkeypatch):
    rec = Recorder()
    z, g, v = _tensors()
    monkeypatch.setattr(_eager, "_is_compiling", lambda: True)
    _step(rec)(z, g, v, *SCALARS)
    monkeypatch.undo()
    monkeypatch.setattr(_eager, "_jit_tracing", lambda: object())
    _step(rec)(z, g, v, *SCALARS)
    monkeypatch.undo()
    _step(rec)(z, g, v, *SCALARS)
    assert rec.calls == ["op", "op", "kernel"]


def test_cuda_graph_capture_takes_the_op_for_cuda_tensors_only(monkeypatch):
    # No GPU here: the capture query is asked only for CUDA tensors (a CPU tensor never asks it),
    # and a capturing stream sends CUDA tensors to the op. tests/gpu checks it under a real capture.
    asked = []

    def capturing():
        asked.append(True)
        return True

    monkeypatch.setattr(_eager, "capturing", capturing)
    rec = Recorder()
    _step(rec)(*_tensors(), *SCALARS)
    assert rec.calls == ["kernel"] and not asked
    assert _eager.capturing is capturing

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert not _eager.plain_tensors([torch.zeros(1, device="cuda")])


def test_keyword_arguments_take_the_op():
    rec = Recorder()
    z, g, v = _tensors()
    _step(rec)(z, g, v, *SCALARS[:-1], offset=SCALARS[-1])
    assert rec.calls == ["op"]


# ------------------------------------------------------------------------------------------------
# The Triton ops end to end (interpreter on CPU, or a GPU)
# ------------------------------------------------------------------------------------------------

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
needs_triton = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="the Triton kernels need TRITON_INTERPRET=1 (set before Python starts) or a CUDA device",
)
DEVICE = "cpu" if INTERPRET else "cuda"
KW = dict(step=3, step_size=0.05, beta=0.9, eps=1e-3, temperature=1.0, prior_grad=True, seed=11, offset=2)


def _triton():
    pytest.importorskip("triton")
    from lpc_fast.triton import load_ops

    return load_ops()


def _inputs(shape=(5, 7), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    g = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    v = torch.rand(shape, generator=gen).to(DEVICE)
    return z, g, v


class OpNames(TorchDispatchMode):
    """Records the ops dispatched under it (and runs them)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_bypass_equals_the_op_bit_for_bit(dtype):
    ops = _triton()
    z, g, v = _inputs(dtype=dtype)
    args = (3, 0.05, 0.9, 1e-3, 1.0, True, True, True, 11, 2)
    z_op, v_op = z.clone(), v.clone()
    torch.ops.lpc_fast.triton_langevin_step_.default(z_op, g, v_op, *args)
    ops.CALLS["langevin_step_"](z, g, v, *args)
    assert torch.equal(z, z_op) and torch.equal(v, v_op)
    zs, gs, vs = [_inputs(s, dtype, i)[j] for j in range(3) for i, s in enumerate([(3, 4), (9,)])], None, None
    zs, gs, vs = zs[0:2], zs[2:4], zs[4:6]
    zs_op, vs_op = [z.clone() for z in zs], [v.clone() for v in vs]
    torch.ops.lpc_fast.triton_langevin_step_foreach_.default(zs_op, gs, vs_op, *args)
    ops.CALLS["langevin_step_foreach_"](zs, gs, vs, *args)
    assert all(torch.equal(a, b) for a, b in zip(zs + vs, zs_op + vs_op))


@needs_triton
def test_rng_and_state_ops_take_the_bypass_with_the_ops_results():
    ops = _triton()
    for name, dtype in (("philox_normal_", torch.float32), ("philox_uint32_", torch.int64)):
        out, out_op = torch.empty(37, dtype=dtype, device=DEVICE), torch.empty(37, dtype=dtype, device=DEVICE)
        getattr(torch.ops.lpc_fast, "triton_" + name).default(out_op, 5, 2**32 - 3)
        ops.CALLS[name](out, 5, 2**32 - 3)
        assert torch.equal(out, out_op) and out._version == 1
    z, g, v = _inputs()
    state, state_op = (lpc_fast.make_rng_state(9, 4, 2, device=DEVICE) for _ in range(2))
    z_op, v_op = z.clone(), v.clone()
    hyper = (0.05, 0.9, 1e-3, 1.0, True, True, False)
    torch.ops.lpc_fast.triton_langevin_step_state_.default(z_op, g, v_op, state_op, *hyper)
    ops.CALLS["langevin_step_state_"](z, g, v, state, *hyper)
    assert torch.equal(z, z_op) and torch.equal(v, v_op) and torch.equal(state, state_op)


@needs_triton
def test_public_calls_bump_versions_so_autograd_sees_the_in_place_update():
    _triton()
    z, g, v = _inputs()
    z.requires_grad_()
    loss = (z * z).sum()  # saves z for its backward
    with torch.no_grad():
        lpc_fast.langevin_step_(z, g, v, backend="triton", **KW)
    assert z._version == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_triton
def test_a_dispatch_mode_sees_the_triton_op_and_gets_its_result():
    _triton()
    z, g, v = _inputs()
    z_plain, v_plain = z.clone(), v.clone()
    lpc_fast.langevin_step_(z_plain, g, v_plain, backend="triton", **KW)
    with OpNames() as mode:
        lpc_fast.langevin_step_(z, g, v, backend="triton", **KW)
        lpc_fast.langevin_step_foreach_([z.clone()], [g], [v.clone()], backend="triton", **KW)
    assert "lpc_fast.triton_langevin_step_.default" in mode.names
    assert "lpc_fast.triton_langevin_step_foreach_.default" in mode.names
    assert torch.equal(z, z_plain) and torch.equal(v, v_plain)


@needs_triton
def test_fake_tensors_reach_the_fake_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    _triton()
    with FakeTensorMode():
        z, g, v = torch.empty(6, device=DEVICE), torch.empty(6, device=DEVICE), torch.empty(6, device=DEVICE)
        lpc_fast.langevin_step_(z, g, v, backend="triton", **KW)
        lpc_fast.langevin_step_foreach_([z], [g], [v], backend="triton", **KW)
        z_new, v_new = lpc_fast.langevin_step(z, g, v, backend="triton", **KW)
        out = lpc_fast.philox_normal(5, seed=1, offset=2, device=DEVICE, backend="triton")
    assert z_new.shape == z.shape and v_new.dtype == torch.float32 and out.shape == (5,)


@needs_triton
def test_autograd_through_the_functional_op_matches_the_reference():
    _triton()
    z, g, v = _inputs(dtype=torch.float64)
    grads = {}
    for backend in ("reference", "triton"):
        za, ga = z.clone().requires_grad_(), g.clone().requires_grad_()
        z_new, _ = lpc_fast.langevin_step(za, ga, v, backend=backend, **KW)
        (z_new * z_new).sum().backward()
        grads[backend] = (za.grad, ga.grad)
    # float64 kernels against float64 torch: the same expressions, rounding apart.
    torch.testing.assert_close(grads["triton"], grads["reference"], rtol=1e-9, atol=1e-12)


@needs_triton
def test_in_place_calls_inside_a_torch_func_transform_give_the_eager_result():
    # The routing under transforms is checked above with recorders; here the op's result.
    _triton()
    z, g, v = _inputs()
    z_eager, v_eager = z.clone(), v.clone()
    lpc_fast.langevin_step_(z_eager, g, v_eager, backend="triton", **KW)

    def f(x):
        lpc_fast.langevin_step_(z, g, v, backend="triton", **KW)
        return (x * x).sum()

    torch.func.grad(f)(torch.ones(3))
    assert torch.equal(z, z_eager) and torch.equal(v, v_eager)


@needs_triton
def test_compiled_public_calls_match_eager():
    _triton()
    inc = rng.offset_increment(35)

    def chain(z, g, v, zs, gs, vs):
        for t in range(3):
            lpc_fast.langevin_step_(z, g, v, backend="triton", **{**KW, "step": t + 1, "offset": t * inc})
            lpc_fast.langevin_step_foreach_(zs, gs, vs, backend="triton", **{**KW, "step": t + 1})
        return z, v

    torch._dynamo.reset()
    compiled = torch.compile(chain, fullgraph=True, backend="aot_eager")
    z, g, v = _inputs()
    zs, gs, vs = [z.clone()], [g], [v.clone()]
    ze, ve = chain(z.clone(), g, v.clone(), [z.clone()], [g], [v.clone()])
    zc, vc = compiled(z.clone(), g, v.clone(), zs, gs, vs)
    assert torch.equal(zc, ze) and torch.equal(vc, ve)
