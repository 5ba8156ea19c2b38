"""Statistics of the reproduction: Student's t, Welch's test, one-sided verdicts and how verdicts combine.

Self-contained (no scipy in the core package). Every test is one-sided: a claim is ``supported`` only when
its test rejects at level ``alpha``, ``not supported`` when the opposite one-sided test rejects, otherwise
``inconclusive``. Rules that turn several tests into one verdict (:func:`combine_all`, :func:`cap_guard`)
live here too, so that they can be checked on constructed inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .common import fmt, fmt_p, json_clean

__all__ = [
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "Comparison",
    "cap_guard",
    "combine_all",
    "mean_se",
    "non_inferiority",
    "student_t_cdf",
    "superiority",
    "t_quantile",
    "welch",
]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` (real, > 0) degrees of freedom.

    Parameters
    ----------
    t : float
        The statistic (``±inf`` allowed).
    df : float
        Degrees of freedom.

    Returns
    -------
    float
        ``P(T <= t)``.
    """
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`student_t_cdf` (by bisection on ``[-1e4, 1e4]``).

    Parameters
    ----------
    p : float
        Probability in ``(0, 1)``.
    df : float
        Degrees of freedom (> 0).

    Returns
    -------
    float
        ``t`` with ``P(T <= t) = p``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    lo, hi = -1e4, 1e4
    for _ in range(80):  # 2e4 / 2**80: far below any reported digit
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample sd / sqrt(n)) and n; NaN where undefined."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def welch(
    a: Sequence[float], b: Sequence[float], resolution: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float, float]:
    """Welch's two-sample statistics for ``mean(a) - mean(b)``.

    Parameters
    ----------
    a, b : sequence of float
        Independent samples (at least two values each).
    resolution : (float, float)
        Measurement resolution of the values of ``a`` and of ``b`` (e.g. the spacing of evaluation
        points when the values are "steps until a target was first seen"). Each value is then only known
        to within an interval of that width, so the variance of a uniform rounding error,
        ``resolution**2 / 12``, is added to each group's sample variance.

    Returns
    -------
    (diff, se, df)
        The difference of means, its standard error and the Welch–Satterthwaite degrees of freedom
        (``nan`` when both groups have zero variance).
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's test needs at least two values per group")
    ma, sa, na = mean_se(a)
    mb, sb, nb = mean_se(b)
    # Squared standard errors of the means, with the rounding variance of each value added.
    va = sa * sa + resolution[0] ** 2 / 12.0 / na
    vb = sb * sb + resolution[1] ** 2 / 12.0 / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        return ma - mb, 0.0, math.nan
    df = (va + vb) ** 2 / ((va * va) / (na - 1) + (vb * vb) / (nb - 1))
    return ma - mb, se, df


@dataclass
class Comparison:
    """The outcome of one one-sided test of "A is better than B" (or "not worse by more than a margin").

    Attributes
    ----------
    verdict : str
        ``supported`` (the test rejects at ``alpha``), ``not supported`` (the opposite one-sided test
        rejects at ``alpha``: B is better, or A is worse by more than the margin) or ``inconclusive``.
    kind : str
        ``superiority`` or ``non-inferiority``.
    diff : float
        ``mean(A) - mean(B)`` in the metric's own units and sign.
    se, df : float
        Welch standard error and degrees of freedom.
    p_support, p_against : float or None
        One-sided p-values of the claim and of its opposite.
    ci90 : (float, float) or None
        Two-sided ``1 - 2 alpha`` confidence interval of ``diff`` (the interval the one-sided tests use).
    margin : float or None
        Non-inferiority margin (in the metric's units, always expressed as "worse by").
    """

    verdict: str
    kind: str
    metric: str
    alpha: float
    higher_is_better: bool
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    se_a: float
    se_b: float
    diff: float
    se: float
    df: float
    p_support: float | None
    p_against: float | None
    ci: tuple[float, float] | None
    margin: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers become None)."""
        return json_clean(dataclasses.asdict(self))

    def describe(self) -> str:
        """One line: means ± se, difference, interval, p-values."""
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        parts = [
            f"{self.metric} ({arrow}): A = {fmt(self.mean_a)} ± {fmt(self.se_a)} (n={self.n_a}), "
            f"B = {fmt(self.mean_b)} ± {fmt(self.se_b)} (n={self.n_b}); A − B = {fmt(self.diff)}"
        ]
        if self.ci is not None:
            parts.append(f"{100 * (1 - 2 * self.alpha):.0f}% CI [{fmt(self.ci[0])}, {fmt(self.ci[1])}]")
        if self.margin is not None:
            parts.append(f"margin {fmt(self.margin)}")
        if self.p_support is not None:
            parts.append(f"p = {fmt_p(self.p_support)} (opposite: {fmt_p(self.p_against)})")
        text = "; ".join(parts) + f" → {self.verdict}"
        return text + (f" ({self.note})" if self.note else "")


def _one_sided(
    a: Sequence[float],
    b: Sequence[float],
    *,
    alpha: float,
    higher_is_better: bool,
    margin: float,
    kind: str,
    metric: str,
    resolution: tuple[float, float] = (0.0, 0.0),
) -> Comparison:
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    ma, sa, na = mean_se(a)
    mb, sb, nb = mean_se(b)
    common = dict(
        kind=kind,
        metric=metric,
        alpha=alpha,
        higher_is_better=higher_is_better,
        n_a=na,
        n_b=nb,
        mean_a=ma,
        mean_b=mb,
        se_a=sa,
        se_b=sb,
        margin=margin if kind == "non-inferiority" else None,
    )
    if na < 2 or nb < 2 or not all(math.isfinite(v) for v in a + b):
        return Comparison(
            verdict=INCONCLUSIVE,
            diff=ma - mb if na and nb else math.nan,
            se=math.nan,
            df=math.nan,
            p_support=None,
            p_against=None,
            ci=None,
            note="needs at least two finite values per group",
            **common,
        )
    diff, se, df = welch(a, b, resolution)
    if se == 0.0:
        # Two constant groups: a t-test is undefined and "significance" would only reflect that the
        # measurement could not vary; never call that evidence.
        return Comparison(
            verdict=INCONCLUSIVE,
            diff=diff,
            se=0.0,
            df=math.nan,
            p_support=None,
            p_against=None,
            ci=None,
            note="no spread in either group: the test is undefined",
            **common,
        )
    # Work with "badness" d (positive = A worse): the claim is d < margin (margin 0 for superiority).
    d = -diff if higher_is_better else diff
    t = (d - margin) / se
    p_support = student_t_cdf(t, df)
    p_against = 1.0 - p_support
    q = t_quantile(1.0 - alpha, df)
    ci = (diff - q * se, diff + q * se)
    if p_support < alpha:
        verdict = SUPPORTED
    elif p_against < alpha:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return Comparison(
        verdict=verdict, diff=diff, se=se, df=df, p_support=p_support, p_against=p_against, ci=ci, **common
    )


def superiority(
    a: Sequence[float],
    b: Sequence[float],
    *,
    alpha: float = 0.05,
    higher_is_better: bool = False,
    metric: str = "metric",
    resolution: tuple[float, float] = (0.0, 0.0),
) -> Comparison:
    """Test "A is better than B" with a one-sided Welch t-test.

    ``supported`` when ``H0: A no better than B`` is rejected at ``alpha``; ``not supported`` when the
    opposite one-sided test (B better than A) rejects at ``alpha``; otherwise ``inconclusive``. Fewer than two
    finite values in either group, or no spread at all in both, is always ``inconclusive``.

    Parameters
    ----------
    a, b : sequence of float
        Per-seed values of the two methods.
    alpha : float
        One-sided level.
    higher_is_better : bool
        Direction of the metric.
    metric : str
        Name used in reports.
    resolution : (float, float)
        Measurement resolution of the values of A and B (see :func:`welch`).

    Returns
    -------
    Comparison
    """
    return _one_sided(
        a,
        b,
        alpha=alpha,
        higher_is_better=higher_is_better,
        margin=0.0,
        kind="superiority",
        metric=metric,
        resolution=resolution,
    )


def non_inferiority(
    a: Sequence[float],
    b: Sequence[float],
    margin: float,
    *,
    alpha: float = 0.05,
    higher_is_better: bool = False,
    metric: str = "metric",
) -> Comparison:
    """Test "A matches or beats B": A is worse than B by less than ``margin`` (one-sided Welch t-test).

    ``supported`` when ``H0: A worse by at least margin`` is rejected at ``alpha`` (the upper end of the
    ``1 - 2 alpha`` interval of the deficit lies below the margin); ``not supported`` when ``H0: A worse by at
    most margin`` is rejected (A is significantly worse than the margin allows); otherwise ``inconclusive``.

    Parameters
    ----------
    a, b : sequence of float
        Per-seed values.
    margin : float
        Largest deficit of A (in the metric's units, >= 0) still counted as "matching".
    alpha, higher_is_better, metric
        As in :func:`superiority`.

    Returns
    -------
    Comparison
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return _one_sided(
        a,
        b,
        alpha=alpha,
        higher_is_better=higher_is_better,
        margin=float(margin),
        kind="non-inferiority",
        metric=metric,
    )


def combine_all(verdicts: Sequence[str]) -> str:
    """Verdict of a claim made of several parts that must all hold.

    ``supported`` only if every part is; ``not supported`` if any part is; else ``inconclusive``.
    """
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def cap_guard(verdict: str, a_capped: bool, b_capped: bool) -> tuple[str, str]:
    """Verdict of a "trained to convergence" comparison when some runs stopped at the budget cap.

    A run stopped by the cap had not converged, so its metric could still improve. A verdict in favour of
    A (``supported``) therefore stands only if B converged, and a verdict against A (``not supported``)
    only if A converged; otherwise the comparison says nothing about converged models and becomes
    ``inconclusive``.

    Parameters
    ----------
    verdict : str
        The test's verdict.
    a_capped, b_capped : bool
        Whether any run of A / of B stopped at the cap.

    Returns
    -------
    (verdict, note)
        The guarded verdict and a note (empty when unchanged).
    """
    if verdict == SUPPORTED and b_capped:
        return INCONCLUSIVE, "B stopped at the cap (not converged): A's lead may not last"
    if verdict == NOT_SUPPORTED and a_capped:
        return INCONCLUSIVE, "A stopped at the cap (not converged): B's lead may not last"
    return verdict, ""
