"""Kernel-op counts of the digits LPC training step (eager op counts are deterministic).

The counts are benchmarks/bench_ops.py's: ops reaching the dispatcher below autograd, views and
metadata excluded (lpc_fast.opcount.KernelOpCounter), i.e. the kernel launches a GPU would see.
Targets (issue 19): <= 500 per LPC step, <= 16 per chain pass (one decoder gradient evaluation).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.fixture(scope="module")
def bench_ops():
    if torch.get_default_dtype() != torch.float32:  # pragma: no cover - the suite's default
        pytest.skip("counts are for float32 models")
    import bench_ops

    return bench_ops


def test_kernel_op_counter_excludes_views_and_counts_kernels():
    from lpc_fast.opcount import KernelOpCounter

    a = torch.ones(4, 3)
    with KernelOpCounter() as c:
        b = a.t().detach()[::2].unsqueeze(0)  # views only
        _ = (b + 1).sum()
    assert dict(c.counts) == {"add": 1, "sum": 1}


def test_digits_lpc_step_and_chain_pass_stay_within_the_targets(bench_ops):
    args = bench_ops.default_args()
    rows = {r["provider"]: r for r in bench_ops.measure(args)}
    lpc = rows["lpc_fused"]
    assert lpc["decoder_grad_evals_step"] == 22  # T + 1 chain passes and the reverse-KL pass
    assert lpc["ops_per_step"] <= bench_ops.TARGET_OPS_PER_LPC_STEP, lpc["most_common"]
    assert lpc["chain_eval"] <= bench_ops.TARGET_OPS_PER_CHAIN_EVAL
    # One fused likelihood kernel per decoder pass: 21 chain passes and the reverse-KL pass (the
    # decoder gradient of the kept samples is formed from the chain passes' records, not recomputed).
    assert dict(lpc["most_common"]).get("log_likelihood_grad", 0) == 22
