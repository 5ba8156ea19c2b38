"""``LangevinLoop`` on the CPU, and smoke tests of the benchmark scripts.

* mode="eager" runs exactly the trainer's chain (``run_langevin_chain`` with a ``LangevinSampler``): same
  samples, energies, decoder gradients and noise position, bit for bit.
* mode="compile" matches eager up to the rounding of the compiled decoder.
* mode="cuda_graph" is rejected on CPU tensors (and with the host-reading reference backend) with a
  message that says what to use instead.
* ``benchmarks/run_cpu_suite.py --quick`` runs the four levels, writes JSON/CSV rows carrying every
  environment key, plots and markdown tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lpc_fast.fastloop import LOOP_MODES, LangevinLoop
from lpc_fast.models import ModelConfig, build_model
from lpc_fast.train import TrainConfig
from lpc_fast.train.lpc import make_sampler, run_langevin_chain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, OFFSET = 11, 2**32 - 3  # the offset's low word carries during the chain


class _Energy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z, x):
        return self.model.energy(z, x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(architecture="mlp", mlp_hidden=(16,), latent_dim=5, use_encoder=False)
    model = build_model(cfg, (1, 8, 8), num_levels=17)
    x = torch.randint(0, 17, (6, 1, 8, 8)).float() / 16
    z0 = torch.randn(6, 5)
    return _Energy(model), list(model.parameters()), x, z0


def _config(**kw) -> TrainConfig:
    base = dict(num_langevin_steps=4, burn_in=1, seed=SEED, langevin_step_size=0.05, warm_start="prior")
    base.update(kw)
    return TrainConfig(**base)


def _reference(energy, params, x, z0, cfg, accumulate=True):
    for p in params:
        p.grad = None
    out = run_langevin_chain(
        energy, x, z0, cfg, lambda z: make_sampler(z, cfg, seed=SEED, offset=OFFSET), accumulate=accumulate
    )
    return out, [None if p.grad is None else p.grad.clone() for p in params]


def _fast(energy, params, x, z0, cfg, mode, accumulate=True):
    for p in params:
        p.grad = None
    loop = LangevinLoop.from_config(energy, params, cfg, mode=mode)
    out = loop.run(x, z0, offset=OFFSET, accumulate=accumulate)
    return out, [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"precondition": False}, {"method": "pc"}, {"burn_in": 0, "backend": "reference"}],
    ids=["preconditioned", "ula", "pc", "reference-backend"],
)
def test_eager_loop_is_the_trainer_chain_bit_for_bit(tiny, overrides):
    energy, params, x, z0 = tiny
    cfg = _config(**overrides)
    expected, expected_grads = _reference(energy, params, x, z0, cfg)
    got, got_grads = _fast(energy, params, x, z0, cfg, "eager")
    assert got["kept"] == expected["kept"] == cfg.chain_length - cfg.burn_in
    assert got["offset_end"] == expected["offset_end"]
    assert torch.equal(got["samples"], expected["samples"])
    assert torch.equal(got["z"], expected["z"])
    assert got["energies"].dtype == torch.float64
    torch.testing.assert_close(got["energies"], expected["energies"], rtol=0, atol=0)
    for a, b in zip(got_grads, expected_grads):
        assert torch.equal(a, b)
    assert got["nonfinite"].shape == (cfg.chain_length + 1, x.shape[0])
    assert got["nonfinite"].dtype == torch.int64 and not got["nonfinite"].any()
    if "nonfinite" in expected:
        assert torch.equal(got["nonfinite"], expected["nonfinite"])
    assert got["chain_energies"].shape == (cfg.chain_length + 1, x.shape[0])
    assert torch.equal(got["chain_energies"].mean(1).double(), got["energies"])
    assert torch.equal(z0, tiny[3])  # the warm start is not modified


def test_eager_loop_without_accumulation_leaves_grads_alone(tiny):
    energy, params, x, z0 = tiny
    cfg = _config()
    expected, _ = _reference(energy, params, x, z0, cfg, accumulate=False)
    got, grads = _fast(energy, params, x, z0, cfg, "eager", accumulate=False)
    assert all(g is None for g in grads)
    assert torch.equal(got["z"], expected["z"])


def test_compile_matches_eager(tiny):
    energy, params, x, z0 = tiny
    cfg = _config()
    expected, expected_grads = _fast(energy, params, x, z0, cfg, "eager")
    got, got_grads = _fast(energy, params, x, z0, cfg, "compile")
    assert got["offset_end"] == expected["offset_end"]
    # Same noise and kernels; only the compiled decoder's float32 rounding differs.
    torch.testing.assert_close(got["samples"], expected["samples"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["z"], expected["z"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["energies"], expected["energies"], rtol=1e-5, atol=1e-4)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_nonfinite_values_are_counted_per_pass_and_chain(tiny):
    energy, params, x, z0 = tiny
    x_bad = x.clone()
    x_bad[2] = float("nan")  # chain 2's energy and gradient are NaN from the first pass on
    for mode in ("eager",):
        got, _ = _fast(energy, params, x_bad, z0, _config(), mode)
        counts = got["nonfinite"]
        assert (counts[:, 2] > 0).all()
        assert not counts[:, [0, 1, 3, 4, 5]].any()


def test_cuda_graph_is_rejected_on_cpu_with_a_clear_message(tiny):
    energy, params, x, z0 = tiny
    loop = LangevinLoop(energy, params, num_steps=3, step_size=0.05, mode="cuda_graph")
    with pytest.raises(
        RuntimeError, match=r"mode='cuda_graph' needs CUDA tensors .*use mode='eager' or mode='compile'"
    ):
        loop.run(x, z0)
    with pytest.raises(ValueError, match="capturable kernel backend"):
        LangevinLoop(energy, params, num_steps=3, step_size=0.05, mode="cuda_graph", backend="reference")


def test_argument_errors(tiny):
    energy, params, x, z0 = tiny
    assert LOOP_MODES == ("eager", "cuda_graph", "compile")
    with pytest.raises(ValueError, match="mode must be one of"):
        LangevinLoop(energy, params, num_steps=3, step_size=0.05, mode="graph")
    with pytest.raises(ValueError, match="burn_in"):
        LangevinLoop(energy, params, num_steps=3, burn_in=3, step_size=0.05)
    with pytest.raises(ValueError, match="step_size"):
        LangevinLoop(energy, params, num_steps=3, step_size=0.0)
    with pytest.raises(TypeError, match="nn.Module"):
        LangevinLoop(lambda z, x: energy(z, x), params, num_steps=3, step_size=0.05, mode="compile")
    loop = LangevinLoop(energy, params, num_steps=3, step_size=0.05)
    with pytest.raises(ValueError, match="offset"):
        loop.run(x, z0, offset=-1)


# ------------------------------------------------------------------------------------------------
# Benchmark scripts (one quick suite run shared by the checks below)

ENV_KEYS = (
    "device",
    "device_kind",
    "device_name",
    "driver",
    "torch",
    "triton",
    "python",
    "git",
    "threads",
    "simd",
    "hostname",
    "timestamp",
)


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "run_cpu_suite.py"),
            "--quick",
            "--results-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "cpu.jsonl").read_text().splitlines() if line.strip()]
    return out, rows, proc.stdout


def test_env_keys_match_the_harness():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import harness
    finally:
        sys.path.pop(0)
    assert tuple(harness.ENV_KEYS) == ENV_KEYS


@pytest.mark.parametrize("level", ["op", "loop", "train", "sampler"])
def test_quick_benchmarks_write_rows_with_the_environment(quick_suite, level):
    _, rows, _ = quick_suite
    mine = [r for r in rows if r["level"] == level]
    assert mine, f"no {level} rows"
    for r in mine:
        missing = [k for k in ENV_KEYS if k not in r]
        assert not missing, f"{level} row lacks {missing}"
        assert r["device"] == "cpu" and r["device_kind"] == "cpu"
        assert r["median_s"] > 0 and r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
    providers = {r["provider"] for r in mine}
    expected = {
        "op": {"eager", "cpu"},
        "loop": {"floor", "handwritten", "reference", "fused", "fused_loop"},
        "train": {"decoder_floor", "lpc_fused", "lpc_reference", "vae"},
        "sampler": {"floor", "handwritten", "client", "sampler", "op"},
    }[level]
    assert expected <= providers
    if level == "loop":
        assert all(r["ratio_to_floor"] > 0 for r in mine)
    if level == "train":
        assert all(
            r["outside_decoder_fraction"] is not None for r in mine if r["provider"].startswith("lpc_")
        )


def test_quick_suite_writes_csv_plots_and_tables(quick_suite):
    out, rows, stdout = quick_suite
    csv_lines = (out / "cpu.csv").read_text().splitlines()
    assert csv_lines[0].startswith("timestamp,level,bench,provider")
    assert len(csv_lines) == len(rows) + 1
    for name in ("cpu_op.png", "cpu_loop.png", "cpu_train.png", "cpu_sampler.png"):
        assert (out / name).stat().st_size > 1000, name
    tables = (out / "cpu_tables.md").read_text()
    assert "| provider |" in tables and "floor / provider" in tables and "outside decoder" in tables
    assert "| provider |" in stdout
