"""The bookkeeping of ``benchmarks/gpu_check.sh``, checked without a GPU (its dry-run mode).

A GPU run is short and rare: a stage that fails, hangs or is cut by the time budget must show up
as such in ``status.txt``, and what ran must already be packed when the run stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    full_env = dict(os.environ, GPU_CHECK_DRY_RUN="1", **env)
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), str(tmp_path / "pack")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    status = {}
    lines = (tmp_path / "out" / "status.txt").read_text().splitlines()
    for line in lines[1:-1]:  # header and the elapsed-time line
        stage, rest = line.split(None, 1)
        status[stage] = rest
    return proc, status


def test_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_failed_and_hung_stages_are_visible(tmp_path: Path) -> None:
    proc, status = _run(tmp_path, GPU_CHECK_DRY_RUN_FAIL="bench-op", GPU_CHECK_DRY_RUN_HANG="smoke")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert status["smoke"].startswith("TIMED OUT (limit 2s)")
    assert status["bench-op"].startswith("FAILED rc=3")
    others = {k: v for k, v in status.items() if k not in ("smoke", "bench-op")}
    assert all(v.startswith("ok") for v in others.values()), status
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "stage smoke: TIMED OUT" in summary and "SOME STAGES FAILED" in summary
    # The pack holds the status, the summary and an archive with every stage's log.
    pack = tmp_path / "pack"
    assert sorted(p.name for p in pack.iterdir()) == ["gpu_check.tar.gz", "status.txt", "summary.txt"]
    with tarfile.open(pack / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"env.log", "smoke.log", "bench_op.log", "plot.log", "status.txt"} <= names
    assert "dry run: bench-op fails" in (tmp_path / "out" / "bench_op.log").read_text()


def test_stages_past_the_budget_are_skipped_visibly(tmp_path: Path) -> None:
    # The first stage hangs through the whole budget: nothing after it may start.
    proc, status = _run(tmp_path, GPU_CHECK_BUDGET="2", GPU_CHECK_DRY_RUN_HANG="env")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert status["env"].startswith(("TIMED OUT", "SKIPPED (budget used up)"))
    rest = [v for k, v in status.items() if k != "env"]
    assert all(v.startswith("SKIPPED (budget used up)") for v in rest), status


def test_stage_selection(tmp_path: Path) -> None:
    proc, status = _run(tmp_path, GPU_CHECK_STAGES="build pytest-gpu-ops")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status["build"].startswith("ok") and status["pytest-gpu-ops"].startswith("ok")
    assert status["smoke"].startswith("not selected")
    assert status["bench-op"].startswith("not selected")


def test_unknown_stage_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        env=dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_STAGES="smoke benchmark"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown stage 'benchmark'" in proc.stderr
