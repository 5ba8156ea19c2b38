"""Reliability: bad input gets one clear error, numerical faults are handled by policy, interrupted
runs lose nothing, and the sampler's noise follows the RNG contract across the 32-bit counter carry.

Each test is named after what it proves. Training runs are tiny (8x8 digits, 4 latents, one thread).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cpu_backend_params

import lpc_fast
from lpc_fast import reference, rng
from lpc_fast.cli import EXIT_DIVERGED, EXIT_NONFINITE, main
from lpc_fast.models import ModelConfig
from lpc_fast.sampler import LangevinSampler
from lpc_fast.train import ConfigError, TrainConfig, factory, load_checkpoint, make_trainer
from lpc_fast.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from lpc_fast.train.faults import DivergenceGuard, NonFiniteError
from lpc_fast.train.lpc import encoder_objective

REPO = Path(__file__).resolve().parents[1]
LATENT = 4
TINY = [
    "--dataset",
    "digits",
    "--batch-size",
    "16",
    "--num-langevin-steps",
    "4",
    "--model-latent-dim",
    str(LATENT),
    "--model-mlp-hidden",
    "16",
    "--num-threads",
    "1",
    "--png-samples",
    "4",
    "--no-progress",
]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    from lpc_fast.data import load_dataset

    return load_dataset("digits")


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        steps=5,
        batch_size=16,
        num_langevin_steps=4,
        model=ModelConfig(latent_dim=LATENT, mlp_hidden=(16,)),
        seed=3,
        num_threads=1,
        png_samples=4,
    )
    base.update(kw)
    return TrainConfig(**base)


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_clear_line(code: int, err: str, *needles: str, status: int = 2) -> None:
    assert code == status, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def inject(trainer, *, step: int, passes: tuple[int, ...], rows: list[int], factor: float = math.nan):
    """Multiply the energies of ``rows`` by ``factor`` at chain passes ``passes`` of training ``step``.

    With NaN, the energy and every element of ``∇_z E`` of those rows become NaN.
    """
    energy = trainer._energy
    seen = {"step": None, "t": 0}

    def wrapped(z, x):
        if trainer.step + 1 != step:
            return energy(z, x)
        if seen["step"] != trainer.step:
            seen.update(step=trainer.step, t=0)
        t = seen["t"]
        seen["t"] += 1
        if t not in passes:
            return energy(z, x)
        hit = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        hit[rows] = True
        if math.isnan(factor):
            # NaN latents in those rows only (a where() on the energy would leak NaN gradients
            # into every row through 0 * NaN).
            scale = torch.where(hit, math.nan, 1.0).view(-1, *([1] * (z.dim() - 1)))
            return energy(z * scale, x)
        e = energy(z, x)
        return torch.where(hit, e * factor, e)

    trainer._energy = wrapped
    return trainer


def patch_make_trainer(monkeypatch, **inject_kw):
    # run_training builds its trainer with lpc_fast.train.factory.make_trainer (which the package
    # re-exports): patch it there.
    real = factory.make_trainer

    def make(*args, **kwargs):
        return inject(real(*args, **kwargs), **inject_kw)

    monkeypatch.setattr(factory, "make_trainer", make)


def params(state_or_trainer) -> dict[str, torch.Tensor]:
    if isinstance(state_or_trainer, dict):
        return state_or_trainer["model"]
    return {k: v.detach().clone() for k, v in state_or_trainer.model.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- 1. input validation: the sampler -------------------------------------------------------------


def test_sampler_rejects_negative_step_size_naming_it():
    with pytest.raises(ValueError, match=r"^step_size must be > 0, got -0.1$"):
        LangevinSampler([torch.zeros(4, 2)], step_size=-0.1)


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        (dict(step_size=float("nan")), ValueError, r"step_size must be finite"),
        (dict(step_size="0.1"), TypeError, r"step_size must be a real number"),
        (dict(mode="ULA"), ValueError, r"mode must be one of 'preconditioned', 'ula', 'mala'"),
        (dict(beta=1.5), ValueError, r"beta must be in \[0, 1\)"),
        (dict(beta=1.0), ValueError, r"beta=1 .* needs bias_correction=False"),
        (dict(eps=0.0), ValueError, r"eps must be > 0"),
        (dict(temperature=-1.0), ValueError, r"temperature must be >= 0"),
        (dict(temperature=math.inf), ValueError, r"temperature must be finite"),
        (dict(target_accept=1.0), ValueError, r"target_accept must be in \(0, 1\)"),
        (dict(target_accept=0.0), ValueError, r"target_accept must be in \(0, 1\)"),
        (dict(target_accept="high"), TypeError, r"target_accept must be a real number in \(0, 1\)"),
        (dict(bias_correction=1), TypeError, r"bias_correction must be a bool"),
        (dict(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*64\)"),
        (dict(offset=2**64), ValueError, r"offset must be an int in \[0, 2\*\*64\)"),
        (dict(adaptation_window=-1), ValueError, r"adaptation_window must be an int >= 0"),
        (dict(freeze_preconditioner_after=-2), ValueError, r"freeze_preconditioner_after must be"),
        (dict(dual_averaging_kappa=2.0), ValueError, r"dual_averaging_kappa must be in \(0, 1\]"),
        (dict(backend="gpu"), ValueError, r"backend must be None or one of triton, cuda, cpu, reference"),
        (dict(stepsize=0.1), TypeError, r"unknown argument 'stepsize'; did you mean 'step_size'\?"),
        (dict(tempreature=0.5), TypeError, r"unknown argument 'tempreature'; did you mean 'temperature'"),
    ],
)
def test_sampler_rejects_each_bad_argument_naming_it_and_the_expected_value(kw, exc, match):
    with pytest.raises(exc, match=match):
        LangevinSampler([torch.zeros(4, 2)], **{"step_size": 0.1, **kw})


def test_sampler_rejects_bad_latents_naming_what_was_expected():
    z = torch.zeros(4, 2)
    cases = [
        (3.0, TypeError, r"latents must be a tensor, an iterable of tensors"),
        ([[0.0, 1.0]], TypeError, r"latents must be tensors, got list"),
        (
            [z.int()],
            TypeError,
            r"latents must have dtype float16, bfloat16, float32 or float64, got torch.int32",
        ),
        ([z.to(torch.complex64)], TypeError, r"latents must have dtype .* got torch.complex64"),
        ([z, z], ValueError, r"appears more than once"),
        ([torch.zeros(3, requires_grad=True) * 2], ValueError, r"latents must be leaf tensors"),
        ([{"parms": [z]}], ValueError, r"parameter group 0 has no 'params' entry"),
        ([{"params": [z], "step_sise": 1.0}], ValueError, r"unknown parameter-group keys \['step_sise'\]"),
        ([{"params": [z], "step_size": 0.0}], ValueError, r"step_size must be > 0"),
        ([z, {"params": [torch.zeros(2)]}], TypeError, r"all tensors or all parameter-group dicts"),
        ([], ValueError, r"empty list of latents"),
    ]
    for latents, exc, match in cases:
        with pytest.raises(exc, match=match):
            LangevinSampler(latents, step_size=0.1)
    # Devices: MALA's accept/reject is joint, and an explicit backend must run where the latents live.
    with pytest.raises(ValueError, match=r"MALA needs every latent on one device"):
        LangevinSampler([torch.zeros(4, 2), torch.zeros(4, 2, device="meta")], step_size=0.1, mode="mala")
    with pytest.raises(lpc_fast.BackendUnavailableError, match=r"backend 'cpu' .* cannot run on meta"):
        LangevinSampler([torch.zeros(4, 2, device="meta")], step_size=0.1, backend="cpu")


# -- 1. input validation: configuration and trainers ------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "option", "text"),
    [
        ({"eps": 0.0}, "--eps", "> 0"),
        ({"lr": math.inf}, "--lr", "finite positive"),
        ({"langevin_step_size": math.nan}, "--langevin-step-size", "finite positive"),
        ({"beta": 1.0}, "--beta", "--no-bias-correction"),
        ({"temperature": -0.5}, "--temperature", ">= 0"),
        ({"seed": -1}, "--seed", "[0, 2**63)"),
        ({"seed": 2**63}, "--seed", "[0, 2**63)"),
        ({"backend": "gpu"}, "--backend", "triton, cuda, cpu, reference"),
        ({"nonfinite_policy": "ignore"}, "--nonfinite-policy", "raise, skip, reset"),
        ({"divergence_factor": -1.0}, "--divergence-factor", "positive"),
        ({"divergence_window": 0}, "--divergence-window", "positive"),
        ({"device": "cuda:7" if not torch.cuda.is_available() else "nodevice"}, "--device", "device"),
    ],
)
def test_train_config_rejects_out_of_range_values_naming_the_option(kw, option, text, digits):
    with pytest.raises(ConfigError) as info:
        make_trainer(tiny_config(**kw), digits)
    assert option in str(info.value) and text in str(info.value), str(info.value)


def test_train_config_rejects_unknown_and_mistyped_keys_by_name():
    with pytest.raises(ConfigError, match="unknown configuration key 'nonfinite_polcy'"):
        TrainConfig.from_dict({"nonfinite_polcy": "skip"})
    with pytest.raises(ConfigError, match=r"--divergence-window: expected an integer, got '5'"):
        TrainConfig.from_dict({"divergence_window": "5"})


# -- 1. input validation: the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--nonfinite-policy", "ignore"], "--nonfinite-policy"),
        (["train", "--divergence-factor", "-3"], "--divergence-factor"),
        (["train", "--divergence-window", "x"], "--divergence-window"),
        (["train", "--eps", "0"], "--eps"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--backend", "gpu"], "--backend"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--beta", "1"], "--beta"),
        (["train", "--device", "cuda:7" if not torch.cuda.is_available() else "nodevice"], "--device"),
        (["train", "--model-likelihood", "poisson"], "--model-likelihood"),
        (["sample", "--checkpoint", "c.pt", "--out", "x.png", "--seed", "s"], "--seed"),
        (["eval", "--checkpoint", "c.pt", "--json", "o.json", "--num-is-samples", "0"], "--num-is-samples"),
        (["demo", "--steps", "0", "--no-progress"], "--steps"),
        (["demo", "--num-threads", "0", "--no-progress"], "--num-threads"),
    ],
)
def test_cli_rejects_each_bad_option_with_one_line_naming_it_and_exit_2(
    argv, needle, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    extra = ["--out", str(tmp_path / "o"), "--steps", "1"] if argv[0] == "train" else []
    code, err = run_main(argv + extra, capsys)
    assert_one_clear_line(code, err, needle)


def test_malformed_config_json_names_file_and_position(tmp_path, capsys):
    cfg = tmp_path / "broken.json"
    cfg.write_text('{\n  "steps": 3,\n  "lr": 0.01,,\n}\n')
    code, err = run_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_clear_line(code, err, str(cfg), "not valid JSON", "line 3 column 14 (char 29)")


def test_config_key_of_wrong_type_names_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "typed.json"
    cfg.write_text(json.dumps({"steps": 3, "langevin_step_size": "big"}))
    code, err = run_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_clear_line(code, err, str(cfg), "'langevin_step_size'", "expected a number, got 'big'")
    cfg.write_text(json.dumps({"model": {"latent_dim": 2.5}}))
    code, err = run_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_clear_line(code, err, str(cfg), "'model.latent_dim'", "expected an integer")
    cfg.write_text("[1, 2]")
    code, err = run_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_clear_line(code, err, str(cfg), "JSON object")


def test_cli_dataset_missing_truncated_or_wrong_shape_names_the_file_exit_2(tmp_path, capsys):
    imgs = (np.random.default_rng(0).random((40, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "full.npz", images=imgs)
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(tmp_path / "shape.npz", images=np.zeros((4, 5, 6, 7), dtype=np.uint8))
    for name, needle in (
        ("missing.npz", "missing.npz"),
        ("trunc.npz", "truncated"),
        ("shape.npz", "got shape"),
    ):
        argv = ["train", *TINY, "--dataset", f"npz:{tmp_path / name}", "--steps", "1"]
        code, err = run_main(argv + ["--out", str(tmp_path / ("o-" + name))], capsys)
        assert_one_clear_line(code, err, name, needle)
    # A standard dataset whose files are absent: the directory searched and what to do.
    argv = ["train", *TINY, "--dataset", "mnist", "--data-root", str(tmp_path / "none"), "--steps", "1"]
    code, err = run_main(argv + ["--out", str(tmp_path / "o-mnist")], capsys)
    assert_one_clear_line(code, err, str(tmp_path / "none"), "--data-root")


def test_cli_unwritable_output_path_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_main(["train", *TINY, "--steps", "1", "--out", str(blocker / "run")], capsys)
    assert_one_clear_line(code, err, str(blocker))


# -- 2. numerical faults ------------------------------------------------------------------------------


def test_nonfinite_gradient_raise_names_step_batch_and_count(digits, tmp_path, capsys, monkeypatch):
    trainer = inject(make_trainer(tiny_config(), digits), step=2, passes=(3,), rows=[5, 2])
    trainer.train_step()
    before = trainer.state_dict()
    with pytest.raises(NonFiniteError) as info:
        trainer.train_step()
    err = info.value
    # NaN energy times ∇_z E: 1 energy + LATENT gradient elements per chain.
    assert (err.step, err.inner_step, err.chains, err.count) == (2, 3, [2, 5], 2 * (1 + LATENT))
    text = str(err)
    assert "training step 2, Langevin step 3" in text and "batch indices 2, 5" in text
    assert "10 non-finite value(s)" in text and "--langevin-step-size" in text
    # The trainer was rewound to its last good state: the failed step left no trace.
    after = trainer.state_dict()
    assert after["step"] == 1 and after["sampler"] == before["sampler"] and after["order"] == before["order"]
    assert torch.equal(after["noise_gen"], before["noise_gen"])
    assert_same_params(params(after), params(before))

    # The command line: exit status 4, the message, and a checkpoint of the last good state.
    patch_make_trainer(monkeypatch, step=3, passes=(1,), rows=[7])
    out = tmp_path / "run"
    code, err_text = run_main(["train", *TINY, "--steps", "5", "--out", str(out)], capsys)
    lines = [ln for ln in err_text.splitlines() if "error" in ln]
    assert code == EXIT_NONFINITE == 4 and len(lines) == 1, err_text
    assert "training step 3, Langevin step 1" in lines[0] and "batch indices 7" in lines[0]
    assert f"last good state (step 2) is in {out / CHECKPOINT_NAME}" in lines[0]
    assert load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["step"] == 2


@pytest.mark.parametrize("loop_mode", ["sampler", "eager"])
def test_skip_policy_drops_and_counts_bad_chains(digits, loop_mode):
    cfg = tiny_config(nonfinite_policy="skip", num_langevin_steps=5, burn_in=1, loop_mode=loop_mode)
    trainer = inject(make_trainer(cfg, digits), step=1, passes=(3,), rows=[2, 5])
    seen = {}
    real_run_chain, real_encoder_step = trainer.run_chain, trainer._encoder_step

    def run_chain(x, z0, **kw):
        chain = real_run_chain(x, z0, **kw)
        # The decoder gradient Adam should get: the mean over the kept samples of the good chains
        # only, at the θ of this step (computed directly, before the optimizer moves θ).
        good = chain["point_mask"].nonzero().flatten()
        total = [torch.zeros_like(p) for p in trainer.theta_params]
        for z in chain["samples"]:
            grads = torch.autograd.grad(trainer.model.energy(z[good], x[good]).sum(), trainer.theta_params)
            total = [e + g for e, g in zip(total, grads)]
        seen["want_grad"] = [e / (chain["kept"] * good.numel()) for e in total]
        seen["chain"] = chain
        return chain

    def encoder_step(x, samples, sample_mask=None, point_mask=None):
        good = point_mask.nonzero().flatten()
        with torch.no_grad():  # the forward KL over the good chains only, before the encoder moves
            want, _ = encoder_objective(trainer.model, x[good], samples[:, good], None, "forward_kl")
        seen["want_forward_kl"] = float(want)
        return real_encoder_step(x, samples, sample_mask, point_mask)

    trainer.run_chain, trainer._encoder_step = run_chain, encoder_step
    metrics = trainer.train_step()
    chain = seen["chain"]
    assert metrics["nonfinite_chains"] == 2 and trainer.nonfinite_chains == 2
    assert chain["affected"] == [2, 5]
    assert chain["point_mask"].tolist() == [i not in (2, 5) for i in range(16)]
    for p, want in zip(trainer.theta_params, seen["want_grad"]):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
    assert math.isclose(metrics["encoder_forward_kl"], seen["want_forward_kl"], rel_tol=1e-5)
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["encoder_loss"])
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert trainer.state_dict()["nonfinite_chains"] == 2


@pytest.mark.parametrize("precondition", [False, True])
def test_reset_policy_restarts_bad_chains_from_the_warm_start_and_counts_them(digits, precondition):
    # Deterministic chains (temperature 0): a chain restarted at z_0 after pass 3 retraces its first
    # move, so its sample at pass 4 equals its sample at pass 1.
    cfg = tiny_config(
        method="pc",
        nonfinite_policy="reset",
        num_langevin_steps=6,
        warm_start="prior",
        precondition=precondition,
    )
    trainer = inject(make_trainer(cfg, digits), step=1, passes=(3,), rows=[2, 5])
    seen = {}
    real_run_chain = trainer.run_chain
    trainer.run_chain = lambda x, z0, **kw: seen.setdefault("chain", real_run_chain(x, z0, **kw))
    metrics = trainer.train_step()
    chain = seen["chain"]
    samples = chain["samples"]  # passes 1..6
    assert metrics["nonfinite_chains"] == 2 and chain["affected"] == [2, 5]
    assert chain["sample_mask"][2].tolist() == [i not in (2, 5) for i in range(16)]  # pass 3 left out
    assert bool(chain["sample_mask"][3:].all())
    if precondition:  # a fresh preconditioner: the same move up to rounding
        torch.testing.assert_close(samples[3, [2, 5]], samples[0, [2, 5]], rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(samples[3, [2, 5]], samples[0, [2, 5]])
    assert not torch.equal(samples[3, [0, 1]], samples[0, [0, 1]])  # the others moved on
    assert torch.isfinite(samples[3:]).all() and math.isfinite(metrics["loss"])
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_divergence_guard_checkpoints_last_good_state_and_suggests_smaller_step(
    digits, tmp_path, capsys, monkeypatch
):
    # Step 8's energies are scaled by 1e6 (finite): far above the running median of steps 1-7.
    patch_make_trainer(monkeypatch, step=8, passes=tuple(range(5)), rows=list(range(16)), factor=1e6)
    out = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "12", "--checkpoint-every", "3", "--log-every", "1", "--seed", "3"]
    code, err = run_main(argv + ["--out", str(out)], capsys)
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert code == EXIT_DIVERGED == 3 and len(lines) == 1, err
    msg = lines[0]
    assert "training diverged at step 8" in msg and "running median" in msg
    assert "smaller --langevin-step-size (e.g. 0.025)" in msg and "--precondition" in msg
    assert f"last good state (step 7) is in {out / CHECKPOINT_NAME}" in msg
    saved = load_checkpoint(out / CHECKPOINT_NAME)["trainer"]
    assert saved["step"] == 7
    assert [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, 8)
    )

    # The checkpoint is exactly the uninterrupted run's state after 7 steps ...
    cfg = TrainConfig.from_json((out / "config.json").read_text())
    monkeypatch.undo()
    ref = make_trainer(cfg, digits)
    # The faulty run's energy was wrapped, which runs the chain's autograd passes (a trainer's own
    # energy runs the lean passes, equal up to float32 rounding): wrap ref's the same way for those
    # steps, and unwrap it for the resumed, unpatched steps below.
    lean = ref._energy
    ref._energy = lambda z, x: lean(z, x)
    for _ in range(7):
        ref.train_step()
    ref._energy = lean
    want = ref.state_dict()
    assert_same_params(params(saved), params(want))
    for key in ("order", "sampler", "decoder_grad_evals", "guard"):
        assert saved[key] == want[key], key
    assert torch.equal(saved["noise_gen"], want["noise_gen"])
    # ... so resuming it (without the fault) continues that run bit for bit.
    code, err = run_main(
        ["train", *TINY, "--steps", "9", "--seed", "3", "--out", str(out), "--resume"], capsys
    )
    assert code == 0, err
    for _ in range(2):
        ref.train_step()
    assert_same_params(load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["model"], params(ref))


def test_divergence_guard_compares_to_the_running_median_and_catches_nonfinite():
    guard = DivergenceGuard(factor=10.0, window=4)
    for e in (100.0, 90.0, 80.0, 70.0, 60.0):  # decreasing energy never trips it; 5 needed for the test
        guard.check(e, step=1)
    assert guard.median() == 75.0  # the last 4: 90, 80, 70, 60
    guard.check(75.0 + 10.0 * 75.0 - 1.0, step=6)  # just under the threshold
    with pytest.raises(lpc_fast.train.faults.DivergenceError, match="step 7"):
        guard.check(80.0 * 11 + 1.0, step=7, step_size=0.1)
    with pytest.raises(lpc_fast.train.faults.DivergenceError, match="nan.*e.g. 0.05"):
        DivergenceGuard(None, 3).check(math.nan, step=1, step_size=0.1)


# -- 3. interrupted runs --------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _kill_at(args: list[str], phase: str, occurrence: int) -> str:
    """Run ``lpc-fast train args`` pausing in checkpoint writes; SIGKILL it in the ``occurrence``-th
    pause of ``phase``. Returns what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpc_fast", "train", *args],
        env=_env(LPC_FAST_CHECKPOINT_TEST_PAUSE=f"{phase}:2"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, printed = 0, []
    try:
        for line in proc.stderr:
            printed.append(line)
            if line.strip() == f"checkpoint-pause: {phase}":
                seen += 1
                if seen == occurrence:
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(printed)
    return "".join(printed)


def test_sigkill_during_checkpoint_write_resumes_bit_identical(tmp_path, capsys):
    args = [*TINY, "--steps", "25", "--checkpoint-every", "5", "--log-every", "1"]
    ref = tmp_path / "ref"
    assert run_main(["train", *args, "--out", str(ref)], capsys)[0] == 0
    out = tmp_path / "killed"
    # 1: killed after the step-10 checkpoint's temporary file is durable, before any rename.
    _kill_at([*args, "--out", str(out)], "temp-written", 2)
    assert load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["step"] == 5
    assert list(out.glob(".checkpoint-*.tmp"))  # the torn write's leftovers
    # 2: resumed, then killed between the renames of the step-15 checkpoint: only the previous
    # generation (step 10) exists under either name.
    printed = _kill_at([*args, "--out", str(out), "--resume"], "between-renames", 2)
    assert "resuming from" in printed and "at step 5" in printed
    assert not (out / CHECKPOINT_NAME).exists()
    assert load_checkpoint(out / PREVIOUS_NAME)["trainer"]["step"] == 10
    # 3: resumed to the end; bit-identical to the uninterrupted run, one trajectory in the metrics.
    code, err = run_main(["train", *args, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert f"resuming from {out / PREVIOUS_NAME} at step 10" in err
    assert_same_params(
        load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["model"],
        load_checkpoint(ref / CHECKPOINT_NAME)["trainer"]["model"],
    )
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 26))
    assert not list(out.glob(".checkpoint-*.tmp"))


def test_corrupt_checkpoint_falls_back_with_message(tmp_path, capsys):
    args = [*TINY, "--checkpoint-every", "2"]
    ref = tmp_path / "ref"
    assert run_main(["train", *args, "--steps", "6", "--out", str(ref)], capsys)[0] == 0
    out = tmp_path / "run"
    assert run_main(["train", *args, "--steps", "4", "--out", str(out)], capsys)[0] == 0
    blob = bytearray((out / CHECKPOINT_NAME).read_bytes())
    # One flipped bit in a weight of the newest checkpoint (step 4): torch.load reads it without
    # complaint (it does not check its archive's CRCs); the checkpoint's own checksum must catch it.
    weight = next(iter(load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["model"].values()))
    at = bytes(blob).find(weight.numpy().tobytes())
    assert at > 0
    blob[at + 1] ^= 0x01
    (out / CHECKPOINT_NAME).write_bytes(bytes(blob))
    torch.load(out / CHECKPOINT_NAME, weights_only=True)
    code, err = run_main(["train", *args, "--steps", "6", "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1, err
    assert str(out / CHECKPOINT_NAME) in warning[0] and "checksum mismatch" in warning[0]
    assert "trying the previous checkpoint" in warning[0]
    assert f"resuming from {out / PREVIOUS_NAME} at step 2" in err
    assert "Traceback" not in err
    assert_same_params(
        load_checkpoint(out / CHECKPOINT_NAME)["trainer"]["model"],
        load_checkpoint(ref / CHECKPOINT_NAME)["trainer"]["model"],
    )
    # Both generations corrupt: one line naming both files, exit 2.
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        (out / name).write_bytes(b"LPCFAST-CKPT\n" + b"0" * 64 + b"\ngarbage")
    code, err = run_main(["train", *args, "--steps", "8", "--out", str(out), "--resume"], capsys)
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert code == 2 and len(errors) == 1 and "no valid checkpoint" in errors[0], err
    assert CHECKPOINT_NAME in errors[0] and PREVIOUS_NAME in errors[0]


# -- 4. the sampler against the reference on random small cases ---------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    st = None

U64 = 2**64

if st is not None:
    NEAR_BOUNDARIES = st.one_of(
        st.integers(0, 64),
        st.integers(2**32 - 40, 2**32 + 8),
        st.integers(U64 - 40, U64 - 1),
        st.integers(0, U64 - 1),
    )

    @st.composite
    def sampler_cases(draw):
        beta = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        return dict(
            shape=tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))),
            dtype=draw(st.sampled_from([torch.float32, torch.float64])),
            mode=draw(st.sampled_from(["ula", "preconditioned"])),
            seed=draw(NEAR_BOUNDARIES),
            offset=draw(NEAR_BOUNDARIES),
            step_size=draw(st.sampled_from([1e-3, 0.05, 0.5])),
            beta=beta,
            eps=draw(st.sampled_from([1e-3, 1.0])),
            temperature=draw(st.sampled_from([0.0, 1.0, 3.0])),
            bias_correction=draw(st.booleans()),
            prior_grad=draw(st.booleans()),
            data_seed=draw(st.integers(0, 2**31 - 1)),
        )


@pytest.mark.skipif(st is None, reason="hypothesis is not installed")
@pytest.mark.parametrize("backend", cpu_backend_params())
def test_sampler_steps_match_the_reference_on_random_small_cases(backend):
    """Three sampler steps (state carried, offsets advancing, wrapping mod 2**64) equal the reference."""

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(sampler_cases())
    def run(c):
        gen = torch.Generator().manual_seed(c["data_seed"])
        z = torch.randn(c["shape"], generator=gen, dtype=torch.float64).to(c["dtype"])
        hyper = {
            k: c[k] for k in ("step_size", "beta", "eps", "temperature", "bias_correction", "prior_grad")
        }
        sampler = LangevinSampler(
            [z], mode=c["mode"], seed=c["seed"], offset=c["offset"], backend=backend, **hyper
        )
        z_ref, v_ref = z.double().clone(), torch.zeros(c["shape"], dtype=torch.float64)
        offset = c["offset"]
        for step in (1, 2, 3):
            g = torch.randn(c["shape"], generator=gen, dtype=torch.float64)
            z.grad = g.to(c["dtype"])
            xi = rng.philox_normal_reference(z.numel(), seed=c["seed"], offset=offset).view(c["shape"])
            prev = z.double().clone()
            kw = dict(step=step, precondition=c["mode"] != "ula", **hyper)
            gd = g.to(c["dtype"]).double()
            drift_only, _ = reference.langevin_update(prev, gd, v_ref, torch.zeros_like(xi), **kw)
            z_ref, v_ref = reference.langevin_update(prev, gd, v_ref, xi, **kw)
            sampler.step()
            offset = (offset + rng.offset_increment(z.numel())) % U64
            assert sampler.offset == offset
            # Error budget: rounding relative to the magnitudes of the state, the drift and the noise.
            scale = prev.abs() + (prev - drift_only).abs() + (z_ref - drift_only).abs()
            tol = 1e-10 if c["dtype"] == torch.float64 else 2e-5
            err = (z.double() - z_ref).abs()
            assert bool((err <= tol + tol * scale).all()), (float((err - tol * scale).max()), c)
            z_ref = z.double().clone()  # continue from the sampler's own (rounded) state

    run()


# -- 5. 64-bit offsets through the sampler ------------------------------------------------------------


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_sampler_noise_crosses_32bit_counter_carry_like_reference(backend):
    """Offsets just below 2**32: the counter's low word carries into the high word mid-call and
    between calls; the sampler's noise equals the reference stream throughout and never repeats."""
    seed, start, n, steps = 0x1234_5678_9ABC_DEF0, 2**32 - 7, 40, 3  # 10 counters per step
    z = torch.zeros(n, dtype=torch.float64)
    sampler = LangevinSampler([z], step_size=0.5, mode="ula", seed=seed, offset=start, backend=backend)
    noise = []
    for _ in range(steps):
        before = z.clone()
        z.grad = torch.zeros_like(z)
        sampler.step()  # z' = z + sqrt(2 * 0.5 * 1) * xi = z + xi
        noise.append(z - before)
    got = torch.cat(noise)
    want = rng.philox_normal_reference(n * steps, seed=seed, offset=start)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert sampler.offset == start + steps * n // 4 > 2**32
    # The crossing matters: ignoring the carry (low word only) would give other noise after it.
    low_only = torch.cat(
        [rng.philox_normal_reference(4, seed=seed, offset=(start + k) % 2**32) for k in range(n * steps // 4)]
    )
    assert torch.equal(low_only[:28], want[:28]) and not torch.allclose(low_only[28:], want[28:])
    assert got.unique().numel() == got.numel()  # no value repeats across the carry


# -- 2. numerical faults under data parallelism -------------------------------------------------------

DDP_SCRIPT = """
import math, sys, torch
torch.set_num_threads(1)
from lpc_fast.data import load_dataset
from lpc_fast.models import ModelConfig
from lpc_fast.train import NonFiniteError, TrainConfig, make_trainer
from lpc_fast.train.distributed import detect

dist = detect(torch.device("cpu"))
cfg = TrainConfig(steps=3, batch_size=16, num_langevin_steps=4, seed=3, nonfinite_policy=sys.argv[1],
                  model=ModelConfig(latent_dim=4, mlp_hidden=(16,)))
tr = make_trainer(cfg, load_dataset("digits"), dist=dist)
energy, calls = tr._energy, [0]

def wrapped(z, x):  # chain 1 of rank 1 (global index 9) turns NaN at pass 2 of step 2
    if dist.rank == 1 and tr.step == 1:
        calls[0] += 1
        if calls[0] == 3:
            return energy(z * torch.tensor([1.0, math.nan] + [1.0] * 6).view(-1, 1), x)
    return energy(z, x)

tr._energy = wrapped
out = []
try:
    for _ in range(3):
        out.append(tr.train_step()["nonfinite_chains"])
except NonFiniteError as exc:
    out.append(str(exc).split(";")[0])
flat = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
finite, total = bool(torch.isfinite(flat).all()), float(flat.double().sum())
with open(f"{sys.argv[2]}-{dist.rank}", "w") as fh:  # one file per rank: stdout lines interleave
    fh.write(f"{out} {finite} {total!r}")
dist.shutdown()
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_nonfinite_chain_on_one_rank_makes_every_rank_take_the_same_branch(tmp_path):
    script = tmp_path / "ddp_fault.py"
    script.write_text(DDP_SCRIPT)
    env = _env()
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for policy in ("skip", "raise"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                str(script),
                policy,
                str(tmp_path / policy),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=REPO,
        )
        # Judged on what the ranks report: gloo occasionally aborts at process teardown, after the work.
        files = [tmp_path / f"{policy}-{rank}" for rank in (0, 1)]
        assert all(f.exists() for f in files), proc.stdout + proc.stderr
        r0, r1 = results = [f.read_text() for f in files]
        if policy == "skip":  # the one bad chain is counted once over the job; parameters agree
            assert r0 == r1 and r0.startswith("[0, 1, 0] True"), results
        else:  # both ranks stop at step 2; the failing one names the global batch index
            assert "on another process at training step 2" in r0, results
            assert (
                "training step 2, Langevin step 2: 5 non-finite value(s) in 1 chain(s) (batch indices 9)"
                in r1
            )
            assert r0.rsplit(" ", 2)[1:] == r1.rsplit(" ", 2)[1:]  # same (last good) parameters
