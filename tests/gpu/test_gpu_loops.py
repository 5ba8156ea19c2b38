"""The T-step inference loop on the GPU: CUDA graphs, torch.compile and launch counts.

* A CUDA graph of 20 capturable steps (``rng_state=``) equals the eager loop with explicit
  ``(step, seed, offset)``, and a second replay continues the chain with fresh noise.
* ``torch.compile(fullgraph=True)`` of a 20-step loop compiles once and equals the eager loop.
* At N = 2**12 a step is one kernel launch (no copies, no extra kernels).
"""

from __future__ import annotations

import pytest
import torch
from _gpu_common import DEVICE, HYPER, make_inputs, skip_unless_backend

import lpc_fast
from lpc_fast import rng

pytestmark = pytest.mark.gpu

LOOP_BACKENDS = ("cuda", "triton")
T = 20
SEED = 2**64 - 3  # high bits set: the int64 carrier is negative
OFFSET0 = 2**32 - 7  # the offset's low word carries into the high word during the loop
SHAPE = (64, 40)  # one LPC batch: 64 data points x 40 latents


def eager_loop(z, g, v, backend, first_step, offset, steps=T):
    """The reference loop: explicit (step, seed, offset), offset advanced by ceil(n / 4)."""
    for t in range(first_step, first_step + steps):
        lpc_fast.langevin_step_(z, g, v, step=t, seed=SEED, offset=offset, backend=backend, **HYPER)
        offset += rng.offset_increment(z.numel())
    return offset


def assert_same(actual, expected, backend):
    # Both loops run the same kernel on the same values: the C++/CUDA kernel is bit-identical
    # whether step/seed/offset come from the host or from the state tensor. Other backends may
    # derive the bias correction differently in the two modes, so allow float32 rounding.
    if backend == "cuda":
        assert torch.equal(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_cuda_graph_loop_equals_eager_and_replays_fresh_noise(backend):
    skip_unless_backend(backend)
    z0, g, v0 = make_inputs(SHAPE, torch.float32, "contiguous", seed=10)
    n = z0.numel()

    z_e, v_e = z0.clone(), v0.clone()
    off_mid = eager_loop(z_e, g, v_e, backend, 1, OFFSET0)
    z_e1, v_e1 = z_e.clone(), v_e.clone()
    off_end = eager_loop(z_e, g, v_e, backend, T + 1, off_mid)

    z_c, v_c = z0.clone(), v0.clone()
    state = lpc_fast.make_rng_state(SEED, offset=OFFSET0, step=1, device=DEVICE)

    # Warm up (Triton compiles on first launch, which capture forbids) on scratch tensors and a
    # scratch state, on a side stream as CUDA graph capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        zs, vs, ss = z0.clone(), v0.clone(), state.clone()
        for _ in range(2):
            lpc_fast.langevin_step_(zs, g, vs, rng_state=ss, backend=backend, **HYPER)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(T):
            lpc_fast.langevin_step_(z_c, g, v_c, rng_state=state, backend=backend, **HYPER)
    # Capture records the work without running it.
    torch.cuda.synchronize()
    assert torch.equal(z_c, z0)
    assert state.tolist() == [rng.to_int64(SEED), OFFSET0, 1]

    graph.replay()
    torch.cuda.synchronize()
    assert_same(z_c, z_e1, backend)
    assert_same(v_c, v_e1, backend)
    assert state.tolist() == [rng.to_int64(SEED), rng.to_int64(off_mid), T + 1]

    # A second replay reads the advanced state: new noise and steps T+1 .. 2T.
    graph.replay()
    torch.cuda.synchronize()
    assert_same(z_c, z_e, backend)
    assert_same(v_c, v_e, backend)
    assert state.tolist() == [rng.to_int64(SEED), rng.to_int64(off_end), 2 * T + 1]
    assert off_end == off_mid + T * rng.offset_increment(n)


class _CompileCounter:
    """A torch.compile backend that counts compilations and hands the graph to inductor."""

    def __init__(self):
        self.frames = 0

    def __call__(self, gm, example_inputs):
        self.frames += 1
        from torch._inductor import compile_fx

        return compile_fx.compile_fx(gm, example_inputs)


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_compiled_state_loop_has_no_recompiles(backend):
    skip_unless_backend(backend)
    torch._dynamo.reset()
    z0, g, v0 = make_inputs(SHAPE, torch.float32, "contiguous", seed=11)
    counter = _CompileCounter()

    def loop(z, g, v, state):
        for _ in range(T):
            lpc_fast.langevin_step_(z, g, v, rng_state=state, backend=backend, **HYPER)

    compiled = torch.compile(loop, backend=counter, fullgraph=True)

    z_c, v_c = z0.clone(), v0.clone()
    state = lpc_fast.make_rng_state(SEED, offset=OFFSET0, step=1, device=DEVICE)
    z_e, v_e = z0.clone(), v0.clone()
    offset = OFFSET0
    for call in range(3):  # new offsets and steps every call: values live in the state tensor
        compiled(z_c, g, v_c, state)
        offset = eager_loop(z_e, g, v_e, backend, 1 + call * T, offset)
        torch.cuda.synchronize()
        assert_same(z_c, z_e, backend)
        assert_same(v_c, v_e, backend)
    assert state.tolist() == [rng.to_int64(SEED), rng.to_int64(offset), 3 * T + 1]
    assert counter.frames == 1, f"compiled {counter.frames} times"


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_compiled_explicit_offset_loop_compiles_at_most_twice(backend):
    """Python-int offsets: the first call specialises on the value and the second recompiles
    with a symbolic offset (automatic dynamic); after that, new offsets must not recompile."""
    skip_unless_backend(backend)
    torch._dynamo.reset()
    z0, g, v0 = make_inputs(SHAPE, torch.float32, "contiguous", seed=12)
    n = z0.numel()
    counter = _CompileCounter()

    def loop(z, g, v, offset, first_step):
        for t in range(T):
            lpc_fast.langevin_step_(
                z, g, v, step=first_step + t, seed=SEED, offset=offset, backend=backend, **HYPER
            )
            offset = offset + (n + 3) // 4
        return offset

    compiled = torch.compile(loop, backend=counter, fullgraph=True)
    z_c, v_c = z0.clone(), v0.clone()
    z_e, v_e = z0.clone(), v0.clone()
    offset_c = offset_e = 1000
    for call in range(4):
        offset_c = compiled(z_c, g, v_c, offset_c, 1 + call * T)
        offset_e = eager_loop(z_e, g, v_e, backend, 1 + call * T, offset_e)
        torch.cuda.synchronize()
        assert int(offset_c) == offset_e
        assert_same(z_c, z_e, backend)
        assert_same(v_c, v_e, backend)
    assert counter.frames <= 2, f"compiled {counter.frames} times for 4 calls"


def _count_device_activities(fn) -> int:
    """Kernels, memcpys and memsets the profiler sees on the GPU while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    device_type = torch.autograd.DeviceType.CUDA
    # CUPTI's own buffer bookkeeping can appear as a GPU-side event: it is not a launch.
    return sum(
        1 for evt in prof.events() if evt.device_type == device_type and "Activity Buffer" not in evt.name
    )


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_one_kernel_launch_per_step(backend):
    skip_unless_backend(backend)
    z, g, v = make_inputs((2**12,), torch.float32, "contiguous", seed=13)

    def step():
        lpc_fast.langevin_step_(z, g, v, step=1, seed=1, offset=0, backend=backend, **HYPER)

    for _ in range(3):  # compile / load the kernel before profiling
        step()
    launches = _count_device_activities(step)
    if launches == 0:
        pytest.skip("the profiler recorded no GPU activity (CUPTI unavailable?)")
    assert launches == 1, f"{launches} GPU activities for one step"
