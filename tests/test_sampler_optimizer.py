"""LangevinSampler as a ``torch.optim.Optimizer``: the contract, the safe defaults, the cached hot path.

Expected values are closed forms (deterministic ``temperature=0`` chains, the contract noise of
``lpc_fast.rng``) or a second, independent run, never numbers recorded from an earlier run. The one
statistical check (ULA's stationary variance) compares a z-score with 5: two-sided false-alarm rate 5.7e-7
per check, two checks.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import pickle

import pytest
import torch
from _helpers import cpu_backend_params
from torch import nn

import lpc_fast
from lpc_fast import reference, rng
from lpc_fast.sampler import LangevinSampler

pytestmark = pytest.mark.filterwarnings("ignore:lpc_fast. using the 'reference' backend")

Z5 = 5.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def quadratic_grad(z: torch.Tensor, mu: float = 0.0, sigma: float = 1.0) -> None:
    """``z.grad`` of ``E = sum (z - mu)^2 / (2 sigma^2)``."""
    z.grad = (z.detach() - mu) / sigma**2


# -- the Optimizer contract ------------------------------------------------------------------------------


def test_is_an_optimizer_with_lr_in_defaults_and_every_group():
    a, b = torch.zeros(3, 2), torch.zeros(4)
    sampler = LangevinSampler([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1)
    assert isinstance(sampler, torch.optim.Optimizer)
    assert sampler.defaults["lr"] == 0.1
    assert [g["lr"] for g in sampler.param_groups] == [0.1, 0.2]
    # Positional lr and an optimizer factory called the way trainers call torch.optim.SGD.
    factory = functools.partial(LangevinSampler, temperature=0.5)
    for built in (LangevinSampler([a], 0.1), factory([a], **{"lr": 0.1})):
        assert built.param_groups[0]["lr"] == 0.1


def test_step_size_is_an_alias_of_lr_in_the_constructor_and_in_groups():
    a, b = torch.zeros(3), torch.zeros(3)
    sampler = LangevinSampler([{"params": [a]}, {"params": [b], "step_size": 0.3}], step_size=0.05)
    assert [g["lr"] for g in sampler.param_groups] == [0.05, 0.3]
    assert all("step_size" not in g for g in sampler.param_groups)
    with pytest.raises(ValueError, match=r"both lr=0.1 and step_size=0.2"):
        LangevinSampler([a], lr=0.1, step_size=0.2)
    with pytest.raises(ValueError, match=r"parameter group 0 gives both lr=0.1 and step_size=0.2"):
        LangevinSampler([{"params": [a], "lr": 0.1, "step_size": 0.2}], lr=0.1)
    with pytest.raises(TypeError, match=r"needs lr"):
        LangevinSampler([a])
    with pytest.raises(ValueError, match=r"^lr must be > 0, got -1.0$"):
        LangevinSampler([a], lr=-1.0)


def test_schedulers_change_eta_and_the_cached_step_follows():
    """tau = 0 ULA on E = z^2/2: z_t = prod_s (1 - eta_s) z_0 with StepLR halving eta every 3 steps."""
    z = torch.full((5,), 2.0, dtype=torch.float64)
    sampler = LangevinSampler([z], lr=0.4, temperature=0.0)
    sched = torch.optim.lr_scheduler.StepLR(sampler, step_size=3, gamma=0.5)
    expected = 2.0
    for t in range(10):
        eta = sampler.param_groups[0]["lr"]
        assert eta == 0.4 * 0.5 ** (t // 3)
        quadratic_grad(z)
        sampler.step()
        sched.step()
        expected *= 1.0 - eta
        torch.testing.assert_close(z, torch.full_like(z, expected), rtol=1e-12, atol=0.0)
    # Any other scheduler works too (it only needs an Optimizer with 'lr' in its groups).
    torch.optim.lr_scheduler.CosineAnnealingLR(sampler, T_max=5)


def test_a_group_value_changed_between_steps_is_validated_at_the_next_step():
    z = torch.zeros(4)
    sampler = LangevinSampler([z], lr=0.1)
    z.grad = torch.zeros_like(z)
    sampler.step()
    sampler.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match=r"^lr must be > 0, got -0.5$"):
        sampler.step()
    sampler.param_groups[0]["lr"] = 0.1
    sampler.param_groups[0]["temperature"] = -1.0
    with pytest.raises(ValueError, match=r"temperature must be >= 0"):
        sampler.step()


def test_add_param_group_zero_grad_and_hooks():
    a, b = torch.zeros(6), torch.zeros(2, 3)
    sampler = LangevinSampler([a], lr=0.1, temperature=0.0, seed=1)
    sampler.add_param_group({"params": b, "lr": 0.5})
    assert len(sampler.param_groups) == 2 and sampler.param_groups[1]["temperature"] == 0.0
    with pytest.raises(ValueError, match=r"appears more than once"):
        sampler.add_param_group({"params": [a]})
    calls = []
    sampler.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    sampler.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    sampler.step()
    assert calls == ["pre", "post"]
    torch.testing.assert_close(a, torch.full_like(a, -0.1))
    torch.testing.assert_close(b, torch.full_like(b, -0.5))
    sampler.zero_grad()
    assert a.grad is None and b.grad is None


def test_step_hooks_run_like_torchs_and_the_profiler_still_sees_the_step():
    """The lean step wrapper keeps torch's hook contract: global then per-instance pre-hooks (which may
    rewrite the arguments), the step, per-instance then global post-hooks; and a profiler range."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    z = torch.zeros(5)
    sampler = LangevinSampler([z], lr=0.1, temperature=0.0, seed=1)
    calls = []
    energies = torch.tensor([3.0])

    def closure():
        calls.append("closure")
        z.grad = torch.ones_like(z)
        return energies

    def rewrite(opt, args, kwargs):
        calls.append("pre")
        return args, {"closure": closure}  # the step then runs with the closure

    handles = [
        register_optimizer_step_pre_hook(lambda opt, args, kwargs: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append("global post")),
        sampler.register_step_pre_hook(rewrite),
        sampler.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", kwargs["closure"]))),
    ]
    try:
        assert sampler.step() is energies
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global pre", "pre", "closure", ("post", closure), "global post"]
    torch.testing.assert_close(z, torch.full_like(z, -0.1))
    bad = sampler.register_step_pre_hook(lambda opt, args, kwargs: 1)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        sampler.step()
    bad.remove()
    assert getattr(LangevinSampler.step, "hooked", False)  # torch.optim does not wrap it again
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sampler.step()
    assert "Optimizer.step#LangevinSampler.step" in {e.key for e in prof.key_averages()}


def test_parameters_and_tensors_that_require_grad_are_latents():
    """An nn.Parameter and a requires-grad tensor, gradients from autograd in a closure."""
    p = nn.Parameter(torch.full((4, 3), 1.0))
    q = torch.full((4,), -1.0, requires_grad=True)
    sampler = LangevinSampler([p, q], lr=0.25, temperature=0.0)

    def closure():
        sampler.zero_grad()
        energy = 0.5 * (p**2).sum(1) + 0.5 * q**2
        energy.sum().backward()
        return energy.detach()

    for _ in range(3):
        sampler.step(closure)
    assert p.requires_grad and q.requires_grad and q.is_leaf
    torch.testing.assert_close(p.detach(), torch.full((4, 3), 0.75**3))
    torch.testing.assert_close(q.detach(), torch.full((4,), -(0.75**3)))


@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_per_group_overrides_of_every_hyper_parameter(mode):
    """Two groups with different settings: each tensor's step is the reference update with its group's
    settings and the contract noise at consecutive offsets (latent order)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    c = torch.randn(2, 2, generator=g, dtype=torch.float64)
    groups = [
        {"params": [a, b]},
        {"params": [c], "lr": 0.02, "beta": 0.5, "eps": 0.1, "temperature": 0.3}
        | {"bias_correction": False, "prior_grad": True},
    ]
    settings = [
        dict(step_size=0.05, beta=0.99, eps=1e-3, temperature=1.0, bias_correction=True, prior_grad=False),
        dict(step_size=0.02, beta=0.5, eps=0.1, temperature=0.3, bias_correction=False, prior_grad=True),
    ]
    seed, offset = 2**63 + 11, 2**32 - 3
    sampler = LangevinSampler(groups, lr=0.05, mode=mode, seed=seed, offset=offset)
    ref = [(z.clone(), torch.zeros_like(z), settings[0 if i < 2 else 1]) for i, z in enumerate((a, b, c))]
    for step in (1, 2, 3):
        grads = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in (a, b, c)]
        for z, gr in zip((a, b, c), grads):
            z.grad = gr.clone()
        sampler.step()
        for i, z in enumerate((a, b, c)):
            rz, rv, hp = ref[i]
            noise = rng.philox_normal_reference(z.numel(), seed=seed, offset=offset).view(z.shape)
            offset = rng.NoiseStream.advance(offset, z.numel())
            rz, rv = reference.langevin_update(
                rz, grads[i], rv, noise, step=step, precondition=mode != "ula", **hp
            )
            # float64 latents, but v is float32 state in every backend: p carries ~1e-7 relative rounding.
            torch.testing.assert_close(z, rz, rtol=1e-6, atol=1e-6 if mode != "ula" else 1e-10)
            ref[i] = (z.clone(), rv, hp)
    assert sampler.offset == offset


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "ula"},
        {"mode": "preconditioned", "freeze_preconditioner_after": 6},
        {"mode": "mala", "adapt_step_size": True, "adaptation_window": 8},
    ],
    ids=["ula", "preconditioned-freeze", "mala-adapt"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bit_identically(kwargs, dtype):
    """Two groups, three tensors, a scheduler: save mid-chain, restore into a new sampler, continue.

    bfloat16 latents check that the float32 preconditioner state is restored exactly (torch casts
    floating state to the parameter's dtype on load)."""

    def build(zs):
        groups = [{"params": zs[:2]}, {"params": zs[2:], "lr": 0.05, "beta": 0.9}]
        sampler = LangevinSampler(groups, lr=0.1, seed=77, record_diagnostics=True, **kwargs)
        return sampler, torch.optim.lr_scheduler.StepLR(sampler, step_size=4, gamma=0.7)

    def closure_for(zs):
        def closure():
            for z in zs:
                z.grad = (z.float() - 0.5).to(z.dtype)
            return sum(0.5 * ((z.float() - 0.5) ** 2).reshape(8, -1).sum(1) for z in zs)

        return closure

    def run(sampler, sched, zs, n):
        for _ in range(n):
            sampler.step(closure_for(zs))
            sched.step()

    zs = [torch.linspace(-2, 2, 8 * k).view(8, k).to(dtype) for k in (3, 5, 2)]
    sampler, sched = build(zs)
    run(sampler, sched, zs, 10)
    buffer = io.BytesIO()
    torch.save(
        {"z": [z.clone() for z in zs], "sampler": sampler.state_dict(), "sched": sched.state_dict()}, buffer
    )
    run(sampler, sched, zs, 10)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    zs2 = saved["z"]
    resumed, sched2 = build(zs2)
    resumed.load_state_dict(saved["sampler"])
    sched2.load_state_dict(saved["sched"])
    run(resumed, sched2, zs2, 10)
    for z, z2 in zip(zs, zs2):
        assert torch.equal(z, z2)
        assert torch.equal(sampler.state[z]["v"], resumed.state[z2]["v"])
        assert resumed.state[z2]["v"].dtype == torch.float32
        assert resumed.state[z2]["step"] == sampler.state[z]["step"]
    assert (resumed.seed, resumed.offset) == (sampler.seed, sampler.offset)
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in sampler.param_groups]
    assert torch.equal(resumed.diagnostics.grad_norm_trace(), sampler.diagnostics.grad_norm_trace())
    if kwargs["mode"] == "mala":
        assert resumed.diagnostics.accepted == sampler.diagnostics.accepted
        assert resumed.step_scale() == sampler.step_scale()


def test_load_state_dict_rejects_a_foreign_or_mismatched_state():
    z = torch.zeros(4, 2)
    sampler = LangevinSampler([z], lr=0.1)
    with pytest.raises(ValueError, match=r"no 'sampler' entry"):
        sampler.load_state_dict(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).state_dict())
    other = LangevinSampler([torch.zeros(4, 2)], lr=0.1, mode="preconditioned")
    with pytest.raises(ValueError, match=r"state is for mode 'preconditioned'"):
        sampler.load_state_dict(other.state_dict())
    bigger = LangevinSampler([torch.zeros(5, 2)], lr=0.1)
    bigger.param_groups[0]["params"][0].grad = torch.zeros(5, 2)
    bigger.step()
    with pytest.raises(ValueError, match=r"saved state of shape \(5, 2\) for a latent of shape \(4, 2\)"):
        sampler.load_state_dict(bigger.state_dict())


def test_deepcopy_and_pickle_keep_the_sampler_settings():
    z = torch.zeros(3)
    sampler = LangevinSampler([z], lr=0.1, mode="preconditioned", seed=5, offset=9)
    for clone in (copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        assert (clone.mode, clone.seed, clone.offset) == ("preconditioned", 5, 9)
        zc = clone.param_groups[0]["params"][0]
        zc.grad = torch.ones(3)
        clone.step()


# -- safe defaults ------------------------------------------------------------------------------------------


def test_defaults_are_plain_langevin_without_diagnostics():
    """No options: z' = z - eta g + sqrt(2 eta) xi exactly, with the sampler's own (drawn) seed."""
    z = torch.linspace(-1, 1, 10, dtype=torch.float64)
    sampler = LangevinSampler([z], lr=0.1)
    assert sampler.mode == "ula" and not sampler.record_diagnostics and sampler.offset == 0
    z0 = z.clone()
    z.grad = torch.linspace(0, 2, 10, dtype=torch.float64)
    sampler.step()
    xi = rng.philox_normal_reference(10, seed=sampler.seed, offset=0)
    torch.testing.assert_close(z, z0 - 0.1 * z.grad + math.sqrt(0.2) * xi, rtol=1e-12, atol=1e-12)
    assert len(sampler.diagnostics.grad_norm) == 0


def test_unseeded_samplers_draw_different_noise_and_manual_seed_reproduces_it():
    def noise_of_two_samplers():
        out = []
        for _ in range(2):
            z = torch.zeros(64)
            sampler = LangevinSampler([z], lr=0.5)  # z' = xi
            z.grad = torch.zeros_like(z)
            sampler.step()
            out.append((sampler.seed, z.clone()))
        return out

    torch.manual_seed(1234)
    first = noise_of_two_samplers()
    torch.manual_seed(1234)
    again = noise_of_two_samplers()
    assert first[0][0] != first[1][0]
    assert not torch.equal(first[0][1], first[1][1])
    for (s1, z1), (s2, z2) in zip(first, again):
        assert s1 == s2 and torch.equal(z1, z2)
    # The seed is a full 64-bit draw from torch's generator.
    torch.manual_seed(0)
    seeds = {rng.draw_seed() for _ in range(64)}
    assert len(seeds) == 64 and max(seeds) >= 2**32


@pytest.mark.statistical
def test_default_sampler_has_ulas_stationary_variance_on_a_gaussian():
    """E = (z - mu)^2 / (2 sigma^2), no options but lr: final states of 20,000 independent chains are
    N(mu, sigma^2 / (1 - a/2)), a = eta / sigma^2 (ULA's exact discretised law; the preconditioned
    sampler's would differ). 2 checks at Z5: false-alarm probability < 1.2e-6."""
    mu, sigma, eta = 1.5, 0.7, 0.2
    torch.manual_seed(2024)
    z = torch.zeros(20_000, dtype=torch.float64)
    sampler = LangevinSampler([z], lr=eta)
    for _ in range(300):  # (1 - a)^300 < 1e-30: the start is forgotten
        quadratic_grad(z, mu, sigma)
        sampler.step()
    var = sigma**2 / (1 - eta / sigma**2 / 2)
    u = (z - mu) / math.sqrt(var)
    n = u.numel()
    z_mean = u.mean().item() * math.sqrt(n)
    z_var = (u.var().item() - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(z_mean) < Z5, z_mean
    assert abs(z_var) < Z5, z_var
    # The check can tell ULA's law from the target's: the variance ratio 1/(1 - a/2) = 1.26 is many
    # standard errors (sqrt(2/n) = 0.01) away from 1, so a sampler with another default would fail.
    assert 1 / (1 - eta / sigma**2 / 2) - 1 > 4 * Z5 * math.sqrt(2.0 / n)


def test_diagnostics_record_float32_norms_on_the_device_and_running_sums():
    a, b = torch.zeros(4, 3), torch.zeros(4, 5)
    sampler = LangevinSampler([a, b], lr=0.1, record_diagnostics=True, seed=0)
    norms = []
    for k in range(3):
        ga, gb = torch.full_like(a, float(k + 1)), torch.full_like(b, -2.0)
        norms.append(math.sqrt(ga.square().sum().item() + gb.square().sum().item()))

        def closure(ga=ga, gb=gb):
            a.grad, b.grad = ga, gb
            return torch.arange(4.0)

        sampler.step(closure)
    trace = sampler.diagnostics.grad_norm_trace()
    assert trace.dtype == torch.float32 and trace.device == a.device
    torch.testing.assert_close(trace, torch.tensor(norms, dtype=torch.float32))
    torch.testing.assert_close(sampler.diagnostics.mean_grad_norm(), torch.tensor(sum(norms) / 3))
    torch.testing.assert_close(sampler.diagnostics.mean_energy(), torch.arange(4.0))
    assert sampler.diagnostics.energy_trace().shape == (3, 4)


# -- the cached hot path ------------------------------------------------------------------------------------


def test_latents_without_grad_are_skipped_and_picked_up_when_they_get_one():
    a, b = torch.zeros(8), torch.zeros(8)
    sampler = LangevinSampler([a, b], lr=0.5, seed=3)
    a.grad = torch.zeros_like(a)
    sampler.step()
    assert torch.equal(b, torch.zeros(8)) and b not in sampler.state
    off = sampler.offset
    b.grad = torch.zeros_like(b)
    sampler.step()
    # a then b, consecutive counters: z' = z + xi with temperature 1 and lr 0.5.
    xi = rng.philox_normal_reference(16, seed=3, offset=off).float()
    torch.testing.assert_close(b, xi[8:], rtol=1e-5, atol=1e-6)
    assert sampler.state[a]["step"] == 2 and sampler.state[b]["step"] == 1


def test_the_plan_is_rebuilt_only_when_something_changes(monkeypatch):
    zs = [torch.zeros(16), torch.zeros(4, 4), torch.zeros(3)]
    sampler = LangevinSampler(zs, lr=0.1)
    builds = []
    real = sampler._build_plan

    def counting():
        builds.append(1)
        return real()

    monkeypatch.setattr(sampler, "_build_plan", counting)
    for z in zs:
        z.grad = torch.zeros_like(z)
    for _ in range(5):
        sampler.step()
    assert len(builds) == 1
    sampler.param_groups[0]["temperature"] = 0.5
    sampler.step()
    sampler.step()
    assert len(builds) == 2
    sampler.reset()
    sampler.step()
    assert len(builds) == 3


def test_the_lpc_trainer_asks_for_its_sampler_settings_explicitly():
    """The trainer's documented chain (preconditioned unless --no-precondition, its own seed and offset)
    does not depend on the sampler's defaults."""
    from lpc_fast.train.config import TrainConfig
    from lpc_fast.train.lpc import make_sampler

    z = torch.zeros(4, 3, requires_grad=True)
    for precondition, mode in ((True, "preconditioned"), (False, "ula")):
        config = TrainConfig(precondition=precondition)
        sampler = make_sampler(z, config, seed=5, offset=7)
        assert (sampler.mode, sampler.seed, sampler.offset) == (mode, 5, 7)
        assert not sampler.record_diagnostics
        assert sampler.param_groups[0]["lr"] == config.langevin_step_size


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_sampler_steps_equal_the_single_op_per_tensor_bit_for_bit(backend, mode):
    """Three tensors of mixed dtypes in one group (one multi-tensor launch per step) move exactly as
    three ``langevin_step_`` calls at consecutive offsets do."""
    gen = torch.Generator().manual_seed(8)
    shapes, dtypes = [(16, 5), (7,), (3, 3, 2)], [torch.float32, torch.float64, torch.bfloat16]
    zs = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes)]
    twins = [z.clone() for z in zs]
    vs = [torch.zeros(s) for s in shapes]
    seed, offset = 2**64 - 5, 2**64 - 9  # the counters wrap mid-step
    sampler = LangevinSampler(zs, lr=0.05, mode=mode, seed=seed, offset=offset, backend=backend)
    for step in (1, 2, 3):
        grads = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes)]
        for z, g in zip(zs, grads):
            z.grad = g
        sampler.step()
        for t, g, v in zip(twins, grads, vs):
            lpc_fast.langevin_step_(
                t,
                g,
                v,
                step=step,
                step_size=0.05,
                precondition=mode != "ula",
                seed=seed,
                offset=offset,
                backend=backend,
            )
            offset = rng.NoiseStream.advance(offset, t.numel())
        for z, t in zip(zs, twins):
            assert torch.equal(z, t)
    assert sampler.offset == offset


# -- weight_decay: a Gaussian prior of precision lambda added in the kernel ---------------------------------


@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_weight_decay_is_the_prior_gradient_added_to_grad(mode):
    """weight_decay=lambda (per group) steps like weight_decay=0 with grad + lambda z, same noise.

    float64 latents; v is float32 state, so the preconditioned chains agree to its rounding (1e-6)."""
    g = torch.Generator().manual_seed(8)
    a, b = (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.randn(9, generator=g, dtype=torch.float64),
    )
    a2, b2 = a.clone(), b.clone()
    groups = [{"params": [a]}, {"params": [b], "weight_decay": 0.3}]
    with_wd = LangevinSampler(groups, lr=0.05, mode=mode, weight_decay=4.0, seed=17)
    by_hand = LangevinSampler([a2, b2], lr=0.05, mode=mode, seed=17)
    assert [grp["weight_decay"] for grp in with_wd.param_groups] == [4.0, 0.3]
    for _ in range(4):
        grads = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in (a, b)]
        a.grad, b.grad = grads[0].clone(), grads[1].clone()
        a2.grad, b2.grad = grads[0] + 4.0 * a2, grads[1] + 0.3 * b2
        with_wd.step()
        by_hand.step()
        tol = 1e-12 if mode == "ula" else 1e-6
        torch.testing.assert_close(a, a2, rtol=tol, atol=tol)
        torch.testing.assert_close(b, b2, rtol=tol, atol=tol)


def test_prior_grad_is_an_alias_of_weight_decay_one():
    z = torch.zeros(3)
    assert LangevinSampler([z], lr=0.1, prior_grad=True).param_groups[0]["weight_decay"] == 1.0
    assert LangevinSampler([z], lr=0.1, prior_grad=False).param_groups[0]["weight_decay"] == 0.0
    assert LangevinSampler([z], lr=0.1).param_groups[0]["weight_decay"] == 0.0
    assert LangevinSampler([z], lr=0.1, prior_grad=True, weight_decay=1.0).defaults["weight_decay"] == 1.0
    sampler = LangevinSampler([{"params": [z], "prior_grad": True}], lr=0.1, weight_decay=0.5)
    assert sampler.param_groups[0]["weight_decay"] == 1.0 and "prior_grad" not in sampler.param_groups[0]
    with pytest.raises(ValueError, match=r"LangevinSampler: prior_grad=True and weight_decay=0.5 disagree"):
        LangevinSampler([z], lr=0.1, prior_grad=True, weight_decay=0.5)
    groups = [{"params": [z]}, {"params": [torch.zeros(2)], "prior_grad": False, "weight_decay": 2.0}]
    with pytest.raises(
        ValueError, match=r"parameter group 1: prior_grad=False and weight_decay=2.0 disagree"
    ):
        LangevinSampler(groups, lr=0.1)
    with pytest.raises(ValueError, match=r"weight_decay \(.*precision\) must be >= 0"):
        LangevinSampler([z], lr=0.1, weight_decay=-1.0)
    with pytest.raises(TypeError, match=r"prior_grad must be a bool"):
        LangevinSampler([z], lr=0.1, prior_grad="yes")


def test_a_state_saved_with_prior_grad_loads_as_weight_decay():
    """A state_dict whose groups carry the older prior_grad flag restores as weight_decay 0 / 1."""
    z, w = torch.zeros(4), torch.zeros(2)
    sampler = LangevinSampler([{"params": [z]}, {"params": [w]}], lr=0.1, seed=3)
    state = sampler.state_dict()
    for grp, flag in zip(state["param_groups"], (True, False)):
        del grp["weight_decay"]
        grp["prior_grad"] = flag
    fresh = LangevinSampler([{"params": [z]}, {"params": [w]}], lr=0.1, seed=9, weight_decay=0.25)
    fresh.load_state_dict(state)
    assert [grp["weight_decay"] for grp in fresh.param_groups] == [1.0, 0.0]
    assert all("prior_grad" not in grp for grp in fresh.param_groups)
