"""``build_tools/check_cuda_build.py`` on the build under test (any torch, no GPU).

``make check-cuda-build`` runs the script against a CUDA build; here it must find the C++ ops,
leave out the ops defined in Python, and refuse a CPU-only build with the reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import lpc_fast
from lpc_fast.dispatch import get_backend

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "check_cuda_build", ROOT / "build_tools" / "check_cuda_build.py"
)
ccb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ccb
_spec.loader.exec_module(ccb)

C = pytest.importorskip("lpc_fast._C", reason="the C++ extension is not built")


def test_public_ops_are_the_extension_ops() -> None:
    ops = ccb.public_ops()
    assert "lpc_fast::langevin_step_" in ops and "lpc_fast::philox_uint32_" in ops
    # The float64 reference registers Python ops in the same namespace: not the extension's.
    all_ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("lpc_fast::")]
    assert any(n.startswith("lpc_fast::reference_") for n in all_ops)
    assert not any(n.split("::")[1].startswith(("reference_", "triton_")) for n in ops)
    # Every extension op has a CPU kernel, whichever torch it was built for.
    assert all(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU") for op in ops)


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_cpu_torch_is_refused_with_the_reason() -> None:
    assert ccb.check() == [f"torch {torch.__version__} is a CPU build: this checks a CUDA build"]


@pytest.mark.skipif(C.with_cuda(), reason="this build has CUDA kernels")
def test_cuda_backend_reason_says_built_without_cuda() -> None:
    ok, reason = get_backend("cuda").availability()
    assert not ok
    assert "built without CUDA kernels" in reason
    assert lpc_fast.backends()  # the table itself never raises
