"""Data-parallel training under ``torchrun`` (gloo on CPU).

Claim: at temperature 0 (``method="pc"``, no Langevin noise), two processes that each take half of
every global batch follow the single-process trajectory on the same global batches. Why it holds:
the data order, the warm-start and reparameterisation noise are drawn for the global batch from the
same seeded generators and sliced per rank; each chain depends only on its own data point; the
decoder and encoder gradients are per-rank means that DDP averages over ranks, which equals the
global-batch mean. Only the floating-point summation order differs (per-rank partial sums, then
an all-reduce), a relative difference of order 1e-7 per gradient that Adam's normalised steps keep
at that scale, so parameters agree to ``atol = 1e-5`` after a few steps of ``lr = 1e-3``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lpc_fast.train import load_checkpoint
from lpc_fast.train.distributed import RANK_OFFSET_STRIDE, DistContext

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "train",
    "--method",
    "pc",
    "--dataset",
    "digits",
    "--steps",
    "5",
    "--batch-size",
    "16",
    "--num-langevin-steps",
    "4",
    "--encoder-objective",
    "jeffreys",
    "--model-latent-dim",
    "4",
    "--model-mlp-hidden",
    "16",
    "--num-threads",
    "1",
    "--png-samples",
    "4",
    "--no-progress",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_shards_cover_the_global_batch_and_noise_ranges_are_disjoint():
    rows = [DistContext(rank=r, world_size=4).shard(16) for r in range(4)]
    assert [list(range(16))[s] for s in rows] == [list(range(4 * r, 4 * r + 4)) for r in range(4)]
    # A rank's noise counters start RANK_OFFSET_STRIDE apart; a 64x40 chain of 300 steps per batch
    # would need > 10**9 batches to reach the next rank's range.
    per_batch = 300 * (64 * 40 // 4)
    assert RANK_OFFSET_STRIDE // per_batch > 10**9


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_training_equals_single_process_at_temperature_zero(tmp_path):
    single = tmp_path / "single"
    proc = subprocess.run(
        [sys.executable, "-m", "lpc_fast", *ARGS, "--out", str(single)],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "lpc_fast", *ARGS, "--out", str(ddp)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "data parallel: 2 processes, 8 images each" in proc.stderr
    a = load_checkpoint(single / "checkpoint.pt")["trainer"]
    b = load_checkpoint(ddp / "checkpoint.pt")["trainer"]
    assert a["step"] == b["step"] == 5
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-5, msg=key)
    # Logged losses are all-reduced means over ranks: the single-process global-batch means.
    la = [json.loads(s)["loss"] for s in (single / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(s)["loss"] for s in (ddp / "metrics.jsonl").read_text().splitlines()]
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-5, atol=0)
