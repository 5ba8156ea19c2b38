"""Noise statistics of every backend's generator against N(0, 1) closed forms.

Each check is a two-sided 5-sigma bound (or a KS p-value floor of 5.7e-7, the same level): for a
correct generator each fires with probability ~5.7e-7, so this file's ~30 checks have a
false-alarm rate below 2e-5. The seeds are fixed, so a pass or failure is reproducible; they were
not chosen to pass.
"""

from __future__ import annotations

import math

import pytest
from _helpers import cpu_backend_params

import lpc_fast

pytestmark = pytest.mark.statistical
N = 2**20
FIVE_SIGMA_P = 5.7e-7


@pytest.fixture(scope="module")
def samples():
    cache = {}

    def get(backend):
        if backend not in cache:
            cache[backend] = lpc_fast.philox_normal(
                N, seed=20240601, offset=2**32 - 1000, backend=backend
            ).double()
        return cache[backend]

    return get


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_moments(samples, backend):
    x = samples(backend)
    n = x.numel()
    # Standard errors under N(0,1): mean 1/sqrt(n); variance sqrt(2/n); 3rd moment sqrt(15/n);
    # 4th moment sqrt(96/n) (Var[x^4] = 105 - 9).
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((x**3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((x**4).mean()) - 3) < 5 * math.sqrt(96 / n)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_kolmogorov_smirnov(samples, backend):
    scipy_stats = pytest.importorskip("scipy.stats")
    x = samples(backend)[: 2**18].numpy()
    assert scipy_stats.kstest(x, "norm").pvalue > FIVE_SIGMA_P


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5, 8])
def test_lag_correlations(samples, backend, lag):
    # Lags 1-3 pair elements of one Philox call (incl. the two outputs of one Box–Muller pair),
    # lag 4+ cross counters: every one must be uncorrelated; the sample correlation's sd is 1/sqrt(n).
    x = samples(backend)
    r = float((x[:-lag] * x[lag:]).mean())
    assert abs(r) < 5 / math.sqrt(x.numel() - lag)


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_successive_offsets_give_independent_noise(backend):
    # A step advances the offset by ceil(n/4): the next call's noise must be uncorrelated with it.
    n = 2**18
    inc = (n + 3) // 4
    a = lpc_fast.philox_normal(n, seed=3, offset=0, backend=backend).double()
    b = lpc_fast.philox_normal(n, seed=3, offset=inc, backend=backend).double()
    assert abs(float((a * b).mean())) < 5 / math.sqrt(n)
    c = lpc_fast.philox_normal(n, seed=4, offset=0, backend=backend).double()
    assert abs(float((a * c).mean())) < 5 / math.sqrt(n)
