"""Fit the float erfc of ``csrc/include/likelihood_math.h``: ``erfcx(z) = t Q(t)``, ``t = 1 / (1 + z / 2)``.

Prints the power-basis coefficients of ``Q`` (degree 11, Chebyshev least squares on ``t`` in (0, 1],
i.e. every ``z >= 0``, from 30-digit mpmath values) and the maximum relative error of ``t Q(t)``
against ``erfcx`` on ``z`` in [0, 8], in float64 and evaluated by Horner's rule in float32.

Usage: ``python build_tools/fit_erfcx.py`` (needs numpy and mpmath).
"""

from __future__ import annotations

import mpmath
import numpy as np

DEGREE = 11


def erfcx(z: float) -> float:
    return float(mpmath.erfc(z) * mpmath.exp(z * z))


def main() -> None:
    mpmath.mp.dps = 30
    t = np.cos(np.linspace(0.0, np.pi, 3000)) * 0.5 + 0.5
    t = t[t > 1e-4]
    z = (1.0 / t - 1.0) / 0.5
    f = np.array([erfcx(v) for v in z]) / t
    cheb = np.polynomial.chebyshev.Chebyshev.fit(t, f, DEGREE, domain=[0.0, 1.0])
    coef = cheb.convert(kind=np.polynomial.Polynomial).coef
    print("Q(t) coefficients, t^0 first:", [float(c) for c in coef])
    zz = np.linspace(0.0, 8.0, 4001)
    ref = np.array([erfcx(v) for v in zz])
    tt = 1.0 / (1.0 + 0.5 * zz)
    print(
        "max rel. error (float64):", np.max(np.abs(np.polynomial.polynomial.polyval(tt, coef) * tt / ref - 1))
    )
    t32 = tt.astype(np.float32)
    acc = np.full_like(t32, np.float32(coef[-1]))
    for c in coef[-2::-1]:
        acc = (acc * t32 + np.float32(c)).astype(np.float32)
    print("max rel. error (float32 Horner):", np.max(np.abs(acc * t32 / ref - 1)))


if __name__ == "__main__":
    main()
