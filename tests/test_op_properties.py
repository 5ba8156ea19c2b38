"""Property tests: random shapes, strides, dtypes, seeds/offsets near 2**32 and 2**64, and
hyper-parameters at their edges, on every backend, against the float64 reference.

The slow suite runs at least 1000 cases per backend (``-m slow``, or LPC_FAST_PROPERTY_CASES);
the default run keeps a smaller sample. Hypothesis is derandomised so a run is reproducible.
"""

from __future__ import annotations

import os

import pytest
import torch
from _helpers import TOLERANCES, cpu_backend_params

import lpc_fast
from lpc_fast import reference, rng

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

U64 = 2**64
BOUNDARY_U64 = st.one_of(
    st.integers(0, 64),
    st.integers(2**32 - 64, 2**32 + 64),
    st.integers(2**63 - 64, 2**63 + 64),
    st.integers(U64 - 64, U64 - 1),
    st.integers(0, U64 - 1),
)
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 37), min_size=ndim, max_size=ndim)))
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    beta = draw(st.sampled_from([0.0, 1e-6, 0.5, 0.9, 0.99, 0.999999, 1.0]))
    bias_correction = False if beta == 1.0 else draw(st.booleans())
    return dict(
        shape=shape,
        layout=layout,
        dtype=draw(DTYPES),
        seed=draw(BOUNDARY_U64),
        offset=draw(BOUNDARY_U64),
        step=draw(st.sampled_from([1, 2, 3, 17, 1000, 2**31 - 1])),
        step_size=draw(st.sampled_from([1e-6, 1e-3, 0.05, 0.5, 2.0])),
        beta=beta,
        eps=draw(st.sampled_from([1e-8, 1e-3, 1.0, 1e3])),
        temperature=draw(st.sampled_from([0.0, 1e-4, 1.0, 10.0])),
        bias_correction=bias_correction,
        precondition=draw(st.booleans()),
        prior_grad=draw(st.booleans()),
        data_seed=draw(st.integers(0, 2**31 - 1)),
    )


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "strided":
        buf = torch.zeros(*t.shape, 3, dtype=t.dtype)
        buf[..., 1] = t
        return buf[..., 1]
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


def check_case(backend: str, c: dict) -> None:
    gen = torch.Generator().manual_seed(c["data_seed"])
    dtype = c["dtype"]
    z = _layout(torch.randn(c["shape"], generator=gen, dtype=torch.float64).to(dtype), c["layout"])
    g = _layout(torch.randn(c["shape"], generator=gen, dtype=torch.float64).to(dtype), c["layout"])
    v = _layout(torch.rand(c["shape"], generator=gen, dtype=torch.float64).float() ** 2, c["layout"])
    hyper = {k: c[k] for k in ("step_size", "beta", "eps", "temperature", "bias_correction")}
    hyper.update(precondition=c["precondition"], prior_grad=c["prior_grad"])
    xi = rng.philox_normal_reference(z.numel(), seed=c["seed"], offset=c["offset"]).view(c["shape"])
    z64, g64, v64 = z.double(), g.double(), v.double()
    z_exp, v_exp = reference.langevin_update(z64, g64, v64, xi, step=c["step"], **hyper)

    # Error budget per element: the tolerance scales with the magnitude of each term of the update.
    s = g64 + z64 if c["prior_grad"] else g64
    if c["precondition"]:
        v_hat = v_exp * reference.bias_correction_factor(c["beta"], c["step"], c["bias_correction"])
        p = 1.0 / (c["eps"] + v_hat.sqrt())
    else:
        p = torch.ones_like(s)
    drift = c["step_size"] * p * s.abs()
    diffusion = (2 * c["step_size"] * c["temperature"] * p).sqrt() * (xi.abs() + 1)
    scale = z64.abs() + drift + diffusion
    rtol, atol = TOLERANCES[dtype]

    z_run, v_run = z.clone(), v.clone()
    if c["layout"] != "contiguous":
        z_run, v_run = _layout(z.contiguous(), c["layout"]), _layout(v.contiguous(), c["layout"])
    lpc_fast.langevin_step_(
        z_run, g, v_run, step=c["step"], seed=c["seed"], offset=c["offset"], backend=backend, **hyper
    )
    err = (z_run.double() - z_exp).abs()
    bound = atol + rtol * scale
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item()} for {c}"
    if c["precondition"]:
        torch.testing.assert_close(v_run.double(), v_exp.float().double(), rtol=2e-6, atol=1e-30)
    else:
        assert torch.equal(v_run, v)


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SLOW_CASES = int(os.environ.get("LPC_FAST_PROPERTY_CASES", "1000"))


@pytest.mark.parametrize("backend", cpu_backend_params())
def test_random_cases_match_reference(backend):
    @_settings(60)
    @given(cases())
    def run(c):
        check_case(backend, c)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backend_params())
def test_thousand_random_cases_match_reference(backend):
    @_settings(SLOW_CASES)
    @given(cases())
    def run(c):
        check_case(backend, c)

    run()
