"""The C++ ops reject bad inputs on the GPU machine, each case in its own process (tests/_bad_inputs.py).

The CPU cases run here too: the GPU machine builds the extension with its own compiler, and a
build that formats numbers wrongly shows on both devices' checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _gpu_common import skip_unless_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared case table
from _bad_inputs import case_ids, run_case  # noqa: E402


@pytest.mark.parametrize("name", case_ids("cuda"))
def test_cuda_op_rejects_bad_input_in_its_own_process(name):
    skip_unless_backend("cuda")
    run_case(name, "cuda")


@pytest.mark.parametrize("name", case_ids("cpu"))
def test_cpu_op_rejects_bad_input_on_the_gpu_machine(name):
    run_case(name, "cpu")
