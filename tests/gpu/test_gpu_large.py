"""A tensor of 2**31 + 5 elements: 64-bit indexing in every GPU kernel.

z and grad are float16 (4 GiB each) and v float32 (8 GiB). Inputs are constant, so v' is the
same value everywhere (checked for every element: nothing was skipped past 2**31) and z' differs
only by its noise; z' is checked against the float64 reference, with the noise of exactly those
indices, around 2**31 and at the very end.
"""

from __future__ import annotations

import pytest
import torch
from _gpu_common import DEVICE, skip_unless_backend

import lpc_fast
from lpc_fast import reference, rng

pytestmark = pytest.mark.gpu

N = 2**31 + 5
NEEDED_BYTES = N * (2 + 2 + 4 + 1) + (1 << 30)  # z, grad, v, one bool mask, slack
HYPER = dict(step_size=1e-2, beta=0.99, eps=1e-3, temperature=1.0, bias_correction=True)
Z0, G0, V0 = 0.25, -0.5, 0.125
SEED, OFFSET, STEP = 2024, 2**32 - 100, 1


# The start, the int32 boundary (unaligned start) and the very end (a partial last chunk).
WINDOWS = [(0, 64), (2**31 - 61, 2**31 + 3), (N - 69, N)]


def _expected(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    start4 = start - start % 4
    noise = rng.philox_normal_reference(stop - start4, seed=SEED, offset=OFFSET + start4 // 4)[
        start - start4 :
    ]
    n = stop - start
    z = torch.full((n,), float(torch.tensor(Z0, dtype=torch.float16)), dtype=torch.float64)
    g = torch.full((n,), float(torch.tensor(G0, dtype=torch.float16)), dtype=torch.float64)
    v = torch.full((n,), V0, dtype=torch.float64)
    return reference.langevin_update(z, g, v, noise, step=STEP, **HYPER)


@pytest.fixture(scope="module")
def big_tensors():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    free, _total = torch.cuda.mem_get_info()
    if free < NEEDED_BYTES:
        pytest.skip(f"needs {NEEDED_BYTES / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    z = torch.empty(N, dtype=torch.float16, device=DEVICE)
    g = torch.empty(N, dtype=torch.float16, device=DEVICE)
    v = torch.empty(N, dtype=torch.float32, device=DEVICE)
    yield z, g, v
    del z, g, v
    torch.cuda.empty_cache()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_step_past_int32_indexing(backend, big_tensors):
    skip_unless_backend(backend)
    z, g, v = big_tensors
    z.fill_(Z0)
    g.fill_(G0)
    v.fill_(V0)
    lpc_fast.langevin_step_(z, g, v, step=STEP, seed=SEED, offset=OFFSET, backend=backend, **HYPER)
    torch.cuda.synchronize()

    # v' is deterministic and identical for every element.
    v_expected = torch.tensor(0.99 * V0 + 0.01 * G0 * G0, dtype=torch.float32).item()
    v_first = v[0].item()
    assert abs(v_first - v_expected) <= 1e-6 * abs(v_expected)
    assert bool((v == v_first).all()), "some elements of v were not updated identically"

    for start, stop in WINDOWS:
        z_exp, v_exp = _expected(start, stop)
        torch.testing.assert_close(z[start:stop].cpu().double(), z_exp, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(v[start:stop].cpu().double(), v_exp, rtol=2e-5, atol=2e-5)
