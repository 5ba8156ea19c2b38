"""The ``lpc-fast`` command line: outputs, bad input, and kill/resume reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lpc_fast.cli import build_parser, main
from lpc_fast.train import TrainConfig, load_checkpoint

# The TorchScript feature network of the eval tests goes through torch.jit, which warns it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
# A tiny run: 8x8 digits, 4 latents, small MLP, short chains, one thread (bit-identical across runs).
TINY = [
    "--dataset",
    "digits",
    "--batch-size",
    "16",
    "--num-langevin-steps",
    "4",
    "--model-latent-dim",
    "4",
    "--model-mlp-hidden",
    "16",
    "--num-threads",
    "1",
    "--png-samples",
    "16",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lpc_fast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO,
    )


def final_params(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["trainer"]["model"]


def metrics_records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return recs


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- option generation ----------------------------------------------------------------------------


def test_every_config_field_is_an_option():
    import dataclasses

    from lpc_fast.models import ModelConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            assert "--" + f.name.replace("_", "-") in flags
    for f in dataclasses.fields(ModelConfig):
        assert "--model-" + f.name.replace("_", "-") in flags


# -- bad input: one line naming the option, exit status 2, no traceback ------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--steps", "abc"], "--steps"),
        (["train", "--method", "gan"], "--method"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--burn-in", "9", "--num-langevin-steps", "4"], "--burn-in"),
        (["train", "--beta", "2"], "--beta"),
        (["train", "--model-latent-dim", "0"], "--model-latent-dim"),
        (["train", "--model-mlp-hidden", "a,b"], "--model-mlp-hidden"),
        (["train", "--warm-start", "encoder", "--no-model-use-encoder"], "--warm-start"),
        (["train", "--dataset", "no-such-data", "--steps", "1"], "no-such-data"),
        (["train", "--config", "/nonexistent/cfg.json"], "--config"),
        (["sample", "--checkpoint", "/nonexistent/ckpt.pt", "--out", "x.png"], "/nonexistent/ckpt.pt"),
        (["sample", "--checkpoint", "x", "--out", "y.png", "--n", "0"], "--n"),
        (["train", "--no-such-option", "1"], "--no-such-option"),
    ],
)
def test_bad_input_is_one_clear_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv + (["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_config_file_unknown_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 2, "model": {"latent_size": 3}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "latent_size" in capsys.readouterr().err


def test_bad_input_from_the_console_has_no_traceback():
    proc = run_cli("train", "--lr", "fast", timeout=60)
    assert proc.returncode == 2
    assert "--lr" in proc.stderr and "expected a number" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- a whole run and its outputs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory) -> str:
    """A fixed random-projection feature network, so the test does not train the default CNN."""
    path = tmp_path_factory.mktemp("features") / "proj.pt"
    proj = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    torch.nn.init.normal_(proj[1].weight, generator=torch.Generator().manual_seed(0))
    torch.jit.save(torch.jit.script(proj.eval()), str(path))
    return f"torchscript:{path}"


def test_train_sample_eval_outputs(tmp_path, capsys, tiny_features):
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"steps": 6, "log_every": 2, "model": {"latent_dim": 4}}))
    code = main(["train", "--config", str(cfg_file), *TINY, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"samples: {out / 'samples.png'}" in printed.out
    assert "kernel backend:" in printed.err
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png"):
        assert (out / name).is_file(), name
    saved = TrainConfig.from_json((out / "config.json").read_text())
    assert saved.steps == 6 and saved.model.latent_dim == 4 and saved.batch_size == 16
    recs = metrics_records(out)
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert all({"loss", "decoder_grad_evals", "seconds", "steps_per_s"} <= r.keys() for r in recs)
    assert recs[-1]["decoder_grad_evals"] == 6 * (4 + 2)  # T + 1 passes + 1 reverse-KL pass (Jeffreys)
    # An existing run is never overwritten silently.
    assert main(["train", *TINY, "--steps", "6", "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err

    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(png), "--n", "9"]) == 0
    assert png.is_file() and png.stat().st_size > 0

    js = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--dataset",
            "digits",
            "--json",
            str(js),
            "--num-is-samples",
            "8",
            "--num-eval-points",
            "10",
            "--num-generated",
            "20",
            "--feature-space",
            tiny_features,
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(js.read_text())
    assert metrics["num_is_samples"] == 8 and metrics["nll_nats"] > 0


def test_eval_of_an_encoder_free_model_uses_the_chain(tmp_path, capsys, tiny_features):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "2", "--warm-start", "zeros", "--no-model-use-encoder"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    js = tmp_path / "eval.json"
    args = ["--num-is-samples", "4", "--num-eval-points", "6", "--num-generated", "20"]
    args += ["--feature-space", tiny_features]
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json", str(js), *args]) == 0
    assert json.loads(js.read_text())["proposal"] == "chain-fit"


# -- interruption and resume ------------------------------------------------------------------------

RESUME_ARGS = [*TINY, "--steps", "120", "--checkpoint-every", "7", "--log-every", "1", "--no-progress"]


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120) -> None:
    """Block until the run has logged ``step`` and written at least one checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = metrics_records(out)
        if recs and recs[-1]["step"] >= step and (out / "checkpoint.pt").exists():
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError(f"run did not reach step {step}")


def test_sigkill_and_resume_reproduce_the_uninterrupted_run_bit_for_bit(tmp_path):
    ref = tmp_path / "ref"
    done = run_cli("train", *RESUME_ARGS, "--out", str(ref))
    assert done.returncode == 0, done.stderr
    want = final_params(ref)

    out = tmp_path / "killed"
    kills = 0
    # Kill at several points: early (first checkpoint), mid-run, and late; resume after each.
    for target in (8, 40, 90):
        args = [*RESUME_ARGS, "--out", str(out)] + (["--resume"] if kills else [])
        proc = subprocess.Popen(
            [sys.executable, "-m", "lpc_fast", "train", *args],
            env=_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_for_step(proc, out, target)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2, "the run finished before it could be interrupted"
    final = run_cli("train", *RESUME_ARGS, "--out", str(out), "--resume")
    assert final.returncode == 0, final.stderr
    assert "resuming from" in final.stderr
    got = final_params(out)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # The metrics file describes one trajectory: each step once, in order.
    steps = [r["step"] for r in metrics_records(out)]
    assert steps == list(range(1, 121))


def test_sigterm_writes_a_checkpoint_and_resume_continues(tmp_path):
    ref = tmp_path / "ref"
    args = [*TINY, "--steps", "60", "--checkpoint-every", "1000", "--log-every", "1", "--no-progress"]
    assert run_cli("train", *args, "--out", str(ref)).returncode == 0
    out = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpc_fast", "train", *args, "--out", str(out)],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not metrics_records(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    step = load_checkpoint(out / "checkpoint.pt")["trainer"]["step"]
    assert 0 < step < 60
    assert run_cli("train", *args, "--out", str(out), "--resume").returncode == 0
    want, got = final_params(ref), final_params(out)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_resume_rejects_a_changed_trajectory_setting(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    code = main(
        ["train", *TINY, "--steps", "4", "--lr", "0.1", "--out", str(out), "--resume", "--no-progress"]
    )
    assert code == 2
    assert "--lr" in capsys.readouterr().err
    # Extending the run is allowed.
    assert main(["train", *TINY, "--steps", "4", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["step"] == 4


def test_reproduce_is_delegated_to_the_reproduction_runner(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--help"])
    assert exc.value.code == 0
    assert "lpc-fast reproduce" in capsys.readouterr().out
