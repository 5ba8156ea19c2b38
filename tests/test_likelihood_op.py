"""The fused likelihood op ``lpc_fast::log_likelihood_grad`` and the lean chain pass built on it.

Every backend's op against the float64 reference (``pixel_log_likelihood_reference`` and
``torch.autograd`` of it), tails included; against 60-digit mpmath values far out in the tails,
where the reference's own autograd gradient loses accuracy; float32 against float64; autograd,
``torch.func`` and ``torch.compile`` through the likelihood modules; and the chain's
``energy_and_grad`` / ``accumulate_decoder_grad`` against autograd of the energy.
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import backend_param

import lpc_fast
from lpc_fast.dispatch import get_backend
from lpc_fast.models import ModelConfig, build_model
from lpc_fast.models.likelihoods import (
    LIKELIHOOD_KINDS,
    BernoulliLikelihood,
    DiscretisedGaussianLikelihood,
    GaussianLikelihood,
    pixel_log_likelihood_reference,
)

DG, GAUSS, BERN = (LIKELIHOOD_KINDS[k] for k in ("discretised_gaussian", "gaussian", "bernoulli"))


def _reference(x, out, log_sigma, kind, sigmoid, levels):
    """Per-point value, d/d out and per-point d/d log sigma by autograd of the reference (float64)."""
    o = out.detach().clone().requires_grad_(True)
    ls = torch.full((out.shape[0],), log_sigma, dtype=out.dtype, requires_grad=True)
    pixels = pixel_log_likelihood_reference(
        x, o, ls.view(-1, *([1] * (out.dim() - 1))), kind, sigmoid, levels
    )
    lp = pixels.reshape(out.shape[0], -1).sum(1)
    g_out, g_ls = torch.autograd.grad(lp.sum(), [o, ls], allow_unused=True)
    return lp.detach(), g_out, torch.zeros_like(ls) if g_ls is None else g_ls


def _grid(kind, sigmoid, levels):
    """Rows = data values (every level, or a spread in [0, 1]); columns = decoder outputs."""
    if sigmoid:  # the link saturates: m reaches the edges and every tail of the interior bins
        o = torch.linspace(-30.0, 30.0, 61, dtype=torch.float64)
    else:  # m in [-7, 5]: up to 300 sd from every level at sigma = 0.01
        o = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    xs = torch.arange(levels, dtype=torch.float64) / (levels - 1) if kind == DG else torch.linspace(0, 1, 7)
    xs = xs.to(torch.float64)
    return xs[:, None].expand(-1, o.numel()).contiguous(), o[None, :].expand(xs.numel(), -1).contiguous()


CASES = [
    (kind, sigmoid, levels, sigma)
    for kind, levels_list in ((DG, (2, 17, 256)), (GAUSS, (0,)), (BERN, (0,)))
    for sigmoid in ((True, False) if kind != BERN else (False,))
    for levels in levels_list
    for sigma in ((0.01, 0.1, 0.7) if kind != BERN else (0.1,))
]


def _backends():
    # The reference backend is the reference itself (autograd of the same formulas).
    return [backend_param("cpu"), backend_param("triton")]


@pytest.mark.parametrize("backend", _backends())
def test_float64_matches_the_reference_to_1e10(backend):
    """Value, d/d out and d/d log sigma of every backend within 1e-10 relative of the reference.

    d/d out is compared relative to max(|reference|, 1e-3 x its row's largest value): where the two
    ends of a bin contribute nearly equal densities the derivative is a small difference, whose
    absolute rounding (both here and in the reference) is set by the row's scale, not by itself.
    """
    op = get_backend(backend)._op("log_likelihood_grad")
    for kind, sigmoid, levels, sigma in CASES:
        x, o = _grid(kind, sigmoid, levels)
        ls = math.log(sigma)
        r_lp, r_g, r_gls = _reference(x, o, ls, kind, sigmoid, levels)
        case = (kind, sigmoid, levels, sigma)
        # Per-point sums over whole data rows: the grid's rows (one per level) in chunks of `per` rows
        # per point, which keeps the Triton interpreter's program count (its cost) small.
        rows, per = x.shape[0], 64 if backend == "triton" else 4
        idx = torch.arange(rows + (-rows) % per) % rows  # whole chunks, the first rows repeated
        xp = x[idx].reshape(-1, per * x.shape[1])
        op_ = o[idx].reshape(-1, per * o.shape[1])
        lp, g, gls = op(xp, op_, None, ls, kind, sigmoid, levels)
        p_lp, _, p_gls = _reference(xp, op_, ls, kind, sigmoid, levels)
        assert torch.all((lp - p_lp).abs() <= 1e-10 * p_lp.abs()), case
        assert torch.all((gls - p_gls).abs() <= 1e-10 * p_gls.abs().clamp_min(1e-300)), case
        g = g.reshape(-1, x.shape[1])[:rows]
        scale = torch.maximum(r_g.abs(), 1e-3 * r_g.abs().amax(1, keepdim=True))
        assert torch.all((g - r_g).abs() <= 1e-10 * scale), case
        del r_lp, r_gls


def _mp_discretised(x, o, sigma, levels, sigmoid):
    """log P and d log P / d o of one pixel in 60-digit arithmetic."""
    import mpmath

    mpmath.mp.dps = 60
    o = mpmath.mpf(o)
    link = 1 / (1 + mpmath.exp(-o)) if sigmoid else o
    d_link = link * (1 - link) if sigmoid else mpmath.mpf(1)
    m, s, k = 2 * link - 1, 2 * mpmath.mpf(sigma), levels - 1
    level = round(x * k)
    y, h = mpmath.mpf(2 * level) / k - 1, mpmath.mpf(1) / k
    lo, hi = (y - h - m) / s, (y + h - m) / s
    if level > 0 and (level == k or lo + hi > 0):  # the upper tail: P from the mirrored bounds
        upper = mpmath.mpf(0) if level == k else mpmath.ncdf(-hi)
        p = mpmath.ncdf(-lo) - upper
    else:
        p = mpmath.ncdf(hi) - (mpmath.mpf(0) if level == 0 else mpmath.ncdf(lo))
    pdf_lo = mpmath.mpf(0) if level == 0 else mpmath.npdf(lo)
    pdf_hi = mpmath.mpf(0) if level == k else mpmath.npdf(hi)
    return float(mpmath.log(p)), float(-(pdf_hi - pdf_lo) / s / p * 2 * d_link)


@pytest.mark.parametrize("backend", _backends())
def test_far_tails_match_high_precision_values(backend):
    """Thousands of sd out (the scaled erfcx forms): value and gradient within 1e-12 of mpmath.

    The reference's autograd gradient is not used here: log_ndtr's derivative there is
    exp(-x**2/2 - log_ndtr(x)), whose exponent cancels and loses ~eps x**2 (1e-9 at 3000 sd).
    """
    pytest.importorskip("mpmath")
    op = get_backend(backend)._op("log_likelihood_grad")
    points = [(0.5, 40.0), (0.5, -40.0), (0.0, 15.0), (1.0, -15.0), (0.25, 3.0), (0.75, -6.0)]
    for sigma in (0.01, 0.1):
        x = torch.tensor([[p[0]] for p in points], dtype=torch.float64)
        o = torch.tensor([[p[1]] for p in points], dtype=torch.float64)
        lp, g, _ = op(x, o, None, math.log(sigma), DG, False, 17)
        for i, (xv, ov) in enumerate(points):
            v, d = _mp_discretised(xv, ov, sigma, 17, False)
            assert lp[i].item() == pytest.approx(v, rel=1e-12), (xv, ov, sigma)
            assert g[i, 0].item() == pytest.approx(d, rel=1e-12), (xv, ov, sigma)


@pytest.mark.parametrize("backend", _backends())
def test_float32_is_float64_rounded(backend):
    """float32 (inline vectorised math on the CPU) within float32 rounding of the float64 op."""
    op = get_backend(backend)._op("log_likelihood_grad")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 7), generator=gen).double() / 255
    o = 3 * torch.randn(6, 3, 5, 7, generator=gen, dtype=torch.float64)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # edges and a far tail
    o[0, 0, 0, :3] = torch.tensor([25.0, -25.0, 30.0], dtype=torch.float64)
    for kind, sigmoid, levels in ((DG, True, 256), (DG, False, 17), (GAUSS, True, 0), (BERN, False, 0)):
        lp64, g64, gls64 = op(x, o, None, math.log(0.1), kind, sigmoid, levels)
        lp32, g32, gls32 = op(x.float(), o.float(), None, math.log(0.1), kind, sigmoid, levels)
        # Per point: ~300 pixels of float32 rounding (a few ulp each) summed in double.
        torch.testing.assert_close(lp32.double(), lp64, rtol=2e-6, atol=1e-4)
        # Per pixel: relative to the row's scale (differences of nearly equal terms lose digits).
        scale = g64.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
        assert torch.all((g32.double() - g64).abs() <= 1e-5 * scale + 1e-6 * g64.abs()), (kind, sigmoid)
        torch.testing.assert_close(gls32.double(), gls64, rtol=2e-5, atol=1e-3)


def test_modules_use_the_op_and_match_their_references():
    """log_prob of each likelihood module equals the reference summed per point (float64)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=gen).double() / 16
    out = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    mods = [
        (DiscretisedGaussianLikelihood(17, sigma=0.2), DG, True, 17),
        (DiscretisedGaussianLikelihood(17, mean_activation="identity"), DG, False, 17),
        (GaussianLikelihood(0.3), GAUSS, True, 0),
        (GaussianLikelihood(0.3, mean_activation="identity"), GAUSS, False, 0),
        (BernoulliLikelihood(), BERN, False, 0),
    ]
    for mod, kind, sigmoid, levels in mods:
        ls = getattr(mod, "_fixed_log_sigma", 0.0)
        expected = _reference(x, out, ls, kind, sigmoid, levels)
        torch.testing.assert_close(mod.log_prob(x, out), expected[0], rtol=1e-12, atol=0)
        lp, g, g_ls = mod.log_prob_and_grad(x, out)
        torch.testing.assert_close(lp, expected[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(g, expected[1], rtol=1e-9, atol=1e-12)
        assert g_ls is None  # sigma is fixed


@pytest.mark.parametrize("cls", [DiscretisedGaussianLikelihood, GaussianLikelihood])
def test_autograd_of_the_op_matches_gradcheck_and_refuses_second_order(cls):
    lik = cls(sigma=0.2, learn_sigma=True).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o: lik.log_prob(x, o), (out,))
    ls = lik.log_sigma.detach().double().requires_grad_(True)

    def via_log_sigma(v):
        lik.log_sigma.data.copy_(v)
        return lik.log_prob(x, out.detach())

    # The learned log sigma: its gradient (float32 parameter) against the float64 reference.
    lp = lik.log_prob(x, out.detach())
    (g,) = torch.autograd.grad(lp.sum(), lik.log_sigma)
    kind = DG if cls is DiscretisedGaussianLikelihood else GAUSS
    expected = _reference(x, out.detach(), float(lik.log_sigma), kind, True, 256 if kind == DG else 0)[2]
    torch.testing.assert_close(g.double(), expected.sum(), rtol=1e-6, atol=1e-6)
    del via_log_sigma, ls
    (g_out,) = torch.autograd.grad(lik.log_prob(x, out).sum(), out, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives of the fused likelihood"):
        torch.autograd.grad(g_out.sum(), out)
    with pytest.raises(RuntimeError, match="x is not differentiable"):
        torch.autograd.grad(lik.log_prob(x.clone().requires_grad_(True), out).sum(), out)


def test_func_grad_and_compiled_log_prob():
    """torch.func.grad and torch.compile(fullgraph=True) go through the op (fake kernel, autograd)."""
    lik = DiscretisedGaussianLikelihood(17, sigma=0.1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=gen).float() / 16
    out = torch.randn(4, 1, 8, 8, generator=gen)

    def total(o):
        return lik.log_prob(x, o).sum()

    o = out.clone().requires_grad_(True)
    expected = torch.autograd.grad(total(o), o)[0]
    torch.testing.assert_close(torch.func.grad(total)(out), expected, rtol=0, atol=0)
    compiled = torch.compile(lambda xx, oo: lik.log_prob(xx, oo), fullgraph=True)
    torch.testing.assert_close(compiled(x, out), lik.log_prob(x, out), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "likelihood", ["discretised_gaussian", "gaussian", "gaussian_learned", "bernoulli"], ids=str
)
def test_energy_and_grad_and_decoder_grad_match_autograd(likelihood):
    """The chain's lean pass: E, ∇_z E and Σ_i ∇_θ E as autograd of LatentModel.energy gives them."""
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=5, mlp_hidden=(16,), likelihood=likelihood, use_encoder=False)
    model = build_model(cfg, (1, 4, 4), num_levels=17).double()
    x = torch.randint(0, 17, (6, 1, 4, 4)).double() / 16
    z = torch.randn(6, 5, dtype=torch.float64)
    zz = z.clone().requires_grad_(True)
    e = model.energy(zz, x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(e.sum(), [zz, *params])
    energy, g = model.energy_and_grad(z, x)
    torch.testing.assert_close(energy, e.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(g, grads[0], rtol=1e-10, atol=1e-12)
    e_noconst, _ = model.energy_and_grad(z, x, constant=False)
    torch.testing.assert_close(e_noconst + model.energy_constant(), energy, rtol=1e-14, atol=1e-12)
    model.zero_grad(set_to_none=True)
    model.accumulate_decoder_grad(z, x)
    for p, expected in zip(params, grads[1:]):
        torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12)
    model.zero_grad(set_to_none=True)
    _, g_acc = model.energy_and_grad(z, x, accumulate=True)
    torch.testing.assert_close(g_acc, grads[0], rtol=1e-10, atol=1e-12)
    for p, expected in zip(params, grads[1:]):
        torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_lean_chain_accumulates_the_kept_samples_decoder_gradient(architecture):
    """The trainer's lean chain sums ∇_θ E over exactly the kept samples: from the recorded passes
    after the chain (MLP decoder) or at each kept pass (conv decoder, autograd)."""
    from lpc_fast.data import load_dataset
    from lpc_fast.train import LPCTrainer, TrainConfig

    if architecture == "mlp":
        data = load_dataset("digits")
        model = ModelConfig(latent_dim=4, mlp_hidden=(16,), use_encoder=False)
    else:
        data = torch.randint(0, 256, (32, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 255
        model = ModelConfig(
            architecture="conv", conv_channels=(4, 4), conv_hidden=16, latent_dim=4, use_encoder=False
        )
    cfg = TrainConfig(
        dataset="digits",
        batch_size=8,
        num_langevin_steps=5,
        burn_in=2,
        warm_start="prior",
        seed=0,
        model=model,
    )
    trainer = LPCTrainer(cfg, data)
    x = trainer.next_batch()
    z0 = trainer.warm_start(x)
    for p in trainer.theta_params:
        p.grad = None
    chain = trainer.run_chain(x, z0)
    assert chain["samples"].shape == (3, 8, 4)
    got = [p.grad.clone() for p in trainer.theta_params]
    expected = [torch.zeros_like(p) for p in trainer.theta_params]
    for z in chain["samples"]:
        grads = torch.autograd.grad(trainer.model.energy(z, x).sum(), trainer.theta_params)
        expected = [e + g for e, g in zip(expected, grads)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    # The chain's energies include the prior's constant (added once after the chain).
    e_final = trainer.model.energy(chain["z"], x).mean().double()
    assert chain["energies"][-1].item() == pytest.approx(e_final.item(), rel=1e-5)


def test_op_argument_errors_name_the_argument():
    op = torch.ops.lpc_fast.log_likelihood_grad
    x = torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="x must have out's dtype"):
        op(x.double(), torch.rand(2, 3), None, 0.0, 0, True, 17)
    with pytest.raises(RuntimeError, match="kind must be 0"):
        op(x, torch.rand(2, 3), None, 0.0, 5, True, 17)
    with pytest.raises(RuntimeError, match="num_levels must be >= 2"):
        op(x, torch.rand(2, 3), None, 0.0, 0, True, 1)
    with pytest.raises(RuntimeError, match="out must be float32 or float64"):
        op(x.half(), torch.rand(2, 3).half(), None, 0.0, 0, True, 17)
    assert lpc_fast is not None
