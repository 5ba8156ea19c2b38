"""The C++ CPU ops reject bad inputs with a RuntimeError that names the numbers (tests/_bad_inputs.py)."""

from __future__ import annotations

import pytest
from _bad_inputs import case_ids, run_case


@pytest.mark.parametrize("name", case_ids("cpu"))
def test_cpu_op_rejects_bad_input_in_its_own_process(name):
    run_case(name, "cpu")
