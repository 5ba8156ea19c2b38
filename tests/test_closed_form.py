"""Single steps in closed form: hand-written per-element formulas, not lpc_fast.reference.

Each case picks settings where the update reduces to a short formula written out here element by
element in Python floats (float64), with the contract's normals (lpc_fast.philox_normal from the
reference generator) as the only shared ingredient. Checked on every backend, for the single op and
for the foreach op (two tensors: the second draws its noise ``ceil(n1 / 4)`` counters later).

* ``prior_grad=True``, preconditioned, step 1 from ``v = 0`` with bias correction: the drive is
  ``s = g + z``, ``v' = (1 - beta) s**2``, ``v_hat = s**2``, so ``p = 1 / (eps + |s|)``.
* ``prior_grad=True`` without preconditioning: ``z' = (1 - eta) z - eta g + sqrt(2 eta tau) xi``,
  ``v`` untouched.
* a frozen preconditioner (``beta = 1``, ``bias_correction=False``) with a per-element non-zero
  ``v_i = (0.25 + 0.5 i)**2``: ``p_i = 1 / (eps + 0.25 + 0.5 i)``, ``v' = v`` bit for bit; with and
  without ``prior_grad``.
* ``weight_decay = lambda`` (a Gaussian prior of precision ``lambda != 1``), the same three settings:
  the drive is ``s = g + lambda z``; without preconditioning
  ``z' = (1 - eta lambda) z - eta g + sqrt(2 eta tau) xi``.
* the backward of the ULA step with ``weight_decay = lambda``: ``z'`` is affine in ``(z, g)``, so the
  vector-Jacobian product of a cotangent ``a`` is ``((1 - eta lambda) a, -eta a)``.

Tolerances: float64 kernels compute in double (only the operation order differs from the formula):
1e-10. float32 kernels compute in float32 with normals accurate to ~1e-6 relative: 2e-5 (see
tests/_helpers.TOLERANCES).
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import TOLERANCES, cpu_backend_params

import lpc_fast

SEED, OFFSET = 2**40 + 3, 2**32 - 2  # the offset carries into the high counter word
ETA, TAU, EPS, BETA = 0.05, 0.7, 1e-3, 0.9
LAM = 2.5  # weight_decay: a prior precision other than 1 (eta * LAM = 0.125)
N1, N2 = 37, 10  # foreach: a second tensor of another size


def _noise(n: int, offset: int) -> list[float]:
    return lpc_fast.philox_normal(
        n, seed=SEED, offset=offset, dtype=torch.float64, backend="reference"
    ).tolist()


def _inputs(n: int, shift: float):
    # Values of both signs and a range of magnitudes; g + z is never 0.
    z = [math.sin(1.3 * i + shift) * 2.0 for i in range(n)]
    g = [math.cos(0.7 * i - shift) + 0.1 for i in range(n)]
    return z, g


def _expect(case: str, z: list[float], g: list[float], v: list[float], xi: list[float]):
    """The closed form of each case, element by element."""
    zn, vn = [], []
    for zi, gi, vi, x in zip(z, g, v, xi):
        lam = LAM if case.startswith("wd-") or case == "frozen-wd" else 1.0
        if case in ("prior-pre-step1", "wd-pre-step1"):
            s = gi + lam * zi
            p = 1.0 / (EPS + abs(s))
            zn.append(zi - ETA * p * s + math.sqrt(2.0 * ETA * TAU * p) * x)
            vn.append((1.0 - BETA) * s * s)
        elif case in ("prior-ula", "wd-ula"):
            zn.append((1.0 - ETA * lam) * zi - ETA * gi + math.sqrt(2.0 * ETA * TAU) * x)
            vn.append(vi)
        else:  # frozen v, with or without the prior's gradient
            s = gi + lam * zi if case in ("frozen-prior", "frozen-wd") else gi
            p = 1.0 / (EPS + math.sqrt(vi))
            zn.append(zi - ETA * p * s + math.sqrt(2.0 * ETA * TAU * p) * x)
            vn.append(vi)
    return zn, vn


CASES = {
    "prior-pre-step1": dict(step=1, beta=BETA, bias_correction=True, precondition=True, prior_grad=True),
    "prior-ula": dict(step=4, beta=BETA, precondition=False, prior_grad=True),
    "frozen": dict(step=6, beta=1.0, bias_correction=False, precondition=True, prior_grad=False),
    "frozen-prior": dict(step=6, beta=1.0, bias_correction=False, precondition=True, prior_grad=True),
    "wd-pre-step1": dict(step=1, beta=BETA, bias_correction=True, precondition=True, weight_decay=LAM),
    "wd-ula": dict(step=4, beta=BETA, precondition=False, weight_decay=LAM),
    "frozen-wd": dict(step=6, beta=1.0, bias_correction=False, precondition=True, weight_decay=LAM),
}


def _state(case: str, n: int):
    if case.startswith("frozen"):
        return [(0.25 + 0.5 * i) ** 2 for i in range(n)]  # per element, never 0
    if case in ("prior-ula", "wd-ula"):
        return [0.1 * i for i in range(n)]  # must come back untouched
    return [0.0] * n


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("op", ["single", "foreach"])
def test_single_step_closed_form(backend, dtype, case, op):
    sizes = [N1] if op == "single" else [N1, N2]
    offsets = [OFFSET, OFFSET + (N1 + 3) // 4]  # the second tensor's noise follows the first's
    zs, gs, vs, want = [], [], [], []
    for k, n in enumerate(sizes):
        z, g = _inputs(n, shift=0.4 * k)
        v = _state(case, n)
        zs.append(torch.tensor(z, dtype=dtype))
        gs.append(torch.tensor(g, dtype=dtype))
        vs.append(torch.tensor(v, dtype=torch.float32))
    # The formulas see the inputs as stored (z and g in dtype, v in float32).
    for k, n in enumerate(sizes):
        stored = (zs[k].double().tolist(), gs[k].double().tolist(), vs[k].double().tolist())
        want.append(_expect(case, *stored, _noise(n, offsets[k])))
    v_before = [v.clone() for v in vs]
    kw = dict(CASES[case], step_size=ETA, eps=EPS, temperature=TAU, seed=SEED, offset=OFFSET, backend=backend)
    if op == "single":
        lpc_fast.langevin_step_(zs[0], gs[0], vs[0], **kw)
    else:
        lpc_fast.langevin_step_foreach_(zs, gs, vs, **kw)
    rtol, atol = TOLERANCES[dtype]
    for k in range(len(sizes)):
        z_want, v_want = want[k]
        torch.testing.assert_close(
            zs[k].double(), torch.tensor(z_want, dtype=torch.float64), rtol=rtol, atol=atol
        )
        if case in ("prior-pre-step1", "wd-pre-step1"):
            # v' = (1 - beta) s**2 is computed in the compute type and stored as float32.
            torch.testing.assert_close(
                vs[k].double(), torch.tensor(v_want, dtype=torch.float64), rtol=2e-6, atol=1e-7
            )
        else:
            assert torch.equal(vs[k], v_before[k]), "a frozen (or unused) preconditioner must not change"


@pytest.mark.parametrize("backend", cpu_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ula_weight_decay_backward_closed_form(backend, dtype):
    z, g = _inputs(N1, shift=0.2)
    a = [math.cos(2.1 * i) for i in range(N1)]  # the cotangent of z'
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    gt = torch.tensor(g, dtype=dtype, requires_grad=True)
    v = torch.zeros(N1)
    z_new, _ = lpc_fast.langevin_step(
        zt, gt, v, step=2, step_size=ETA, temperature=TAU, precondition=False, weight_decay=LAM,
        seed=SEED, offset=OFFSET, backend=backend,
    )  # fmt: skip
    grad_z, grad_g = torch.autograd.grad(z_new, (zt, gt), torch.tensor(a, dtype=dtype))
    rtol, atol = TOLERANCES[dtype]
    want_z = torch.tensor([(1.0 - ETA * LAM) * ai for ai in a], dtype=torch.float64)
    want_g = torch.tensor([-ETA * ai for ai in a], dtype=torch.float64)
    torch.testing.assert_close(grad_z.double(), want_z, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad_g.double(), want_g, rtol=rtol, atol=atol)
