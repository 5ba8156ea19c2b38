"""Trainers, configuration and checkpoints (LPC.md §3).

Expectations come from closed forms (probabilistic PCA: the maximum-likelihood subspace is the top
principal subspace of the sample covariance), from a direct recomputation of what the algorithm says
(the decoder gradient is the mean of ∇_θ E over the kept samples) or from an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

import lpc_fast
from lpc_fast.models import ModelConfig, build_model
from lpc_fast.train import (
    CheckpointError,
    ConfigError,
    LPCTrainer,
    TrainConfig,
    VAETrainer,
    load_checkpoint,
    load_latest,
    make_trainer,
    save_checkpoint,
)
from lpc_fast.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, decode_checkpoint, encode_checkpoint
from lpc_fast.train.distributed import DistContext
from lpc_fast.train.lpc import encoder_objective

# -- data and models --------------------------------------------------------------------------------

D_OBS, D_LAT, PPCA_SIGMA = 8, 2, 0.3


def ppca_data(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x = W z + mu + sigma eps with well separated singular values of W; images [n, 1, 1, 8]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_OBS, D_LAT, generator=g))
    w = q * torch.tensor([3.0, 1.5])
    mu = torch.randn(D_OBS, generator=g)
    z = torch.randn(n, D_LAT, generator=g)
    x = z @ w.T + mu + PPCA_SIGMA * torch.randn(n, D_OBS, generator=g)
    return x.reshape(n, 1, 1, D_OBS), w


def ppca_model_config(use_encoder: bool = False, hidden: tuple[int, ...] = ()) -> ModelConfig:
    return ModelConfig(
        latent_dim=D_LAT,
        mlp_hidden=hidden,
        likelihood="gaussian",
        sigma=PPCA_SIGMA,
        mean_activation="identity",
        use_encoder=use_encoder,
    )


def principal_angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    s = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(s))


def tiny_digits_config(**kw) -> TrainConfig:
    base = dict(
        steps=5,
        batch_size=16,
        num_langevin_steps=4,
        model=ModelConfig(latent_dim=4, mlp_hidden=(16,)),
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: threading only adds overhead, and on a shared machine oversubscription is costly.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    from lpc_fast.data import load_dataset

    return load_dataset("digits")


def params_of(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# -- configuration ----------------------------------------------------------------------------------


def test_config_json_round_trip_is_exact():
    cfg = TrainConfig(
        method="pc",
        steps=7,
        encoder_lr=3e-4,
        num_langevin_steps=None,
        warm_start="prior",
        model=ModelConfig(latent_dim=5, mlp_hidden=(7, 9), likelihood="bernoulli"),
    )
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.model.mlp_hidden, tuple)


def test_config_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="stepz"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="model.latent_dimension"):
        TrainConfig.from_dict({"model": {"latent_dimension": 3}})
    with pytest.raises(ConfigError, match="--lr"):
        TrainConfig.from_dict({"lr": "fast"})


def test_chain_length_default_depends_on_warm_start():
    assert TrainConfig(warm_start="encoder").chain_length == lpc_fast.train.DEFAULT_T_ENCODER == 20
    assert TrainConfig(warm_start="prior").chain_length == lpc_fast.train.DEFAULT_T_PRIOR == 300
    assert TrainConfig(warm_start="zeros", num_langevin_steps=7).chain_length == 7
    assert TrainConfig(method="pc", temperature=1.0).chain_temperature == 0.0


@pytest.mark.parametrize(
    ("kw", "option"),
    [
        ({"burn_in": 5, "num_langevin_steps": 5}, "--burn-in"),
        ({"beta": 1.5}, "--beta"),
        ({"steps": 0}, "--steps"),
    ],
)
def test_config_validation_names_the_option(kw, option):
    with pytest.raises(ConfigError, match=option):
        TrainConfig(**kw).validate()


# -- the algorithm ----------------------------------------------------------------------------------


def test_decoder_gradient_is_the_mean_over_kept_samples(digits):
    """T + 1 passes; the accumulated θ-gradient equals Σ_{t=B+1..T} ∇_θ E(z_t) recomputed directly."""
    cfg = tiny_digits_config(num_langevin_steps=5, burn_in=2, warm_start="prior")
    trainer = LPCTrainer(cfg, digits)
    x = trainer.next_batch()
    z0 = trainer.warm_start(x)
    calls = []
    energy = trainer.model.energy

    def counting(z, xx):
        calls.append(1)
        return energy(z, xx)

    trainer._energy = counting
    for p in trainer.theta_params:
        p.grad = None
    chain = trainer.run_chain(x, z0)
    assert len(calls) == cfg.chain_length + 1
    assert chain["samples"].shape == (cfg.chain_length - cfg.burn_in, x.shape[0], trainer.latent_dim)
    assert torch.equal(chain["samples"][-1], chain["z"])  # the final sample is kept
    got = [p.grad.clone() for p in trainer.theta_params]
    expected = [torch.zeros_like(p) for p in trainer.theta_params]
    for z in chain["samples"]:
        grads = torch.autograd.grad(energy(z, x).sum(), trainer.theta_params)
        expected = [e + g for e, g in zip(expected, grads)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_lpc_recovers_the_ppca_principal_subspace():
    """LPC on PPCA data: the decoder's column space converges to the MLE (top principal) subspace."""
    x, _ = ppca_data()
    flat = x.reshape(x.shape[0], -1)
    cov = torch.cov(flat.T.double())
    evecs = torch.linalg.eigh(cov).eigenvectors[:, -D_LAT:]
    cfg = TrainConfig(
        steps=300,
        batch_size=100,
        lr=2e-2,
        num_langevin_steps=20,
        langevin_step_size=0.5,
        warm_start="zeros",
        seed=1,
        model=ppca_model_config(),
    )
    trainer = LPCTrainer(cfg, x)
    w0 = trainer.model.decoder.net[0].weight.detach().clone()
    before = principal_angles_deg(w0, evecs).max()
    for _ in range(cfg.steps):
        trainer.train_step()
    w = trainer.model.decoder.net[0].weight.detach()
    angles = principal_angles_deg(w, evecs)
    assert before > 20.0  # a random start is far from the answer
    # Measured: under 0.5 degrees after 300 steps; the margin absorbs Monte-Carlo gradient noise.
    assert angles.max() < 3.0, f"principal angles {angles.tolist()} degrees"


@pytest.mark.parametrize("objective", ["forward_kl", "reverse_kl", "jeffreys"])
def test_encoder_objectives_move_the_encoder_to_the_chain(objective):
    """With θ fixed, each objective lowers its loss and brings q's mean to the chain's sample mean.

    PPCA's posterior is Gaussian, so forward KL (moment matching) and reverse KL both put q's mean
    at the posterior mean, which the long chain's average estimates.
    """
    x, w = ppca_data(n=256, seed=2)
    cfg = TrainConfig(
        steps=1,
        batch_size=64,
        num_langevin_steps=300,
        burn_in=100,
        langevin_step_size=0.05,
        warm_start="zeros",
        encoder_objective=objective,
        seed=4,
        model=ppca_model_config(use_encoder=True),  # linear encoder: exact for a Gaussian posterior
    )
    trainer = LPCTrainer(cfg, x)
    with torch.no_grad():  # the true decoder: a concentrated posterior, so the chain mean is precise
        lin = trainer.model.decoder.net[0]
        lin.weight.copy_(w)
        lin.bias.copy_(x.reshape(x.shape[0], -1).mean(0))
    xb = trainer.next_batch()
    chain = trainer.run_chain(xb, trainer.warm_start(xb), accumulate=False)
    samples = chain["samples"]
    target = samples.mean(0)
    opt = torch.optim.Adam(trainer.phi_params, lr=3e-2)
    g = torch.Generator().manual_seed(0)

    def loss_and_distance():
        eps = torch.randn(xb.shape[0], D_LAT, generator=g)
        loss, _ = encoder_objective(trainer.model, xb, samples, eps, objective)
        mu, _ = trainer.model.encode(xb)
        return loss, (mu - target).norm(dim=1).mean()  # mean distance of q's mean to the chain's

    for p in trainer.theta_params:
        p.requires_grad_(False)
    with torch.no_grad():
        loss0, dist0 = loss_and_distance()
    for _ in range(400):
        opt.zero_grad()
        loss, _ = loss_and_distance()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss1, dist1 = loss_and_distance()
    assert loss1 < loss0
    # The chain mean carries Monte-Carlo error (posterior sd <= 0.2, a few dozen effective samples).
    assert dist1 < 0.1 * dist0 and dist1 < 0.15, (float(dist0), float(dist1))


def test_encoder_step_leaves_the_decoder_untouched(digits):
    cfg = tiny_digits_config(encoder_objective="jeffreys")
    trainer = LPCTrainer(cfg, digits)
    x = trainer.next_batch()
    chain = trainer.run_chain(x, trainer.warm_start(x), accumulate=False)
    before = [p.detach().clone() for p in trainer.theta_params]
    for p in trainer.theta_params:
        p.grad = None
    trainer._encoder_step(x, chain["samples"])
    assert all(p.grad is None for p in trainer.theta_params)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.theta_params))


def test_vae_and_pc_train_and_count_decoder_evaluations(digits):
    vae = VAETrainer(tiny_digits_config(method="vae", steps=3), digits)
    m = [vae.train_step() for _ in range(3)][-1]
    assert m["decoder_grad_evals_step"] == 1 and m["decoder_grad_evals"] == 3
    assert math.isfinite(m["loss"]) and m["seconds"] > 0
    pc = make_trainer(tiny_digits_config(method="pc", encoder_objective="forward_kl"), digits)
    m = pc.train_step()
    assert m["decoder_grad_evals_step"] == pc.config.chain_length + 1
    lpc = make_trainer(tiny_digits_config(encoder_objective="jeffreys"), digits)
    assert lpc.train_step()["decoder_grad_evals_step"] == lpc.config.chain_length + 2


def test_training_is_deterministic_given_the_seed(digits):
    a = make_trainer(tiny_digits_config(), digits)
    b = make_trainer(tiny_digits_config(), digits)
    for _ in range(3):
        a.train_step()
        b.train_step()
    assert all(torch.equal(params_of(a)[k], v) for k, v in params_of(b).items())


def _cpu_backend_available() -> tuple[bool, str]:
    for row in lpc_fast.backends():
        if row.name == "cpu":
            return bool(row.available), row.reason
    return False, "no 'cpu' backend registered"


def test_fused_and_reference_backends_give_the_same_trajectory(digits):
    ok, reason = _cpu_backend_available()
    if not ok:
        pytest.skip(f"C++ CPU extension not available: {reason}")
    runs = {}
    for backend in ("cpu", "reference"):
        trainer = make_trainer(tiny_digits_config(backend=backend, steps=5), digits)
        losses = [trainer.train_step()["loss"] for _ in range(5)]
        runs[backend] = (params_of(trainer), losses)
    # Same uint32 noise; normals agree to float rounding (relative 1e-5), so the runs agree closely.
    for k, v in runs["cpu"][0].items():
        torch.testing.assert_close(v, runs["reference"][0][k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(runs["cpu"][1]), torch.tensor(runs["reference"][1]), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize("method", ["lpc", "vae"])
def test_restored_trainer_continues_bit_for_bit(digits, method, tmp_path):
    cfg = tiny_digits_config(method=method, steps=6)
    full = make_trainer(cfg, digits)
    for _ in range(6):
        full.train_step()
    first = make_trainer(cfg, digits)
    for _ in range(3):
        first.train_step()
    save_checkpoint({"trainer": first.state_dict()}, tmp_path)
    second = make_trainer(cfg, digits)
    second.load_state_dict(load_checkpoint(tmp_path / CHECKPOINT_NAME)["trainer"])
    for _ in range(3):
        second.train_step()
    want = params_of(full)
    assert all(torch.equal(want[k], v) for k, v in params_of(second).items())


# -- chain loop modes and optimizer -------------------------------------------------------------------


def _trajectory(digits, **kw) -> tuple[list[float], dict[str, torch.Tensor]]:
    trainer = make_trainer(tiny_digits_config(steps=3, **kw), digits)
    losses = [trainer.train_step()["loss"] for _ in range(3)]
    return losses, params_of(trainer)


def test_eager_loop_mode_matches_the_sampler_trajectory(digits):
    want_losses, want = _trajectory(digits)  # loop_mode="sampler"
    losses, got = _trajectory(digits, loop_mode="eager")
    # Same noise, samples and accumulated sum; the sampler mode's chain differentiates the MLP decoder
    # by hand and forms the decoder gradient from the recorded passes after the chain, the loop by
    # autograd at every pass: only float32 rounding differs (as for the compiled loop below), far
    # below the ~lr per step that a wrong noise offset, sample set or scale would move an entry.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want_losses), rtol=1e-6, atol=0)
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-5)


def test_compile_loop_mode_matches_the_sampler_trajectory(digits):
    want_losses, want = _trajectory(digits)
    losses, got = _trajectory(digits, loop_mode="compile")
    # Same noise, kernels, accumulation and optimizer: only the compiled decoder's float32 rounding
    # differs (relative ~1e-7 per pass). Adam moves an entry by at most lr = 1e-3 per step and the
    # rounding barely changes its direction, so parameters agree far below lr (measured: 1.5e-8);
    # a wrong noise offset, sample set or gradient scale would move entries by ~lr.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want_losses), rtol=1e-6, atol=0)
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-5)


def test_loop_mode_is_checked_against_device_processes_and_policy(digits):
    with pytest.raises(ConfigError, match="--loop-mode: cuda_graph needs a CUDA device .*cpu"):
        make_trainer(tiny_digits_config(loop_mode="cuda_graph", device="cpu"), digits)
    with pytest.raises(ConfigError, match="--loop-mode: compile runs one process"):
        make_trainer(tiny_digits_config(loop_mode="compile"), digits, dist=DistContext(world_size=2))
    with pytest.raises(ConfigError, match="--loop-mode: --nonfinite-policy reset needs --loop-mode sampler"):
        tiny_digits_config(loop_mode="eager", nonfinite_policy="reset").validate()


def test_fused_adam_is_used_where_supported_and_falls_back_otherwise(digits, monkeypatch):
    trainer = make_trainer(tiny_digits_config(), digits)
    assert trainer.opt_theta.defaults["fused"] and trainer.opt_phi.defaults["fused"]
    assert trainer.optimizer_description == "optimizer: fused Adam"
    real = torch.optim.Adam

    def adam_without_fused(params, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be of supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", adam_without_fused)
    trainer = make_trainer(tiny_digits_config(), digits)
    assert not trainer.opt_theta.defaults["fused"] and "not supported" in trainer.optimizer_description
    assert math.isfinite(trainer.train_step()["loss"])


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_keeps_previous_and_detects_corruption(tmp_path):
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, tmp_path)
    save_checkpoint({"step": 2, "w": torch.arange(4.0) * 2}, tmp_path)
    assert load_checkpoint(tmp_path / PREVIOUS_NAME)["step"] == 1
    state, path = load_latest(tmp_path)
    assert state["step"] == 2 and path.name == CHECKPOINT_NAME
    # Flip one byte of a tensor (torch.load itself would not notice): the checksum catches it and
    # the previous checkpoint is used.
    data = bytearray((tmp_path / CHECKPOINT_NAME).read_bytes())
    at = bytes(data).find((torch.arange(4.0) * 2).numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0xFF
    (tmp_path / CHECKPOINT_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    with pytest.warns(UserWarning, match="checksum"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == PREVIOUS_NAME
    # A truncated previous one too: no valid checkpoint is an error naming both problems.
    (tmp_path / PREVIOUS_NAME).write_bytes((tmp_path / PREVIOUS_NAME).read_bytes()[:30])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no valid checkpoint"):
            load_latest(tmp_path)
    assert load_latest(tmp_path / "empty") is None
    blob = encode_checkpoint({"a": 1})
    assert decode_checkpoint(blob) == {"a": 1}
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        decode_checkpoint(b"garbage")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the existing checkpoint intact and no temporary file behind."""
    save_checkpoint({"step": 1}, tmp_path)
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2}, tmp_path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 1


def test_ppca_model_is_linear_gaussian():
    """The PPCA test above relies on mlp_hidden=() + identity mean being exactly x ~ N(Wz + b, σ²)."""
    model = build_model(ppca_model_config(), (1, 1, D_OBS))
    z = torch.randn(3, D_LAT)
    x = torch.randn(3, 1, 1, D_OBS)
    lin = model.decoder.net[0]
    mean = (z @ lin.weight.T + lin.bias).reshape(3, 1, 1, D_OBS)
    log_lik = torch.distributions.Normal(mean, PPCA_SIGMA).log_prob(x).sum((1, 2, 3))
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(model.energy(z, x), -(log_lik + log_prior), rtol=1e-5, atol=1e-4)


def test_conv_lpc_trajectory_follows_the_previous_likelihood_path():
    """A small conv LPC run with the default (erfc, hand-differentiated) likelihood tracks the
    branch-by-branch one to float32 rounding, and the two-``log_ndtr`` form equals it exactly."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 8, 8), generator=gen).float() / 255.0
    images[:, 0, :2] = 0.0  # edge levels at both ends
    images[:, 1, :2] = 1.0
    cfg = TrainConfig(
        batch_size=8,
        num_langevin_steps=3,
        model=ModelConfig(architecture="conv", conv_channels=(8, 8), conv_hidden=16, latent_dim=4),
        seed=1,
    )
    new, two, previous = make_trainer(cfg, images), make_trainer(cfg, images), make_trainer(cfg, images)
    lik = previous.model.likelihood
    lik.log_prob_levels = lik.log_prob_levels_reference
    lik = two.model.likelihood
    lik.log_prob_levels = lik._log_prob_levels_two_log_ndtr
    for _ in range(3):
        a, b, c = new.train_step(), two.train_step(), previous.train_step()
        assert b["loss"] == c["loss"] and b["encoder_loss"] == c["encoder_loss"]
        # Per-pixel values differ by float32 rounding (~1e-7 relative); a loss summed over 192 pixels
        # and 8 points moves by about that relative amount, far below a wrong bin or scale.
        assert a["loss"] == pytest.approx(c["loss"], rel=1e-5)
        assert a["encoder_loss"] == pytest.approx(c["encoder_loss"], rel=1e-5)
    assert all(torch.equal(params_of(two)[k], v) for k, v in params_of(previous).items())
    # Same noise and optimizer: gradients differ by rounding only, so Adam (lr 1e-3 per step) moves the
    # parameters far less than lr apart; a wrong gradient would move entries by ~lr.
    for k, v in params_of(previous).items():
        torch.testing.assert_close(params_of(new)[k], v, rtol=0, atol=1e-5)
