"""LangevinSampler: exact stationary laws of the discretised chains, MALA exactness, resumability.

Expectations come from closed forms, never from earlier runs. For a Gaussian target
``E = (z - mu)^2 / (2 sigma^2)`` and a frozen preconditioner ``p`` the chain is the AR(1) recursion
``z' - mu = (1 - a)(z - mu) + sqrt(2 eta tau p) xi`` with ``a = eta p / sigma^2``, whose stationary law is
``N(mu, tau sigma^2 / (1 - a/2))``: ULA's discretisation bias, which MALA must remove. If these fail, the
sampler does not sample what LPC's learning rule assumes.

Statistical tests draw one final state per independent chain (many parallel chains, no autocorrelation) and
compare a z-score with 5: each such check false-alarms with probability 5.7e-7 (two-sided normal tail);
a test making k checks, at most k * 5.7e-7. Seeds are fixed once and not tuned.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from lpc_fast import reference, rng
from lpc_fast.diagnostics import effective_sample_size, split_rhat
from lpc_fast.models import GaussianLikelihood, LatentModel
from lpc_fast.sampler import LangevinSampler

pytestmark = pytest.mark.filterwarnings("ignore:lpc_fast. using the 'reference' backend")

Z5 = 5.0  # z-score bound of every statistical check (two-sided false-alarm rate 5.7e-7)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small tensors and many steps: a second OpenMP thread only adds contention on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gaussian_closure(z: torch.Tensor, mu, sigma):
    """Closure for E = sum (z - mu)^2 / (2 sigma^2) over the non-chain dims; fills z.grad analytically."""

    def closure():
        r = (z - mu) / sigma
        z.grad = r / sigma
        return 0.5 * (r * r).reshape(z.shape[0], -1).sum(dim=1)

    return closure


def assert_standard_normal(u: torch.Tensor, what: str) -> None:
    """Mean 0 and variance 1 of i.i.d. draws at Z5 standard errors (2 checks)."""
    n = u.numel()
    u = u.double().reshape(-1)
    z_mean = u.mean().item() * math.sqrt(n)
    z_var = (u.var().item() - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(z_mean) < Z5, f"{what}: mean off by {z_mean:.2f} standard errors"
    assert abs(z_var) < Z5, f"{what}: variance off by {z_var:.2f} standard errors (var {u.var().item():.4f})"


# -- deterministic behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_step_matches_the_reference_update_and_advances_the_stream(mode):
    """Two latents: each step is the reference update with the contract noise at consecutive offsets."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(3, 5, generator=g)
    z2 = torch.randn(7, generator=g)
    seed, offset = 11, 2**40 + 3
    sampler = LangevinSampler([z1, z2], step_size=0.05, mode=mode, seed=seed, offset=offset)
    state = {
        0: (z1.double().clone(), torch.zeros(3, 5, dtype=torch.float64)),
        1: (z2.double().clone(), torch.zeros(7, dtype=torch.float64)),
    }
    off = offset
    for step in (1, 2, 3):
        grads = [torch.randn(3, 5, generator=g), torch.randn(7, generator=g)]
        z1.grad, z2.grad = grads[0].clone(), grads[1].clone()
        sampler.step()
        for i, z in enumerate((z1, z2)):
            ref_z, ref_v = state[i]
            noise = rng.philox_normal_reference(z.numel(), seed=seed, offset=off).view(z.shape)
            off += rng.offset_increment(z.numel())
            new_z, new_v = reference.langevin_update(
                ref_z,
                grads[i].double(),
                ref_v,
                noise,
                step=step,
                step_size=0.05,
                precondition=mode != "ula",
            )
            # The sampler keeps float32 latents: compare at float32 precision and continue from its state.
            torch.testing.assert_close(z.double(), new_z, rtol=2e-5, atol=2e-5)
            state[i] = (z.double().clone(), new_v)
    assert sampler.offset == off


def test_one_fused_launch_per_run_of_latents_per_step():
    """A group's latents move in one multi-tensor launch; another group's settings need a second one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Launches(TorchDispatchMode):
        """Records the lpc_fast ops dispatched (the sampler calls them directly or through the public ops)."""

        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if name.startswith("lpc_fast."):
                kind = "foreach" if "foreach" in name else "single"
                self.calls.append((kind, len(args[0]) if kind == "foreach" else 1, args[-1]))
            return func(*args, **(kwargs or {}))

    a, b, c = torch.zeros(4, 2), torch.zeros(9), torch.zeros(3)
    sampler = LangevinSampler([{"params": [a, b]}, {"params": [c], "step_size": 0.2}], step_size=0.1)
    with Launches() as launches:
        for _ in range(3):
            a.grad, b.grad = (
                torch.ones_like(a),
                torch.ones_like(b),
            )  # c has no grad: skipped like an optimizer
            sampler.step()
        calls = launches.calls
        assert [k for k, _, _ in calls] == ["foreach"] * 3 and all(n == 2 for _, n, _ in calls)
        assert torch.equal(c, torch.zeros(3))
        c.grad = torch.ones_like(c)
        sampler.step()
    assert [k for k, _, _ in calls[3:]] == ["foreach", "single"]
    assert len({off for _, _, off in calls}) == len(calls)  # never the same noise twice


def test_a_latent_resized_behind_the_samplers_back_is_an_error_not_a_kernel_call():
    """The cached step's kernels still check each latent (the plan's v no longer fits it)."""
    a, b = torch.zeros(4, 2), torch.zeros(9)
    sampler = LangevinSampler([a, b], lr=0.1)
    a.grad, b.grad = torch.zeros(4, 2), torch.zeros(9)
    sampler.step()
    b.data = torch.zeros(12)
    b.grad = torch.zeros(12)
    with pytest.raises(ValueError, match=r"vs\[1\] must have the shape of"):
        sampler.step()


def test_zero_temperature_is_deterministic_gradient_descent():
    """tau = 0, ULA: z_t - mu = (1 - eta/sigma^2)^t (z_0 - mu) exactly (predictive coding)."""
    mu, sigma, eta = 0.5, 2.0, 0.4
    z = torch.full((6, 1), 3.0, dtype=torch.float64)
    sampler = LangevinSampler([z], step_size=eta, mode="ula", temperature=0.0)
    closure = gaussian_closure(z, mu, sigma)
    for _ in range(25):
        sampler.step(closure)
    expected = mu + (1 - eta / sigma**2) ** 25 * (3.0 - mu)
    torch.testing.assert_close(z, torch.full_like(z, expected), rtol=1e-12, atol=1e-12)


def test_freeze_keeps_the_bias_corrected_preconditioner():
    z = torch.zeros(50, 4)
    beta, n = 0.9, 5
    sampler = LangevinSampler(
        [z], step_size=0.01, mode="preconditioned", beta=beta, freeze_preconditioner_after=n
    )
    closure = gaussian_closure(z, 1.0, 1.0)
    for _ in range(n):
        sampler.step(closure)
    v_hat = sampler.state[z]["v"] / (1 - beta**n)
    p_expected = 1.0 / (1e-3 + torch.sqrt(v_hat))
    torch.testing.assert_close(sampler.preconditioner(z), p_expected)
    for _ in range(4):
        sampler.step(closure)
    assert sampler.state[z]["frozen"]
    torch.testing.assert_close(sampler.state[z]["v"], v_hat)
    torch.testing.assert_close(sampler.preconditioner(0), p_expected)


def test_reset_restarts_the_chain_state_but_not_the_noise():
    z = torch.zeros(8, 3)
    sampler = LangevinSampler([z], step_size=0.1)
    closure = gaussian_closure(z, 0.0, 1.0)
    sampler.step(closure)
    first = z.clone()
    offset = sampler.offset
    sampler.reset()
    assert sampler.state[z]["step"] == 0 and torch.count_nonzero(sampler.state[z]["v"]) == 0
    assert sampler.offset == offset
    z.zero_()
    sampler.step(closure)
    assert not torch.equal(z, first)  # same start, same step index, fresh noise


def test_mala_argument_errors():
    z = torch.zeros(4, 2)
    sampler = LangevinSampler([z], step_size=0.1, mode="mala")
    with pytest.raises(ValueError, match="closure"):
        sampler.step()

    def wrong_shape():
        z.grad = torch.zeros_like(z)
        return torch.zeros(3)

    with pytest.raises(ValueError, match="shape"):
        sampler.step(wrong_shape)
    with pytest.raises(ValueError, match="leading"):
        LangevinSampler([z, torch.zeros(5)], step_size=0.1, mode="mala").step(lambda: torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        LangevinSampler([z], step_size=0.1, mode="mala", temperature=0.0)
    with pytest.raises(ValueError, match="mala"):
        LangevinSampler([z], step_size=0.1, adapt_step_size=True)


def test_mala_prior_grad_matches_the_full_gradient():
    """prior_grad=True (kernel adds z) is the same chain as passing the full gradient."""
    runs = []
    for prior_grad in (False, True):
        z = torch.linspace(-2, 2, 64).view(32, 2).clone()

        def closure(z=z, prior_grad=prior_grad):
            lik_grad = (z - 1.0) / 0.25
            z.grad = lik_grad if prior_grad else lik_grad + z
            return (0.5 * ((z - 1.0) ** 2 / 0.25 + z**2)).sum(1)

        sampler = LangevinSampler([z], step_size=0.15, mode="mala", prior_grad=prior_grad, seed=5)
        for _ in range(30):
            sampler.step(closure)
        runs.append((z.clone(), sampler.diagnostics.accepted))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "preconditioned", "freeze_preconditioner_after": 12},
        {"mode": "ula", "temperature": 0.5},
        {"mode": "mala", "adapt_step_size": True, "adaptation_window": 15},
        {"mode": "mala", "freeze_preconditioner_after": 5},
    ],
    ids=["preconditioned-freeze", "ula", "mala-adapt", "mala-precond"],
)
def test_state_dict_round_trip_continues_bit_identically(kwargs):
    def make(z):
        return LangevinSampler([z], step_size=0.3, seed=123, offset=7, **kwargs)

    z = torch.linspace(-3, 3, 40).view(20, 2).clone()
    sampler = make(z)
    for _ in range(10):
        sampler.step(gaussian_closure(z, 0.5, 0.8))
    buffer = io.BytesIO()
    torch.save({"z": z.clone(), "sampler": sampler.state_dict()}, buffer)
    for _ in range(10):
        sampler.step(gaussian_closure(z, 0.5, 0.8))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    z2 = saved["z"]
    resumed = make(z2)
    resumed.load_state_dict(copy.deepcopy(saved["sampler"]))
    for _ in range(10):
        resumed.step(gaussian_closure(z2, 0.5, 0.8))
    assert torch.equal(z, z2)
    assert resumed.offset == sampler.offset
    assert torch.equal(resumed.state[z2]["v"], sampler.state[z]["v"])
    if kwargs["mode"] == "mala":
        assert resumed.diagnostics.accepted == sampler.diagnostics.accepted
        assert resumed.step_scale() == sampler.step_scale()


# -- stationary laws -------------------------------------------------------------------------------------


def _target(dim: int):
    if dim == 1:
        return torch.tensor([1.5]), torch.tensor([0.7])
    return torch.linspace(-2.0, 2.0, dim), torch.logspace(math.log10(0.5), math.log10(2.0), dim)


@pytest.mark.statistical
@pytest.mark.parametrize("dim", [1, 100])
@pytest.mark.parametrize("mode", ["ula", "preconditioned"])
def test_stationary_law_of_the_discretised_chain(dim, mode):
    """Final states ~ N(mu, tau sigma^2 / (1 - a/2)), a = eta p / sigma^2, p from the frozen v (2 checks)."""
    mu, sigma = _target(dim)
    chains = 20_000 // dim
    tau = 1.0 if dim == 1 else 0.5
    freeze = 100 if mode == "preconditioned" else None
    eta = 0.1 if mode == "ula" and dim == 1 else 0.15 if mode == "ula" else 0.1
    z = torch.zeros(chains, dim)
    sampler = LangevinSampler(
        [z], step_size=eta, mode=mode, temperature=tau, freeze_preconditioner_after=freeze, seed=2024
    )
    closure = gaussian_closure(z, mu, sigma)
    for _ in range(700):
        sampler.step(closure)
    a = eta * sampler.preconditioner(z).double() / sigma.double() ** 2
    # Design checks, not statistics: stable and fast enough that 600 frozen steps forget the start
    # ((1 - 0.02)^600 < 1e-5 of an initial offset of a few sigma).
    assert 0.02 < a.min() and a.max() < 1.0
    var = tau * sigma.double() ** 2 / (1 - a / 2)
    assert_standard_normal((z.double() - mu) / var.sqrt(), f"{mode} {dim}-D")
    # The discretisation bias is visible at this sample size (the test can tell it from tau sigma^2).
    if mode == "ula" and dim == 1:
        assert (var / (tau * sigma**2) - 1).min() > 2 * Z5 * math.sqrt(2 / chains)


@pytest.mark.statistical
def test_mala_removes_the_discretisation_bias():
    """a = 1.5: ULA's stationary variance would be 4 sigma^2; MALA's must be sigma^2 (2 checks)."""
    mu, sigma = 1.5, 0.7
    z = torch.zeros(20_000, 1)
    sampler = LangevinSampler([z], step_size=1.5 * sigma**2, mode="mala", seed=77, record_diagnostics=True)
    closure = gaussian_closure(z, mu, sigma)
    for _ in range(300):
        sampler.step(closure)
    assert 0.3 < sampler.diagnostics.acceptance_rate < 0.95
    assert_standard_normal((z - mu) / sigma, "MALA 1-D")
    rates = sampler.diagnostics.chain_acceptance_rate()
    assert rates.shape == (20_000,) and sampler.last_accept.shape == (20_000,)
    assert len(sampler.diagnostics.energy) == 300 and len(sampler.diagnostics.grad_norm) == 300


@pytest.mark.statistical
def test_preconditioned_mala_is_exact_on_an_anisotropic_target():
    """Frozen preconditioner after 50 adaptive steps, then MH: exact N(mu, diag sigma^2) (2 checks)."""
    mu, sigma = torch.linspace(-1.0, 1.0, 10), torch.logspace(-1.0, 0.5, 10)
    z = torch.zeros(2_000, 10)
    sampler = LangevinSampler([z], step_size=0.3, mode="mala", freeze_preconditioner_after=50, seed=9)
    closure = gaussian_closure(z, mu, sigma)
    for _ in range(400):
        sampler.step(closure)
    assert sampler.diagnostics.proposed == 350 * 2_000
    assert_standard_normal((z - mu) / sigma, "preconditioned MALA 10-D")


@pytest.mark.statistical
@pytest.mark.parametrize("start", [0.01, 20.0])
def test_dual_averaging_reaches_the_target_acceptance(start):
    """From a step 100x too small or 10x too large, the adapted step accepts 0.574 +- 0.05.

    Not a z-score test: the mean acceptance of 2000 chains over 100 steps has a standard error < 0.005, so
    the 0.05 band is the adaptation's own accuracy, which Hoffman & Gelman's scheme meets well within.
    """
    sigma = 0.7
    z = torch.zeros(2_000, 1)
    sampler = LangevinSampler(
        [z], step_size=start * sigma**2, mode="mala", adapt_step_size=True, adaptation_window=300, seed=31
    )
    closure = gaussian_closure(z, 0.0, sigma)
    for _ in range(400):
        sampler.step(closure)
    scales = list(sampler.diagnostics.step_scale)
    assert len(set(scales[300:])) == 1  # fixed after the window
    after = sum(list(sampler.diagnostics.accept_prob)[300:]) / 100
    assert abs(after - 0.574) < 0.05, after


# -- probabilistic PCA -------------------------------------------------------------------------------------


def _ppca(chains: int):
    g = torch.Generator().manual_seed(0)
    d_x, d_z, s = 8, 3, 0.5
    w = 0.5 * torch.randn(d_x, d_z, generator=g, dtype=torch.float64)
    bias = torch.randn(d_x, generator=g, dtype=torch.float64)
    linear = nn.Linear(d_z, d_x)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    model = LatentModel(
        nn.Sequential(linear, nn.Unflatten(1, (1, 1, d_x))),
        GaussianLikelihood(s, mean_activation="identity"),
        d_z,
        (1, 1, d_x),
    )
    z_true = torch.randn(chains, d_z, generator=g, dtype=torch.float64)
    x = z_true @ w.T + bias + s * torch.randn(chains, d_x, generator=g, dtype=torch.float64)
    precision = torch.eye(d_z, dtype=torch.float64) + w.T @ w / s**2
    post_mean = torch.linalg.solve(precision, (w.T @ (x - bias).T) / s**2).T
    return model, x.float().view(chains, 1, 1, d_x), precision, post_mean


def _whitened_checks(r: torch.Tensor, cov: torch.Tensor, what: str) -> None:
    """Residuals r ~ N(0, cov): whitened means and covariance entries at Z5 (d + d(d+1)/2 checks)."""
    n, d = r.shape
    u = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), r.T, upper=False).T
    for i in range(d):
        z_mean = u[:, i].mean().item() * math.sqrt(n)
        assert abs(z_mean) < Z5, f"{what}: mean {i} off by {z_mean:.2f} s.e."
    emp = (u.T @ u) / n
    for i in range(d):
        for j in range(i + 1):
            se = math.sqrt((2.0 if i == j else 1.0) / n)
            z_cov = (emp[i, j].item() - (1.0 if i == j else 0.0)) / se
            assert abs(z_cov) < Z5, f"{what}: covariance ({i},{j}) off by {z_cov:.2f} s.e."


@pytest.mark.statistical
@pytest.mark.parametrize("mode", ["ula", "mala"])
def test_ppca_posterior(mode):
    """Linear-Gaussian decoder: posterior N(M^-1 W^T (x - b) / s^2, M^-1), M = I + W^T W / s^2.

    ULA's stationary law keeps the exact mean and has covariance M^-1 (I - eta M / 2)^-1 (the matrix form of
    sigma^2 / (1 - a/2)); MALA's covariance is M^-1 itself. Uses the model's autograd energy (9 checks).
    """
    chains = 4_000
    model, x, precision, post_mean = _ppca(chains)
    lam_max = torch.linalg.eigvalsh(precision).max().item()
    eta = (0.5 if mode == "ula" else 1.2) / lam_max
    z = torch.zeros(chains, 3, requires_grad=True)
    sampler = LangevinSampler([z], step_size=eta, mode=mode, seed=99)

    def closure():
        sampler.zero_grad()
        energies = model.energy(z, x)
        energies.sum().backward()
        return energies.detach()

    for _ in range(400):
        sampler.step(closure)
    eye = torch.eye(3, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    if mode == "ula":
        cov = cov @ torch.linalg.inv(eye - eta * precision / 2)
    _whitened_checks(z.detach().double() - post_mean, cov, f"PPCA {mode}")


# -- diagnostics ---------------------------------------------------------------------------------------------


def _ar1(phi: float, t: int, c: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(t, c, k, dtype=torch.float64)
    s = torch.randn(c, k, generator=g, dtype=torch.float64) / math.sqrt(1 - phi**2)
    for i in range(t):
        s = phi * s + torch.randn(c, k, generator=g, dtype=torch.float64)
        x[i] = s
    return x


def test_split_rhat():
    mixed = _ar1(0.0, 1000, 8, 20, seed=1)
    assert split_rhat(mixed).shape == (20,)
    # For i.i.d. draws R-hat - 1 has standard deviation ~ 4e-4 here; 1.01 is > 20 of them.
    assert split_rhat(mixed).max() < 1.01
    stuck = mixed + torch.tensor([-3.0, 3.0] * 4, dtype=torch.float64).view(1, 8, 1)
    assert split_rhat(stuck).min() > 1.1
    # A drift inside every chain: identical chains, so only splitting them can reveal it.
    trend = mixed + torch.linspace(0, 4, 1000, dtype=torch.float64).view(-1, 1, 1)
    assert split_rhat(trend).min() > 1.1


def test_effective_sample_size():
    """AR(1) with coefficient phi: ESS / N -> (1 - phi) / (1 + phi).

    The estimator's relative standard deviation is ~4% per quantity here (measured once), so the mean over
    20 quantities has ~1% error: the 6% band is > 5 of those, plus the small truncation bias.
    """
    for phi in (0.0, 0.5):
        x = _ar1(phi, 2000, 4, 20, seed=2)
        ratio = effective_sample_size(x) / (2000 * 4)
        assert ratio.shape == (20,)
        expected = (1 - phi) / (1 + phi)
        assert abs(ratio.mean().item() / expected - 1) < 0.06, (phi, ratio.mean().item())


@pytest.mark.statistical
def test_sampler_chains_mix_by_rhat():
    """Sampler traces on a Gaussian from over-dispersed starts: split-R-hat < 1.01 once mixed."""
    z = torch.linspace(-10, 10, 16).view(16, 1).repeat(1, 4).contiguous()
    sampler = LangevinSampler([z], step_size=0.3, mode="ula", seed=4)
    closure = gaussian_closure(z, 0.0, 1.0)
    trace = []
    for _ in range(1100):
        sampler.step(closure)
        trace.append(z.clone())
    samples = torch.stack(trace)  # [T, C, 4]
    assert split_rhat(samples[100:]).max() < 1.01
    assert split_rhat(samples[:10]).min() > 1.1  # still remembering the starts


@pytest.mark.statistical
def test_weight_decay_stationary_law_of_ula_on_the_pure_prior():
    """grad = 0 and weight_decay = lambda: ULA on the prior N(0, 1/lambda) is
    z' = (1 - eta lambda) z + sqrt(2 eta tau) xi, stationary N(0, tau / (lambda (1 - eta lambda / 2)))
    (4 checks: two latents, so the multi-tensor op; false-alarm rate at most 4 * 5.7e-7).

    eta lambda = 0.4: 200 steps shrink the start (z = 3) by 0.6^200 < 1e-44; the discretisation bias
    (a variance 1.25 times tau / lambda) is far beyond the checks' resolution, so the test tells the
    exact discretised law from the continuous one."""
    lam, eta, tau, chains = 4.0, 0.1, 0.5, 10_000
    zs = [torch.full((chains, 1), 3.0), torch.full((chains,), 3.0, dtype=torch.float64)]
    for z in zs:
        z.grad = torch.zeros_like(z)
    sampler = LangevinSampler(zs, lr=eta, temperature=tau, weight_decay=lam, seed=2026)
    for _ in range(200):
        sampler.step()
    var = tau / (lam * (1 - eta * lam / 2))
    assert var / (tau / lam) - 1 > 2 * Z5 * math.sqrt(2 / chains)
    for i, z in enumerate(zs):
        assert_standard_normal(z.double() / math.sqrt(var), f"latent {i}")
