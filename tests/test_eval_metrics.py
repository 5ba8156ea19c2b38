"""Evaluation metrics against closed forms (probabilistic PCA, Gaussian samples) and their plumbing.

False-alarm rates are stated where a check is statistical; seeds are fixed for reproducibility only.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from lpc_fast.data import ImageDataset, load_dataset
from lpc_fast.eval import (
    PROPOSAL_WIDEN,
    FeatureSpace,
    TorchScriptFeatures,
    bits_per_dim,
    default_feature_space,
    density_coverage,
    elbo,
    evaluate_model,
    fit_gaussian_proposal,
    frechet_distance,
    gaussian_proposal,
    importance_log_likelihood,
    kernel_distance,
    sample_quality,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LPC_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tests run many tiny ops: on a shared 2-core machine, one thread avoids spin-wait stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PPCA:
    """Linear-Gaussian model x = W z + b + sigma eps, z ~ N(0, I), images [1, 2, 2] (D_x = 4)."""

    image_shape = (1, 2, 2)

    def __init__(
        self,
        seed: int = 0,
        latent_dim: int = 2,
        sigma: float = 0.3,
        widen: float = 1.0,
        w_scale: float = 0.5,
        orthogonal: bool = False,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.latent_dim = latent_dim
        self.dx = 4
        self.W = w_scale * torch.randn(self.dx, latent_dim, generator=g, dtype=DTYPE)
        if orthogonal:
            # Orthogonal columns make the posterior covariance diagonal: then a diagonal Gaussian
            # proposal can equal the exact posterior up to the widening.
            q, _ = torch.linalg.qr(self.W)
            self.W = q * (w_scale * (1.0 + torch.rand(latent_dim, generator=g, dtype=DTYPE)))
        self.b = torch.full((self.dx,), 0.5, dtype=DTYPE)
        self.sigma = sigma
        self.widen = widen
        self.encoder = object()  # non-None: the model has an (exact-posterior) encoder
        eye = torch.eye(latent_dim, dtype=DTYPE)
        self.post_cov = torch.linalg.inv(eye + self.W.T @ self.W / sigma**2)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.dx, dtype=DTYPE)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(
            x.reshape(x.shape[0], -1).double()
        )

    def post_mean(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1).double() - self.b) @ self.W @ self.post_cov.T / self.sigma**2

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r = x.reshape(x.shape[0], -1).double() - z @ self.W.T - self.b
        log_lik = -0.5 * r.square().sum(1) / self.sigma**2 - self.dx * (
            math.log(self.sigma) + 0.5 * math.log(2 * math.pi)
        )
        log_prior = -0.5 * z.square().sum(1) - 0.5 * self.latent_dim * math.log(2 * math.pi)
        return log_lik + log_prior

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The exact posterior's marginal stds (a diagonal approximation), widened.
        mu = self.post_mean(x)
        log_sigma = (self.post_cov.diagonal().sqrt() * self.widen).log().expand_as(mu)
        return mu, log_sigma

    def posterior_samples(self, x: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        chol = torch.linalg.cholesky(self.post_cov)
        eps = torch.randn(t, x.shape[0], self.latent_dim, generator=generator, dtype=DTYPE)
        return self.post_mean(x) + eps @ chol.T

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W.T + self.b).reshape(z.shape[0], *self.image_shape).float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=DTYPE)
        x = z @ self.W.T + self.b + self.sigma * torch.randn(n, self.dx, generator=generator, dtype=DTYPE)
        return x.reshape(n, *self.image_shape).float()


def _ppca_data(model: PPCA, n: int, seed: int) -> torch.Tensor:
    return model.sample(n, torch.Generator().manual_seed(seed)).double()


# ---------------------------------------------------------------- importance sampling


def _check_against_exact(lp, se, exact):
    err = lp - exact
    # The mean error over B points, in units of its standard error: |z| > 3 with probability 0.27%.
    assert abs(err.mean().item()) < 3 * se.square().sum().sqrt().item() / len(err)
    # Per point: 4 se (20 points: family-wise false alarm ~1.3e-3) and an absolute 0.05 nats.
    assert (err.abs() < 4 * se).all(), err / se
    assert err.abs().max().item() < 0.05


@pytest.mark.statistical
def test_is_matches_ppca_marginal_with_widened_posterior():
    model = PPCA(seed=1, widen=PROPOSAL_WIDEN, orthogonal=True)
    x = _ppca_data(model, 20, seed=2)
    mu, log_sigma = model.encode(x)
    lp, se = importance_log_likelihood(
        model.log_joint,
        gaussian_proposal(mu, log_sigma),
        x,
        num_samples=1000,
        batch_size=128,
        generator=torch.Generator().manual_seed(3),
    )
    assert lp.dtype == torch.float64 and lp.shape == (20,) and se.shape == (20,)
    assert (se > 0).all() and (se < 0.05).all()
    _check_against_exact(lp, se, model.exact_log_px(x))


@pytest.mark.statistical
def test_is_matches_ppca_marginal_with_fitted_chain_proposal():
    model = PPCA(seed=4, orthogonal=True)
    x = _ppca_data(model, 20, seed=5)
    g = torch.Generator().manual_seed(6)
    mu, log_sigma = fit_gaussian_proposal(model.posterior_samples(x, 300, g))
    assert mu.shape == (20, 2)
    lp, se = importance_log_likelihood(
        model.log_joint, gaussian_proposal(mu, log_sigma), x, num_samples=1000, generator=g
    )
    _check_against_exact(lp, se, model.exact_log_px(x))


def test_is_is_exact_with_the_exact_posterior():
    # One latent dimension: the diagonal Gaussian *is* the posterior, every weight equals p(x).
    model = PPCA(seed=7, latent_dim=1)
    x = _ppca_data(model, 5, seed=8)
    mu, log_sigma = model.encode(x)
    lp, se = importance_log_likelihood(model.log_joint, gaussian_proposal(mu, log_sigma), x, num_samples=10)
    torch.testing.assert_close(lp, model.exact_log_px(x), rtol=0, atol=1e-9)
    assert se.max() < 1e-6


@pytest.mark.statistical
def test_elbo_matches_closed_form_and_lies_below_is():
    model = PPCA(seed=1, widen=PROPOSAL_WIDEN)
    x = _ppca_data(model, 20, seed=9)
    mu, log_sigma = model.encode(x)
    g = torch.Generator().manual_seed(10)
    k = 2000
    el = elbo(model.log_joint, mu, log_sigma, x, k, generator=g)
    lp, _ = importance_log_likelihood(
        model.log_joint, gaussian_proposal(mu, log_sigma), x, num_samples=1000, generator=g
    )
    # ELBO = log p(x) - KL(q || posterior), both Gaussian: closed form.
    q = torch.distributions.MultivariateNormal(mu, torch.diag_embed(log_sigma.exp().square()))
    post = torch.distributions.MultivariateNormal(model.post_mean(x), model.post_cov)
    kl = torch.distributions.kl_divergence(q, post)
    # Per-point Monte-Carlo sd of the ELBO from the spread of the log weights: 4 sd per point.
    z, log_q = gaussian_proposal(mu, log_sigma)(k, g)
    w = model.log_joint(x.repeat(k, 1, 1, 1), z.reshape(-1, 2)).reshape(k, -1) - log_q
    sd = w.std(dim=0) / math.sqrt(k)
    assert ((el - (model.exact_log_px(x) - kl)).abs() < 4 * sd).all()
    assert (el < lp).all()  # the gap is KL >= 0.07 nats here against ~0.01 of noise


@pytest.mark.statistical
def test_standard_error_is_calibrated():
    # Repeat the estimate with fresh noise: the spread across repeats should match the reported se.
    # With 40 repeats the sample sd has relative sd ~0.11; the window [0.6, 1.5] is ~4 of those
    # (the delta-method se is itself approximate; over 80 ratios from other draws: 0.73..1.39).
    model = PPCA(seed=11, widen=1.6)
    x = _ppca_data(model, 4, seed=12)
    mu, log_sigma = model.encode(x)
    prop = gaussian_proposal(mu, log_sigma)
    g = torch.Generator().manual_seed(13)
    runs = [
        importance_log_likelihood(model.log_joint, prop, x, num_samples=200, generator=g) for _ in range(40)
    ]
    lps = torch.stack([r[0] for r in runs])
    ses = torch.stack([r[1] for r in runs])
    ratio = lps.std(dim=0) / ses.mean(dim=0)
    assert ((ratio > 0.6) & (ratio < 1.5)).all(), ratio


def test_is_argument_checks():
    mu = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="B, D"):
        gaussian_proposal(mu, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least 2"):
        importance_log_likelihood(
            lambda x, z: z.sum(1), gaussian_proposal(mu, mu), torch.zeros(3, 4), num_samples=1
        )
    with pytest.raises(ValueError, match=r"tensor \[B\]"):
        importance_log_likelihood(lambda x, z: z, gaussian_proposal(mu, mu), torch.zeros(3, 4), num_samples=4)
    with pytest.raises(ValueError, match="T >= 2"):
        fit_gaussian_proposal(torch.zeros(1, 3, 2))
    mu_f, ls_f = fit_gaussian_proposal(torch.tensor([[[0.0]], [[2.0]]]))  # std of {0, 2} is sqrt(2)
    torch.testing.assert_close(ls_f.exp(), torch.tensor([[math.sqrt(2.0) * PROPOSAL_WIDEN]]))
    torch.testing.assert_close(mu_f, torch.tensor([[1.0]]))


def test_bits_per_dim_conventions():
    d = 64
    # A uniform pmf over L levels scores exactly log2(L) bits/dim.
    assert bits_per_dim(d * math.log(17), d, 17) == pytest.approx(math.log2(17))
    # A uniform density on [0, 1] (nll 0) on a grid of spacing 1/(L-1) is a pmf of 1/(L-1) per pixel.
    assert bits_per_dim(0.0, d, 256, continuous=True) == pytest.approx(math.log2(255))
    torch.testing.assert_close(bits_per_dim(torch.tensor([math.log(2.0) * d]), d), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        bits_per_dim(1.0, d, None, continuous=True)


# ---------------------------------------------------------------- distances between feature sets


def _gauss(n, d, seed, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE) + shift


def test_frechet_closed_form_and_self_distance():
    a = _gauss(500, 6, 0)
    assert frechet_distance(a, a) < 1e-9
    # 1-D: (mu_a - mu_b)^2 + (s_a - s_b)^2 with the unbiased sample std.
    x, y = _gauss(300, 1, 1), 2.0 * _gauss(300, 1, 2) + 1.0
    expect = (x.mean() - y.mean()).item() ** 2 + (x.std() - y.std()).item() ** 2
    assert frechet_distance(x, y) == pytest.approx(expect, rel=1e-9)
    # Against scipy's general sqrtm of the (non-symmetric) product, numpy input.
    import scipy.linalg

    rng = np.random.default_rng(0)
    xa = rng.standard_normal((2000, 3)) @ rng.standard_normal((3, 3))
    xb = rng.standard_normal((2000, 3)) * np.array([1.0, 2.0, 3.0]) + 0.3
    ca, cb = np.cov(xa, rowvar=False), np.cov(xb, rowvar=False)
    expect = np.sum((xa.mean(0) - xb.mean(0)) ** 2) + np.trace(ca) + np.trace(cb)
    expect -= 2.0 * np.real(np.trace(scipy.linalg.sqrtm(ca @ cb)))
    assert frechet_distance(xa, xb) == pytest.approx(expect, rel=1e-8)


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.ones(x.shape[1], 1, 3, 3, dtype=x.dtype) / 9.0
    return torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1]
    )


def test_frechet_grows_with_corruption():
    images = load_dataset("digits", "test").images
    feats = images.flatten(1).double()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    noisy = [frechet_distance(feats, (images + s * noise).flatten(1)) for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert noisy[0] < 1e-9 and all(a < b for a, b in zip(noisy, noisy[1:])), noisy
    blurred, x = [], images
    for _ in range(4):
        blurred.append(frechet_distance(feats, x.flatten(1)))
        x = _box_blur(x)
    assert blurred[0] < 1e-9 and all(a < b for a, b in zip(blurred, blurred[1:])), blurred


@pytest.mark.statistical
def test_kernel_distance_same_and_different_distribution():
    a, b = _gauss(2000, 8, 0), _gauss(2000, 8, 1)
    kid, kid_std = kernel_distance(a, b, num_subsets=50, subset_size=500)
    # The subset spread bounds the spread of the mean over subsets: |kid| < 3 kid_std fails with
    # probability well under 0.3%.
    assert kid_std > 0 and abs(kid) < 3 * kid_std
    far, far_std = kernel_distance(a, _gauss(2000, 8, 2, shift=0.5), num_subsets=50, subset_size=500)
    assert far > 10 * kid_std and far > 5 * far_std


@pytest.mark.statistical
def test_density_coverage_same_distribution():
    n, k = 2000, 5
    real, fake = _gauss(n, 8, 3), _gauss(n, 8, 4)
    density, coverage = density_coverage(real, fake, k=k)
    # E[density] = 1 for one distribution; over 20 independent draws at this size the sd was 0.017,
    # so 0.06 is a ~3.5 sd window (two-sided false alarm ~5e-4).
    assert abs(density - 1.0) < 0.06
    # E[coverage] = 1 - prod_{i=1..k} (N - i) / (2N - i) = 0.969 (not 1); measured sd 0.0042, so
    # 0.02 is ~4.7 sd.
    expect = 1.0 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    assert abs(coverage - expect) < 0.02
    d_far, c_far = density_coverage(real, _gauss(n, 8, 5, shift=1.5), k=k)
    assert d_far < 0.5 and c_far < 0.6


# ---------------------------------------------------------------- feature spaces


@pytest.fixture(scope="module")
def digits_train():
    return load_dataset("digits", "train")


def test_default_feature_space_trains_caches_and_names(digits_train, tmp_path):
    fs = default_feature_space(digits_train, steps=40)
    assert re.fullmatch(r"digits-cnn-v1:[0-9a-f]{12}", fs.name)
    f1 = fs(digits_train.images[:50])
    assert f1.shape == (50, 128) and torch.isfinite(f1).all()
    files = list((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(files) == 1
    again = default_feature_space(digits_train, steps=40)  # loaded, not retrained
    assert again.name == fs.name and torch.equal(again(digits_train.images[:50]), f1)
    blob = torch.load(files[0], weights_only=True)
    blob["sha256"] = "0" * 64
    torch.save(blob, files[0])
    with pytest.warns(UserWarning, match="do not match their SHA-256"):
        retrained = default_feature_space(digits_train, steps=40)
    assert retrained.name == fs.name  # training is deterministic given the seed
    other = default_feature_space(digits_train, steps=41)
    assert other.name != fs.name
    with pytest.raises(ValueError, match="takes images"):
        fs(torch.zeros(2, 1, 9, 9))


def test_feature_space_variants_for_factor_and_unlabelled_data():
    shapes = load_dataset("shapes32", "train", num_examples=64)
    fs = default_feature_space(shapes, steps=3)
    assert (
        fs.name.startswith("shapes32-cnn-v1:") and fs.net.regress is not None and fs.net.classify is not None
    )
    unlabelled = ImageDataset(shapes.images, None, num_levels=256, name="npz:/x/y.npz", split="train")
    fs2 = default_feature_space(unlabelled, steps=3)
    assert fs2.net.decode is not None and fs2.net.classify is None
    assert fs2(shapes.images[:3]).shape == (3, 128)


def test_torchscript_features(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    path = tmp_path / "feat.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    fs = TorchScriptFeatures(path, input_size=16, channels=3, scale="symmetric")
    assert re.fullmatch(r"torchscript:feat\.pt:[0-9a-f]{12}", fs.name)
    x = torch.rand(5, 1, 8, 8)
    expect = net(
        torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear") * 2 - 1
    )
    torch.testing.assert_close(fs(x), expect.flatten(1))
    with pytest.raises(FileNotFoundError):
        TorchScriptFeatures(tmp_path / "missing.pt")


def test_inception_features_load_a_pytorch_fid_state_dict(tmp_path):
    from lpc_fast.eval import FIDInceptionV3, InceptionFeatures

    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = dict(net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # ignored
    path = tmp_path / "pt_inception-test.pth"
    torch.save(state, path)
    fs = InceptionFeatures(path)
    assert re.fullmatch(r"inception-fid:[0-9a-f]{12}", fs.name)
    x = torch.rand(2, 1, 28, 28)
    f = fs(x)
    assert f.shape == (2, 2048) and (f >= 0).all()  # pooled ReLU outputs
    expect = net.eval()(
        torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear") * 2 - 1
    )
    torch.testing.assert_close(f, expect)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        InceptionFeatures(path)


def test_sample_quality_reports_everything(digits_train):
    fs = default_feature_space(digits_train, steps=40)
    test = load_dataset("digits", "test").images
    same = sample_quality(test, test, fs, kid_subsets=10, kid_subset_size=100)
    assert set(same) >= {"fid", "kid", "kid_std", "density", "coverage", "feature_space"}
    assert same["feature_space"] == fs.name and same["fid"] < 1e-6 and same["coverage"] == 1.0
    g = torch.Generator().manual_seed(0)
    noisy = (test + 0.3 * torch.randn(test.shape, generator=g)).clamp(0, 1)
    worse = sample_quality(test, noisy, fs, kid_subsets=10, kid_subset_size=100)
    assert worse["fid"] > same["fid"] and worse["kid"] > 0


# ---------------------------------------------------------------- evaluate_model


class _Flatten(FeatureSpace):
    name = "pixels"

    def _forward(self, images):
        return images.flatten(1)


@pytest.mark.parametrize("with_encoder", [True, False])
def test_evaluate_model_on_ppca(with_encoder):
    # Small scales keep the data inside [0, 1], where generated images are clamped.
    model = PPCA(seed=21, widen=PROPOSAL_WIDEN, sigma=0.03, w_scale=0.1)
    x = _ppca_data(model, 300, seed=22).float()
    data = ImageDataset(x, None, num_levels=None, name="ppca", split="test")
    chain_fn = None
    if not with_encoder:
        model.encoder = None
        g_chain = torch.Generator().manual_seed(23)
        chain_fn = lambda xb: model.posterior_samples(xb, 200, g_chain)  # noqa: E731
    out = evaluate_model(
        model,
        data,
        num_is_samples=300,
        num_eval_points=60,
        num_generated=300,
        feature_space=_Flatten(),
        generator=torch.Generator().manual_seed(24),
        chain_fn=chain_fn,
        batch_size=25,
    )
    exact_nll = -model.exact_log_px(x[:60]).mean().item()
    assert out["nll_se"] > 0
    assert abs(out["nll_nats"] - exact_nll) < max(4 * out["nll_se"], 0.01)
    assert out["bits_per_dim"] == pytest.approx(out["nll_nats"] / (4 * math.log(2)))
    if with_encoder:
        assert out["elbo"] is not None and out["elbo"] < -out["nll_nats"]
        assert out["proposal"] == "encoder"
    else:
        assert out["elbo"] is None and out["proposal"] == "chain-fit"
    recon = (model.decode_mean(model.post_mean(x[:60])) - x[:60]).square().mean().item()
    assert out["recon_mse"] == pytest.approx(recon, rel=0.05 if not with_encoder else 1e-5)
    assert out["feature_space"] == "pixels"
    for key in ("fid", "kid", "density", "coverage"):
        assert math.isfinite(out[key])
    # Model samples and test data come from one distribution (clamping aside): small distances.
    assert out["fid"] < 0.01 and 0.7 < out["density"] < 1.3


def test_evaluate_model_needs_chain_fn_without_encoder():
    model = PPCA()
    model.encoder = None
    data = ImageDataset(torch.zeros(4, 1, 2, 2), None, num_levels=None, name="ppca", split="test")
    with pytest.raises(ValueError, match="chain_fn"):
        evaluate_model(model, data, feature_space=_Flatten())


class _DigitsStandIn:
    """Encoder-bearing stand-in whose samples are noisy digits (for the default feature-space path)."""

    latent_dim = 64
    encoder = object()

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def encode(self, x):
        return x.flatten(1).double(), torch.full((x.shape[0], 64), math.log(0.1), dtype=DTYPE)

    def log_joint(self, x, z):
        # x | z ~ N(z, 0.1^2 I), z ~ N(0, I): any valid joint will do here.
        r = x.flatten(1).double() - z
        return -0.5 * (r.square().sum(1) / 0.01 + z.square().sum(1)) - 64 * (
            math.log(0.1) + math.log(2 * math.pi)
        )

    def decode_mean(self, z):
        return z.reshape(-1, 1, 8, 8).float()

    def sample(self, n, generator=None):
        idx = torch.randint(0, self.images.shape[0], (n,), generator=generator)
        return self.images[idx] + 0.05 * torch.randn(n, 1, 8, 8, generator=generator)


def test_evaluate_model_default_feature_space_uses_the_training_split(monkeypatch, digits_train):
    import lpc_fast.eval.evaluate as ev

    seen = []

    def quick(dataset, **kwargs):
        seen.append((dataset.name, dataset.split, len(dataset)))
        return default_feature_space(dataset, steps=5)

    monkeypatch.setattr(ev, "default_feature_space", quick)
    test = load_dataset("digits", "test")
    out = evaluate_model(
        _DigitsStandIn(digits_train.images),
        test,
        num_is_samples=10,
        num_eval_points=20,
        num_generated=100,
        generator=torch.Generator().manual_seed(0),
    )
    assert seen == [("digits", "train", 1500)]
    assert out["feature_space"].startswith("digits-cnn-v1:")
    assert out["bits_per_dim"] == pytest.approx(out["nll_nats"] / (64 * math.log(2)))
    assert out["recon_mse"] < 1e-12  # decode_mean(encode mean) is the identity here


def test_make_feature_space_strings(tmp_path):
    from lpc_fast.eval import make_feature_space

    data = load_dataset("digits", "test")
    fs = _Flatten()
    assert make_feature_space(fs, data) is fs
    net = torch.nn.Flatten()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "f.pt"))
    assert make_feature_space(f"torchscript:{tmp_path / 'f.pt'}", data).name.startswith("torchscript:f.pt:")
    with pytest.raises(FileNotFoundError):
        make_feature_space(f"inception:{tmp_path / 'none.pth'}", data)
    with pytest.raises(ValueError, match="unknown feature space"):
        make_feature_space("clip", data)
