"""``LangevinSampler(capturable=True)``: counters on the device, the same chain, compilable.

The capturable sampler keeps ``[seed, offset, step]`` in a device tensor that the fused kernels
read and advance. Its chain must be bit-identical to the host-counter sampler's (same noise, same
bias correction), through ``reset``, ``state_dict`` / ``load_state_dict`` and
``torch.compile(fullgraph=True)``; CUDA-graph capture is tested in ``tests/gpu``.
"""

from __future__ import annotations

import os

import pytest
import torch

from lpc_fast import LangevinSampler, rng

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
BACKENDS = ["cpu", "reference"] + (["triton"] if INTERPRET else [])
SHAPES = [(4, 3), (5,), (2, 2, 2)]


def _latents(dtypes=(torch.float32, torch.float64, torch.float32), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(d) for s, d in zip(SHAPES, dtypes)]


def _energy_grads(zs):
    # A fixed quadratic energy: dE/dz = 0.5 z (+ a constant), enough to move v and z.
    for i, z in enumerate(zs):
        z.grad = 0.5 * z.detach() + 0.1 * (i + 1)


def _chain(capturable, backend, *, steps=6, reset_at=3, mode="preconditioned", **options):
    zs = _latents()
    sampler = LangevinSampler(zs, lr=0.05, mode=mode, seed=2**63 + 5, offset=2**32 - 3, backend=backend,
                              capturable=capturable, **options)  # fmt: skip
    for t in range(steps):
        _energy_grads(zs)
        sampler.step()
        if t == reset_at:
            sampler.reset()
    return zs, sampler


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_capturable_chain_is_bit_identical_to_the_host_counter_chain(backend, mode):
    host, s_host = _chain(False, backend, mode=mode)
    dev, s_dev = _chain(True, backend, mode=mode)
    assert all(torch.equal(a, b) for a, b in zip(host, dev))
    assert s_dev.offset == s_host.offset and s_dev.seed == s_host.seed
    # The device state: seed bits, the next counter, steps since the reset + 1.
    assert s_dev._rng_state.tolist() == [rng.to_int64(s_host.seed), rng.to_int64(s_host.offset), 3]
    for i in range(len(dev)):
        assert torch.equal(s_dev.preconditioner(i), s_host.preconditioner(i))


def test_a_single_latent_uses_the_single_tensor_state_op():
    z_host, z_dev = torch.randn(7), None
    z_dev = z_host.clone()
    samplers = [LangevinSampler([z], lr=0.1, mode="preconditioned", seed=4, capturable=c)
                for z, c in ((z_host, False), (z_dev, True))]  # fmt: skip
    for _ in range(3):
        for z, s in zip((z_host, z_dev), samplers):
            z.grad = z.detach().clone()
            s.step()
    assert torch.equal(z_host, z_dev)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_fullgraph_step_equals_the_eager_chain_without_recompiling(backend):
    from torch._dynamo.testing import CompileCounter

    host, _ = _chain(False, backend, steps=6, reset_at=None)
    zs = _latents()
    sampler = LangevinSampler(zs, lr=0.05, mode="preconditioned", seed=2**63 + 5, offset=2**32 - 3,
                              backend=backend, capturable=True)  # fmt: skip
    _energy_grads(zs)
    sampler.step()  # the first step builds the plan and the device state eagerly
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(sampler.step, fullgraph=True, backend=counter)
    for _ in range(5):
        _energy_grads(zs)
        compiled()
    assert all(torch.equal(a, b) for a, b in zip(host, zs))
    assert counter.frame_count == 1, f"{counter.frame_count} compilations"
    assert sampler._rng_state[2].item() == 7


def test_state_dict_round_trip_continues_the_chain_in_the_same_device_tensor():
    ref, _ = _chain(True, "cpu", steps=6, reset_at=None)
    zs = _latents()
    a = LangevinSampler(zs, lr=0.05, mode="preconditioned", seed=2**63 + 5, offset=2**32 - 3, capturable=True)
    for _ in range(3):
        _energy_grads(zs)
        a.step()
    saved = a.state_dict()
    assert all(st["step"] == 3 for st in saved["state"].values())
    # Another sampler that has stepped (its state tensor exists, a captured graph would hold it)
    # takes the saved position into that same tensor.
    zs_b = [z.clone() for z in zs]
    b = LangevinSampler(zs_b, lr=0.05, mode="preconditioned", seed=1, capturable=True)
    _energy_grads(zs_b)
    b.step()
    tensor_b = b._rng_state
    for z, zb in zip(zs, zs_b):
        zb.data.copy_(z)
    b.load_state_dict(saved)
    assert b._rng_state is tensor_b and b._rng_state.tolist() == a._rng_state.tolist()
    for _ in range(3):
        _energy_grads(zs_b)
        b.step()
    assert all(torch.equal(x, y) for x, y in zip(ref, zs_b))


def test_reset_restarts_the_device_step_and_keeps_the_noise_position():
    zs, sampler = _chain(True, "cpu", steps=2, reset_at=None)
    offset = sampler.offset
    sampler.reset()
    assert sampler._rng_state.tolist()[1:] == [offset, 1]
    assert all(torch.equal(sampler.state[z]["v"], torch.zeros_like(sampler.state[z]["v"])) for z in zs)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(mode="mala"), "capturable=True supports mode 'ula' and 'preconditioned'"),
        (dict(mode="preconditioned", freeze_preconditioner_after=3), "freeze_preconditioner_after=None"),
        (dict(record_diagnostics=True), "cannot record_diagnostics"),
        (dict(capturable=1), "capturable must be a bool"),
    ],
)
def test_capturable_rejects_what_needs_host_decisions(options, message):
    options = {"capturable": True, **options}
    with pytest.raises((TypeError, ValueError), match=message):
        LangevinSampler([torch.zeros(3)], lr=0.1, **options)


def test_capturable_needs_one_fused_call():
    a, b = torch.zeros(3), torch.zeros(4)
    sampler = LangevinSampler([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1, capturable=True)
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    with pytest.raises(ValueError, match="one fused call"):
        sampler.step()
    # One group's settings for both: one call, and the chain runs.
    sampler.param_groups[1]["lr"] = 0.1
    sampler.step()
    assert sampler._rng_state[2].item() == 2 and not torch.equal(a, torch.zeros(3))
