"""Models: likelihood densities against independent formulas, per-data-point independence, shapes.

If per-data-point independence fails, the Langevin chains of one minibatch interact and LPC samples a
joint posterior that does not factorise over data points; if the discretised likelihood does not normalise,
reported log-likelihoods (nats, bits/dim) are not likelihoods.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import nn

from lpc_fast.models import (
    BernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    DiscretisedGaussianLikelihood,
    GaussianLikelihood,
    LatentModel,
    ModelConfig,
    StandardNormalPrior,
    build_model,
    log_normal_cdf_difference,
)

LIKELIHOOD_NAMES = ("gaussian", "gaussian_learned", "bernoulli", "discretised_gaussian")
SHAPES = {"mlp": ("mlp", (1, 8, 8)), "conv32": ("conv", (3, 32, 32)), "conv64": ("conv", (3, 64, 64))}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small tensors: a second OpenMP thread only adds contention on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _small_config(arch: str, likelihood: str, **kw) -> ModelConfig:
    return ModelConfig(architecture=arch, likelihood=likelihood, latent_dim=6, mlp_hidden=(32, 16), **kw)


# -- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("likelihood", LIKELIHOOD_NAMES)
def test_shapes(name, likelihood):
    arch, shape = SHAPES[name]
    model = build_model(_small_config(arch, likelihood), shape, num_levels=256)
    b = 3
    x = torch.rand(b, *shape)
    z = torch.randn(b, 6)
    assert model.decoder(z).shape == (b, *shape)
    assert model.energy(z, x).shape == (b,)
    assert model.log_likelihood(x, z).shape == (b,)
    assert model.log_joint(x, z).shape == (b,)
    mu, log_sigma = model.encode(x)
    assert mu.shape == log_sigma.shape == (b, 6)
    mean = model.decode_mean(z)
    assert mean.shape == (b, *shape) and mean.min() >= 0 and mean.max() <= 1
    for images in (model.sample(2), model.sample(2, from_likelihood=True)):
        assert images.shape == (2, *shape) and images.min() >= 0 and images.max() <= 1
    assert model.latent_dim == 6 and model.data_shape == shape


def test_beta_vae_layers_at_64():
    """64x64: Linear -> 256 -> 64x4x4, four stride-2 4x4 transposed convs with channels 64-64-32-32-C."""
    dec = ConvDecoder(10, (3, 64, 64))
    convs = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 64), (64, 32), (32, 32), (32, 3)]
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs)
    assert [m.out_features for m in dec.fc if isinstance(m, nn.Linear)] == [256, 64 * 16]
    enc = ConvEncoder((3, 64, 64), 10)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64), (64, 64)]
    assert all(c.stride == (2, 2) for c in convs)


def test_conv_rejects_unsupported_sizes_and_config_values():
    with pytest.raises(ValueError, match="side"):
        build_model(ModelConfig(architecture="conv"), (3, 48, 48))
    with pytest.raises(ValueError, match="square"):
        build_model(ModelConfig(architecture="conv"), (3, 32, 64))
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="resnet")
    with pytest.raises(ValueError, match="likelihood"):
        ModelConfig(likelihood="poisson")
    model = build_model(ModelConfig(use_encoder=False), (1, 8, 8))
    assert model.encoder is None
    with pytest.raises(RuntimeError, match="encoder"):
        model.encode(torch.rand(1, 1, 8, 8))


def test_no_batch_norm_anywhere():
    for arch, shape in SHAPES.values():
        model = build_model(ModelConfig(architecture=arch), shape)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_sample_is_reproducible_with_a_generator():
    model = build_model(_small_config("mlp", "discretised_gaussian"), (1, 8, 8), num_levels=17)
    a = model.sample(4, torch.Generator().manual_seed(3), from_likelihood=True)
    b = model.sample(4, torch.Generator().manual_seed(3), from_likelihood=True)
    assert torch.equal(a, b)
    # Discretised draws lie on the 17 levels.
    assert torch.equal(torch.round(a * 16) / 16, a)


# -- per-data-point independence ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("likelihood", LIKELIHOOD_NAMES)
def test_energy_is_per_data_point(name, likelihood):
    """Batch energy = singleton energies; chain b's gradient does not move when other rows of x change."""
    arch, shape = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(_small_config(arch, likelihood), shape).double()
    model.train()  # training mode is where BatchNorm would couple the rows
    b = 3
    x = torch.rand(b, *shape, dtype=torch.float64)
    z = torch.randn(b, 6, dtype=torch.float64, requires_grad=True)
    batch = model.energy(z, x)
    singles = torch.cat([model.energy(z[i : i + 1], x[i : i + 1]) for i in range(b)])
    torch.testing.assert_close(batch, singles, rtol=1e-12, atol=1e-9)
    (grad,) = torch.autograd.grad(batch.sum(), z)
    x2 = x.clone()
    x2[1:] = torch.rand(b - 1, *shape, dtype=torch.float64)
    (grad2,) = torch.autograd.grad(model.energy(z, x2).sum(), z)
    torch.testing.assert_close(grad2[0], grad[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(grad2[1:], grad[1:])


# -- likelihood densities ---------------------------------------------------------------------------------


def test_gaussian_matches_torch_distributions():
    torch.manual_seed(1)
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    out = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    for act, loc in (("identity", out), ("sigmoid", torch.sigmoid(out))):
        lik = GaussianLikelihood(0.3, mean_activation=act).double()
        ref = torch.distributions.Normal(loc, 0.3).log_prob(x).sum(dim=(1, 2, 3))
        torch.testing.assert_close(lik.log_prob(x, out), ref, rtol=1e-12, atol=1e-10)


def test_learned_sigma_is_a_shared_parameter():
    lik = GaussianLikelihood(0.2, learn_sigma=True).double()
    assert isinstance(lik.log_sigma, nn.Parameter) and lik.log_sigma.numel() == 1
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    out = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    lik.log_prob(x, out).sum().backward()
    # d/d log sigma of sum(-r^2/(2 s^2) - log s) = sum(r^2/s^2 - 1)
    r = x - torch.sigmoid(out)
    s2 = torch.exp(2 * lik.log_sigma.detach())  # the parameter's float32-rounded start value
    expected = (r * r / s2 - 1).sum()
    torch.testing.assert_close(lik.log_sigma.grad, expected, rtol=1e-10, atol=1e-10)
    model = build_model(ModelConfig(likelihood="gaussian_learned", latent_dim=4), (1, 4, 4))
    assert any(p is model.likelihood.log_sigma for p in model.parameters())
    fixed = build_model(ModelConfig(likelihood="gaussian", latent_dim=4), (1, 4, 4))
    assert not fixed.likelihood.learn_sigma and not list(fixed.likelihood.parameters())


def test_bernoulli_matches_torch_distributions():
    torch.manual_seed(2)
    logits = 3 * torch.randn(5, 1, 4, 4, dtype=torch.float64)
    x = torch.bernoulli(torch.full_like(logits, 0.4))
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(dim=(1, 2, 3))
    lik = BernoulliLikelihood()
    torch.testing.assert_close(lik.log_prob(x, logits), ref, rtol=1e-12, atol=1e-10)
    # Continuous targets: the cross-entropy x log s + (1 - x) log(1 - s).
    xc = torch.rand_like(logits)
    s = torch.sigmoid(logits)
    ref_c = (xc * torch.log(s) + (1 - xc) * torch.log1p(-s)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(lik.log_prob(xc, logits), ref_c, rtol=1e-10, atol=1e-8)
    assert torch.equal(lik.mean(logits), s)


@pytest.mark.parametrize("num_levels", [2, 17, 256])
@pytest.mark.parametrize("sigma", [1e-3, 0.05, 3.0])
def test_discretised_gaussian_sums_to_one(num_levels, sigma):
    """Over all levels of a pixel the probabilities sum to 1, for locations inside and outside [0, 1]."""
    lik = DiscretisedGaussianLikelihood(num_levels, sigma=sigma, mean_activation="identity").double()
    locs = torch.tensor([-0.7, 0.0, 0.013, 0.5, 0.98, 1.0, 1.6], dtype=torch.float64)
    levels = torch.arange(num_levels, dtype=torch.float64) / (num_levels - 1)
    x = levels.view(-1, 1).expand(-1, locs.numel())
    out = locs.view(1, -1).expand(num_levels, -1)
    logp = lik.log_prob_levels(x, out)
    assert torch.isfinite(logp).all()
    total = torch.logsumexp(logp, dim=0)
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-9)


def _mp_log_bin(lo: float, hi: float) -> float:
    """log(Phi(hi) - Phi(lo)) to 50 digits (mpmath), the independent oracle."""
    mpmath.mp.dps = 50
    if lo + hi > 0:  # the same mass from the lower tail, where ncdf keeps full relative precision
        lo, hi = -hi, -lo
    return float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))


def test_discretised_gaussian_bins_match_high_precision():
    """Interior and edge bins against mpmath, including far tails where naive CDF differences underflow."""
    lik = DiscretisedGaussianLikelihood(256, sigma=0.01, mean_activation="identity").double()
    s = 2 * 0.01
    w = 2 / 255
    cases = [(0.5, 0.5), (0.5, 0.52), (0.2, 0.9), (0.9, 0.1), (0.3, 0.301), (0.6, 0.0)]
    for x_val, loc in cases:
        x = torch.tensor([[x_val]], dtype=torch.float64)
        out = torch.tensor([[loc]], dtype=torch.float64)
        y = 2 * round(x_val * 255) / 255 - 1
        m = 2 * loc - 1
        expected = _mp_log_bin((y - w / 2 - m) / s, (y + w / 2 - m) / s)
        got = float(lik.log_prob_levels(x, out))
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (x_val, loc, got, expected)
    # Edge bins are half-lines.
    for x_val, loc in [(0.0, 0.9), (1.0, 0.1), (0.0, 0.0), (1.0, 1.0)]:
        x = torch.tensor([[x_val]], dtype=torch.float64)
        out = torch.tensor([[loc]], dtype=torch.float64)
        m = 2 * loc - 1
        if x_val == 0.0:
            expected = float(mpmath.log(mpmath.ncdf((-1 + w / 2 - m) / s)))
        else:
            expected = float(mpmath.log(mpmath.ncdf(-(1 - w / 2 - m) / s)))
        got = float(lik.log_prob_levels(x, out))
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (x_val, loc, got, expected)


def test_discretised_gaussian_gradients_are_finite_in_the_tails():
    lik = DiscretisedGaussianLikelihood(256, sigma=0.001, learn_sigma=True, mean_activation="identity")
    x = torch.tensor([[0.0, 1.0, 0.5, 0.5, 0.2]])
    out = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.2]], requires_grad=True)
    logp = lik.log_prob(x, out)
    assert torch.isfinite(logp).all()
    logp.sum().backward()
    assert torch.isfinite(out.grad).all() and torch.isfinite(lik.log_sigma.grad).all()
    # Moving the location toward the data raises the log-probability of far-off pixels.
    assert out.grad[0, 0] < 0 and out.grad[0, 1] > 0 and out.grad[0, 2] > 0 and out.grad[0, 3] < 0


def test_log_normal_cdf_difference_symmetry():
    lo = torch.tensor([-40.0, -3.0, 2.0, 35.0], dtype=torch.float64)
    hi = lo + 0.5
    a = log_normal_cdf_difference(lo, hi)
    b = log_normal_cdf_difference(-hi, -lo)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    for i in range(4):
        assert math.isclose(float(a[i]), _mp_log_bin(float(lo[i]), float(hi[i])), rel_tol=1e-10)


def test_prior():
    prior = StandardNormalPrior()
    z = torch.randn(4, 5, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(prior.log_prob(z), ref, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    assert prior.sample(7, 5, g).shape == (7, 5)


# -- linear-Gaussian model -------------------------------------------------------------------------------


def _linear_gaussian_model(w: torch.Tensor, bias: torch.Tensor, sigma: float) -> LatentModel:
    d_x, d_z = w.shape
    linear = nn.Linear(d_z, d_x).double()
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    decoder = nn.Sequential(linear, nn.Unflatten(1, (1, 1, d_x)))
    lik = GaussianLikelihood(sigma, mean_activation="identity").double()
    return LatentModel(decoder, lik, d_z, (1, 1, d_x))


def test_linear_gaussian_energy_and_gradient_closed_form():
    """E = |x - Wz - b|^2/(2 s^2) + |z|^2/2 + D log s + (D + d)/2 log 2 pi.

    dE/dz = -W^T (x - Wz - b) / s^2 + z.
    """
    g = torch.Generator().manual_seed(4)
    d_x, d_z, sigma = 7, 3, 0.4
    w = torch.randn(d_x, d_z, generator=g, dtype=torch.float64)
    bias = torch.randn(d_x, generator=g, dtype=torch.float64)
    model = _linear_gaussian_model(w, bias, sigma)
    x = torch.randn(5, d_x, generator=g, dtype=torch.float64)
    z = torch.randn(5, d_z, generator=g, dtype=torch.float64, requires_grad=True)
    energy = model.energy(z, x.view(5, 1, 1, d_x))
    r = x - z.detach() @ w.T - bias
    expected = (r * r).sum(1) / (2 * sigma**2) + (z.detach() ** 2).sum(1) / 2
    expected = expected + d_x * math.log(sigma) + (d_x + d_z) / 2 * math.log(2 * math.pi)
    torch.testing.assert_close(energy, expected, rtol=1e-12, atol=1e-10)
    (grad,) = torch.autograd.grad(energy.sum(), z)
    torch.testing.assert_close(grad, -r @ w / sigma**2 + z.detach(), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("num_levels", [2, 17, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
def test_discretised_gaussian_two_log_ndtr_form_is_bit_identical(num_levels, dtype, activation):
    """The two-``log_ndtr`` form (used for dtypes other than float32/float64) gives the four-evaluation
    form's values and gradients exactly.

    Outputs span the sigmoid's saturation (location exactly at -1 or 1) and every level, edges included.
    """
    gen = torch.Generator().manual_seed(num_levels)
    lik = DiscretisedGaussianLikelihood(num_levels, sigma=0.1, learn_sigma=True, mean_activation=activation)
    lik = lik.to(dtype)
    x = torch.randint(0, num_levels, (16, 3, 8, 8), generator=gen).to(dtype) / (num_levels - 1)
    scale = torch.tensor([0.1, 3.0, 40.0, 120.0], dtype=dtype).repeat(4).view(16, 1, 1, 1)
    out = torch.randn(16, 3, 8, 8, generator=gen, dtype=dtype) * scale
    if activation == "identity":
        out = torch.tanh(out) * 0.999
    weights = torch.linspace(0.5, 1.5, x.numel(), dtype=dtype).view_as(x)
    results = []
    for fn in (lik._log_prob_levels_two_log_ndtr, lik.log_prob_levels_reference):
        o = out.clone().requires_grad_(True)
        lik.zero_grad(set_to_none=True)
        value = fn(x, o)
        (value * weights).sum().backward()
        results.append((value.detach(), o.grad, lik.log_sigma.grad.clone()))
    for new, ref in zip(*results):
        assert torch.equal(new, ref)
    assert torch.isfinite(results[0][1]).all()


def _grid_case(num_levels: int, dtype: torch.dtype, activation: str, sigma: float):
    """Every level (edges included) against locations in the bulk, on the edges and far out in both tails.

    Inputs are float32-representable, so a float32 and a float64 evaluation see the same numbers and their
    difference is evaluation error only.
    """
    gen = torch.Generator().manual_seed(num_levels)
    levels = torch.arange(num_levels, dtype=torch.float64) / (num_levels - 1)
    if activation == "sigmoid":
        # sigmoid(+-40) is exactly 0 or 1 in float32: locations exactly on the edges
        raw = torch.cat(
            [torch.randn(61, generator=gen, dtype=torch.float64) * 3, torch.tensor([-40.0, 40.0])]
        )
    else:
        raw = torch.cat([torch.linspace(-1.3, 1.3, 61, dtype=torch.float64), torch.tensor([-1.0, 1.0])])
    x = levels.view(-1, 1).expand(-1, raw.numel()).reshape(1, 1, num_levels, -1)
    out = raw.float().double().view(1, -1).expand(num_levels, -1).reshape(1, 1, num_levels, -1)
    lik = DiscretisedGaussianLikelihood(num_levels, sigma=sigma, learn_sigma=True, mean_activation=activation)
    return lik, x, out


def _value_and_grads(lik, fn_name, x, out, dtype):
    lik = lik.to(dtype)
    lik.zero_grad(set_to_none=True)
    o = out.to(dtype).clone().requires_grad_(True)
    value = getattr(lik, fn_name)(x.to(dtype), o)
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=dtype).view_as(value)
    (value * weights).sum().backward()
    return [t.detach().double() for t in (value, o.grad, lik.log_sigma.grad)]


@pytest.mark.parametrize("num_levels", [2, 17, 256])
@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
@pytest.mark.parametrize("sigma", [0.004, 0.1, 2.0])
def test_discretised_gaussian_default_matches_float64_reference(num_levels, activation, sigma):
    """The erfc/hand-differentiated default agrees with the reference form in float64 (value, d/d out,
    d/d log sigma), in float64 to rounding and in float32 at least as closely as the reference itself.

    sigma = 0.004 puts bins up to 2 / (2 * 0.004) = 250 sd from the location (the scaled erfcx tail; the
    sampled locations reach |a| ~ 40 and beyond), 0.1 is the usual setting and 2.0 gives bins narrow against
    s, where P = Phi(b) - Phi(a) cancels most.
    """
    lik, x, out = _grid_case(num_levels, torch.float64, activation, sigma)
    want = _value_and_grads(lik, "log_prob_levels_reference", x, out, torch.float64)
    got64 = _value_and_grads(lik, "log_prob_levels", x, out, torch.float64)
    for g, w in zip(got64, want):
        assert torch.isfinite(g).all()
        # Both are float64 evaluations of the same quantity by different formulas; 1e-9 relative is
        # ~10^7 ulp of headroom for cancellation in the narrowest bins yet far below any real error.
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    got32 = _value_and_grads(lik, "log_prob_levels", x, out, torch.float32)
    ref32 = _value_and_grads(lik, "log_prob_levels_reference", x, out, torch.float32)
    for name, g, r, w in zip(("value", "grad out", "grad log sigma"), got32, ref32, want):
        assert torch.isfinite(g).all(), name
        # float32: no better than its inputs allow. The bound is the reference's own float32 error (the
        # path this replaces, with the same rounding of the inputs), doubled, plus 2 ulp of the largest
        # entry: edge bins with Phi(b) ~ 1 have log values ~ -1e-7 that both forms get only to ~1e-8
        # absolute, and the sum of ulp-level differences must not be judged by relative error.
        bound = 2 * (r - w).abs().max() + 2 * torch.finfo(torch.float32).eps * w.abs().max()
        assert (g - w).abs().max() <= bound, (name, float((g - w).abs().max()), float(bound))


def test_discretised_gaussian_far_tails_match_high_precision():
    """Bins 10 to 40 sd below the location (|a| up to ~40), where erfc underflows, against mpmath."""
    lik = DiscretisedGaussianLikelihood(256, sigma=0.05, mean_activation="identity")
    s, w = 0.1, 2 / 255
    locs = [0.5 + 0.05 * d for d in (10.0, 13.0, 20.0, 30.0, 39.0)]
    x = torch.full((1, len(locs)), 0.5)
    y = 2 * round(0.5 * 255) / 255 - 1
    for dtype, rel in ((torch.float64, 1e-9), (torch.float32, 3e-6)):
        # float32: the location's rounding moves a by ~1e-7 * 40 relative to |a|; the value ~ a**2 / 2
        # inherits ~2 * 40 * 6e-8 relative, so 3e-6 is the precision of the inputs, not of the formulas.
        out = torch.tensor([locs], dtype=dtype)
        got = lik.to(dtype).log_prob_levels(x.to(dtype), out)
        for i, loc in enumerate(locs):
            m = 2 * float(out[0, i]) - 1
            expected = _mp_log_bin((y - w / 2 - m) / s, (y + w / 2 - m) / s)
            assert math.isclose(float(got[0, i]), expected, rel_tol=rel), (
                dtype,
                loc,
                float(got[0, i]),
                expected,
            )


@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
def test_discretised_gaussian_default_gradcheck(activation):
    """Finite differences of the default path in float64, in the bulk, on the edges and in the tails."""
    lik = DiscretisedGaussianLikelihood(17, sigma=0.05, learn_sigma=True, mean_activation=activation).double()
    x = (torch.arange(17, dtype=torch.float64) / 16).repeat(3).view(1, 1, 3, 17)
    if activation == "sigmoid":
        out = torch.linspace(-4.0, 4.0, 51, dtype=torch.float64).view(1, 1, 3, 17)
    else:
        out = torch.linspace(-1.2, 1.2, 51, dtype=torch.float64).view(1, 1, 3, 17)
    out.requires_grad_(True)

    # log sigma is a parameter: check its derivative by swapping in a tensor that gradcheck perturbs
    assert torch.autograd.gradcheck(lambda o: lik.log_prob_levels(x, o), (out,))
    ls = lik.log_sigma.detach().clone().requires_grad_(True)

    def via_log_sigma(log_sigma):
        saved = lik.log_sigma
        try:
            del lik.log_sigma
            lik.log_sigma = log_sigma
            return lik.log_prob_levels(x, out.detach())
        finally:
            del lik.log_sigma
            lik.log_sigma = saved

    assert torch.autograd.gradcheck(via_log_sigma, (ls,))


def test_discretised_gaussian_second_derivatives_raise_and_func_grad_works():
    """The hand-derived backward is first order: a second derivative must fail loudly (not treat the slopes
    as constants), while first-order uses that build a graph (``torch.func.grad``, create_graph) work."""
    lik = DiscretisedGaussianLikelihood(256, sigma=0.1, learn_sigma=True).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out.requires_grad_(True)
    (g,) = torch.autograd.grad(lik.log_prob(x, out).sum(), out, create_graph=True)
    # log_prob runs the fused op (lpc_fast::log_likelihood_grad), whose backward is first order too.
    with pytest.raises(RuntimeError, match="second derivatives of the fused likelihood"):
        torch.autograd.grad(g.sum(), out)
    (g_ls,) = torch.autograd.grad(lik.log_prob(x, out).sum(), lik.log_sigma, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(g_ls, out)

    def total(o):
        return lik.log_prob(x, o).sum()

    expected = torch.autograd.grad(total(out), out)[0]
    torch.testing.assert_close(torch.func.grad(total)(out.detach()), expected, rtol=0, atol=0)


def test_discretised_gaussian_level_cache_follows_the_data():
    """The level data of the last x is reused only for that very tensor, unmodified: another tensor, an
    in-place change or another dtype recomputes it, and the module still pickles and deep-copies."""
    import copy
    import pickle

    lik = DiscretisedGaussianLikelihood(17, sigma=0.1)
    fresh = DiscretisedGaussianLikelihood(17, sigma=0.1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    out = torch.randn(4, 1, 8, 8, generator=gen)

    def check(xx, oo):
        fresh._level_cache = None
        torch.testing.assert_close(lik.log_prob_levels(xx, oo), fresh.log_prob_levels(xx, oo), rtol=0, atol=0)

    check(x, out)
    first = lik._level_cache[3]
    check(x, out + 1.0)  # same x: the cached tensors are reused
    assert lik._level_cache[3] is first
    x.mul_(0.5)  # modified in place: recomputed
    check(x, out)
    assert lik._level_cache[3] is not first
    check(x.clone(), out)  # an equal but different tensor: recomputed (identity, not value, is the key)
    check(x.double(), out.double())  # another dtype
    for clone in (pickle.loads(pickle.dumps(lik)), copy.deepcopy(lik)):
        assert clone._level_cache is None
        torch.testing.assert_close(clone.log_prob_levels(x, out), lik.log_prob_levels(x, out), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16)])
def test_conv_decoder_channels_last_path_matches_the_contiguous_one(shape):
    """On the CPU the decoder runs its transposed convs in channels_last: same values and gradients as the
    plain layout up to float rounding (float64 here, so 1e-12 is far above the rounding of either path and
    far below any layout or indexing mistake), and a contiguous output."""
    torch.manual_seed(0)
    dec = ConvDecoder(6, shape, channels=(8, 8, 4, 4), hidden=16).double()
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    out = dec(z)
    assert out.is_contiguous() and out.shape == (5, *shape)
    h = dec.fc(z).reshape(5, dec.first_channels, 4, 4)
    plain = dec.convs(h)  # the contiguous-layout path
    assert plain.is_contiguous()
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    g_cl = torch.autograd.grad((out * w).sum(), [z, *dec.parameters()])
    g_plain = torch.autograd.grad((plain * w).sum(), [z, *dec.parameters()])
    for a, b in zip(g_cl, g_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    dec.channels_last_on_cpu = False  # the plain layout, exactly
    torch.testing.assert_close(dec(z), plain, rtol=0, atol=0)
