"""Check the paper's claims (LPC.md §4) in the open: train every method, evaluate, test, report.

The runner trains, with the same model, likelihood, optimizer, batch size and seeds,

* the VAE baseline (run for ``vae_steps_factor`` times as many SGD steps, so that it has converged);
* LPC from the prior (``T = prior_chain_length``);
* LPC with the encoder warm start for each encoder objective (forward KL, reverse KL, Jeffreys), with and
  without preconditioning;
* deterministic predictive coding (temperature 0, encoder warm start, Jeffreys, preconditioned);
* a Langevin step-size sweep of LPC (encoder, Jeffreys) with and without preconditioning;

over several seeds each. Every ``eval_every`` SGD steps it records cheap metrics (test-set importance-sampled
negative log-likelihood with a small K and a Fréchet distance of model samples in the offline feature space)
together with the SGD step, the decoder gradient evaluations and the training wall-clock; at the end it runs
:func:`lpc_fast.eval.evaluate_model` (K >= 1000 by default). The claims are then decided by one-sided Welch
t-tests over seeds (superiority) or by a non-inferiority test against a stated margin; a claim is marked
``supported`` only when its test rejects at level ``alpha``.

Outputs in ``--out``: ``results.json`` (every metric of every run at every evaluation point, config,
versions, backend), ``REPORT.md`` (tables and verdicts) and PNG figures (see :mod:`lpc_fast.eval.plots`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Comparison",
    "ReproConfig",
    "CellSpec",
    "build_cells",
    "build_parser",
    "combine_all",
    "evaluate_claims",
    "main",
    "non_inferiority",
    "quick_config",
    "rebuild_report",
    "run_reproduction",
    "student_t_cdf",
    "superiority",
    "welch",
    "write_report",
]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
RESULTS_FORMAT = 1
#: Sample grids of the first seed of each main cell (tensors), written next to ``results.json``.
GRIDS_FILE = "sample_grids.pt"

# ---------------------------------------------------------------------------------------------------
# Statistics (self-contained so that the core package needs no scipy)
# ---------------------------------------------------------------------------------------------------


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


def _t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`student_t_cdf` by bisection (only used for reported intervals)."""
    lo, hi = -1e4, 1e4
    for _ in range(64):  # 2e4 / 2**64: far below any reported digit
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _mean_se(values: Sequence[float]) -> tuple[float, float, int]:
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
    ma, sa, na = _mean_se(a)
    mb, sb, nb = _mean_se(b)
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
        return _json_clean(dataclasses.asdict(self))

    def describe(self) -> str:
        """One line: means ± se, difference, interval, p-values."""
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        parts = [
            f"{self.metric} ({arrow}): A = {_fmt(self.mean_a)} ± {_fmt(self.se_a)} (n={self.n_a}), "
            f"B = {_fmt(self.mean_b)} ± {_fmt(self.se_b)} (n={self.n_b}); A − B = {_fmt(self.diff)}"
        ]
        if self.ci is not None:
            parts.append(f"{100 * (1 - 2 * self.alpha):.0f}% CI [{_fmt(self.ci[0])}, {_fmt(self.ci[1])}]")
        if self.margin is not None:
            parts.append(f"margin {_fmt(self.margin)}")
        if self.p_support is not None:
            parts.append(f"p = {_fmt_p(self.p_support)} (opposite: {_fmt_p(self.p_against)})")
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
    ma, sa, na = _mean_se(a)
    mb, sb, nb = _mean_se(b)
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
    q = _t_quantile(1.0 - alpha, df)
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


# ---------------------------------------------------------------------------------------------------
# Configuration and the cells of the experiment
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReproConfig:
    """Budget and settings of a reproduction run.

    Attributes
    ----------
    dataset : str
        Any name :func:`lpc_fast.data.load_dataset` accepts (``digits``, ``shapes32``, ``npz:PATH`` ...).
    architecture : {"auto", "mlp", "conv"}
        ``auto`` picks the conv network for images of side >= 32, else the MLP.
    seeds : int
        Seeds per cell (``0 .. seeds-1``).
    steps : int
        SGD steps of every LPC / PC run.
    vae_steps_factor : int
        The VAE runs ``steps * vae_steps_factor`` SGD steps (it is ~T times cheaper per step and must
        converge for a fair comparison); it is also fully evaluated at ``steps``.
    eval_every : int
        SGD steps between cheap evaluations.
    cheap_is_samples, cheap_eval_points, cheap_generated : int
        K, test points and generated images of the cheap evaluations.
    num_is_samples, num_eval_points, num_generated : int
        The same for the final :func:`lpc_fast.eval.evaluate_model` (capped by the test-set size).
    encoder_chain_length, prior_chain_length : int
        T with the encoder warm start / from the prior.
    step_size : float
        Langevin step size of every cell outside the sweep.
    sweep_step_sizes : tuple of float
        Step sizes of the robustness sweep (run with and without preconditioning).
    objectives : tuple of str
        Encoder objectives compared.
    batch_size, lr : int, float
        Minibatch size and Adam learning rate (both networks).
    alpha : float
        One-sided level of every test.
    nll_margin_rel, fid_margin_rel : float
        Non-inferiority margins of "matches the VAE", as fractions of the VAE's mean.
    target_tol_rel : float
        Convergence target tolerance (fraction of the target NLL).
    grid_samples : int
        Images in each method's sample grid.
    device, backend : str or None
        Torch device and Langevin kernel backend (None: automatic).
    threads : int
        Torch CPU threads per worker process.
    jobs : int
        Worker processes (runs are independent; 1 runs everything in this process).
    quick : bool
        Marks a CI-sized run (the report says its verdicts are not evidence).
    cells : tuple of str
        Run only the cells whose names start with one of these prefixes (empty: all). Claims whose cells
        were not run come out inconclusive.
    """

    dataset: str = "digits"
    architecture: str = "auto"
    seeds: int = 3
    steps: int = 400
    vae_steps_factor: int = 4
    eval_every: int = 20
    cheap_is_samples: int = 64
    cheap_eval_points: int = 300
    cheap_generated: int = 300
    num_is_samples: int = 1000
    num_eval_points: int = 500
    num_generated: int = 2000
    encoder_chain_length: int = 20
    prior_chain_length: int = 100
    step_size: float = 0.05
    sweep_step_sizes: tuple[float, ...] = (0.00232, 0.0108, 0.05, 0.232)
    objectives: tuple[str, ...] = ("forward_kl", "reverse_kl", "jeffreys")
    batch_size: int = 64
    lr: float = 1e-3
    alpha: float = 0.05
    nll_margin_rel: float = 0.02
    fid_margin_rel: float = 0.10
    target_tol_rel: float = 0.01
    grid_samples: int = 36
    device: str | None = None
    backend: str | None = None
    threads: int = 1
    jobs: int = 1
    quick: bool = False
    cells: tuple[str, ...] = ()

    def validate(self) -> ReproConfig:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("seeds", "steps", "vae_steps_factor", "eval_every", "threads", "jobs", "grid_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cheap_is_samples", "num_is_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if self.architecture not in ("auto", "mlp", "conv"):
            raise ValueError(f"architecture must be auto, mlp or conv, got {self.architecture!r}")
        if not self.sweep_step_sizes or any(not s > 0 for s in self.sweep_step_sizes):
            raise ValueError("sweep_step_sizes must be a non-empty list of positive numbers")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if "jeffreys" not in self.objectives:
            raise ValueError("objectives must include jeffreys (the paper's final method)")
        names = [c.name for c in build_cells(self)]
        for prefix in self.cells:
            if not any(n.startswith(prefix) for n in names):
                raise ValueError(f"cells: {prefix!r} matches none of {', '.join(names)}")
        return self


def quick_config(**overrides: Any) -> ReproConfig:
    """The CI-sized configuration of ``--quick`` (about a minute on two cores).

    Tiny budgets, two seeds, a two-point sweep and small K; every artifact is still written, but the
    verdicts of such a run are not evidence (the report says so).
    """
    base = dict(
        seeds=2,
        steps=30,
        vae_steps_factor=4,
        eval_every=10,
        cheap_is_samples=16,
        cheap_eval_points=150,
        cheap_generated=150,
        num_is_samples=100,
        num_eval_points=150,
        num_generated=300,
        prior_chain_length=10,
        encoder_chain_length=10,
        sweep_step_sizes=(0.01, 0.05),
        grid_samples=16,
        quick=True,
    )
    base.update(overrides)
    return ReproConfig(**base)


@dataclass
class CellSpec:
    """One method / setting of the experiment, run once per seed.

    Attributes
    ----------
    name : str
        Stable key (used in ``results.json``).
    label : str
        Human-readable description.
    group : str
        ``main`` (compared in the claims and curves) or ``sweep`` (step-size sweep only).
    overrides : dict
        :class:`lpc_fast.train.TrainConfig` fields.
    steps : int
        SGD steps.
    full_eval_steps : tuple of int
        Extra steps (besides the last) at which the full evaluation runs.
    """

    name: str
    label: str
    group: str
    overrides: dict[str, Any]
    steps: int
    full_eval_steps: tuple[int, ...] = ()
    precondition: bool | None = None
    step_size: float | None = None


def _pre_tag(precondition: bool) -> str:
    return "pre" if precondition else "ula"


def lpc_cell_name(objective: str, precondition: bool) -> str:
    """Name of the encoder-warm-start LPC cell of ``objective`` with or without preconditioning."""
    return f"lpc_{objective}_{_pre_tag(precondition)}"


def build_cells(cfg: ReproConfig) -> list[CellSpec]:
    """The cells of the experiment (see the module docstring), in report order."""
    n = cfg.steps
    lpc = dict(method="lpc", langevin_step_size=cfg.step_size)
    enc = dict(lpc, warm_start="encoder", num_langevin_steps=cfg.encoder_chain_length)
    cells = [
        CellSpec(
            "vae",
            f"VAE ({n * cfg.vae_steps_factor} steps)",
            "main",
            dict(method="vae"),
            n * cfg.vae_steps_factor,
            (n,) if cfg.vae_steps_factor > 1 else (),
        ),
        CellSpec(
            "lpc_prior",
            f"LPC, prior init (T={cfg.prior_chain_length}, precond., Jeffreys)",
            "main",
            dict(
                lpc,
                warm_start="prior",
                num_langevin_steps=cfg.prior_chain_length,
                precondition=True,
                encoder_objective="jeffreys",
            ),
            n,
            precondition=True,
            step_size=cfg.step_size,
        ),
    ]
    for objective in cfg.objectives:
        for pre in (True, False):
            cells.append(
                CellSpec(
                    lpc_cell_name(objective, pre),
                    f"LPC, encoder init, {objective}, {'precond.' if pre else 'ULA'}",
                    "main",
                    dict(enc, encoder_objective=objective, precondition=pre),
                    n,
                    precondition=pre,
                    step_size=cfg.step_size,
                )
            )
    cells.append(
        CellSpec(
            "pc",
            "PC (temperature 0), encoder init, Jeffreys, precond.",
            "main",
            dict(enc, method="pc", encoder_objective="jeffreys", precondition=True),
            n,
            precondition=True,
            step_size=cfg.step_size,
        )
    )
    for pre in (True, False):
        for eta in cfg.sweep_step_sizes:
            if math.isclose(eta, cfg.step_size, rel_tol=1e-9):
                continue  # the main Jeffreys cell is this sweep point
            cells.append(
                CellSpec(
                    f"sweep_{_pre_tag(pre)}_eta{eta:g}",
                    f"LPC, encoder init, Jeffreys, {'precond.' if pre else 'ULA'}, step size {eta:g}",
                    "sweep",
                    dict(enc, encoder_objective="jeffreys", precondition=pre, langevin_step_size=eta),
                    n,
                    precondition=pre,
                    step_size=eta,
                )
            )
    return cells


def sweep_cell_name(cfg: ReproConfig, precondition: bool, step_size: float) -> str:
    """The cell holding the sweep point ``(precondition, step_size)``."""
    if math.isclose(step_size, cfg.step_size, rel_tol=1e-9):
        return lpc_cell_name("jeffreys", precondition)
    return f"sweep_{_pre_tag(precondition)}_eta{step_size:g}"


def _resolve_architecture(cfg: ReproConfig, shape: tuple[int, int, int]) -> str:
    if cfg.architecture != "auto":
        return cfg.architecture
    return "conv" if shape[1] == shape[2] and shape[1] >= 32 else "mlp"


# ---------------------------------------------------------------------------------------------------
# One run: train a cell for one seed, with cheap evaluations along the way and a full one at the end
# ---------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(context: dict[str, Any]) -> None:
    """Per-process state: threads, datasets and the shared feature space (passed in, never retrained)."""
    from lpc_fast.data import load_dataset

    torch.set_num_threads(context["threads"])
    train = load_dataset(context["dataset"], "train")
    test = load_dataset(context["dataset"], "test")
    fs = context["feature_space"]
    real = test.images[: context["cheap_generated"]]
    _WORKER.clear()
    _WORKER.update(
        context=context,
        train=train,
        test=test,
        feature_space=fs,
        real_features=fs.features(real),
    )


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _model_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@torch.no_grad()
def _cheap_eval(model: Any, seed: int) -> dict[str, Any]:
    """Test NLL with a small K (encoder proposal) and the Fréchet distance of a few samples."""
    from lpc_fast.eval.likelihood import gaussian_proposal, importance_log_likelihood
    from lpc_fast.eval.quality import frechet_distance

    ctx = _WORKER["context"]
    test = _WORKER["test"]
    model.eval()
    try:
        gen = torch.Generator().manual_seed(1_000_003 + seed)  # the same noise at every eval point
        device = next(model.parameters()).device
        x_all = test.images[: ctx["cheap_eval_points"]].to(device)
        logpx = []
        for start in range(0, x_all.shape[0], 100):
            x = x_all[start : start + 100]
            mu, log_sigma = model.encode(x)
            lp, _ = importance_log_likelihood(
                model.log_joint,
                gaussian_proposal(mu, log_sigma),
                x,
                num_samples=ctx["cheap_is_samples"],
                batch_size=min(ctx["cheap_is_samples"], 64),
                generator=gen,
            )
            logpx.append(lp)
        nll = -torch.cat(logpx).mean().item()
        fake = _generate(model, ctx["cheap_generated"], gen)
        ff = _WORKER["feature_space"].features(fake)
        fid = frechet_distance(_WORKER["real_features"], ff) if bool(torch.isfinite(ff).all()) else math.nan
    finally:
        model.train()
    return {"nll": nll, "fid": fid}


@torch.no_grad()
def _generate(model: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    for start in range(0, n, 200):
        s = model.sample(min(200, n - start), gen)
        out.append(s.detach().float().cpu())
    return torch.cat(out).clamp_(0.0, 1.0)


def _full_eval(model: Any, seed: int) -> dict[str, Any]:
    from lpc_fast.eval.evaluate import evaluate_model

    ctx = _WORKER["context"]
    test = _WORKER["test"]
    model.eval()
    try:
        metrics = evaluate_model(
            model,
            test,
            num_is_samples=ctx["num_is_samples"],
            num_eval_points=ctx["num_eval_points"],
            num_generated=ctx["num_generated"],
            feature_space=_WORKER["feature_space"],
            generator=torch.Generator().manual_seed(2_000_003 + seed),
            batch_size=100,
            is_batch_size=min(ctx["num_is_samples"], 50),
        )
    finally:
        model.train()
    return metrics


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one (cell, seed); return its record (plus a sample grid tensor for the first seed)."""
    from lpc_fast.train import TrainConfig, make_trainer

    wall_start = time.perf_counter()
    cfg = TrainConfig.from_dict(task["train_config"])
    trainer = make_trainer(cfg, _WORKER["train"])
    seed = cfg.seed
    eval_every = _WORKER["context"]["eval_every"]
    full_steps = set(task["full_eval_steps"])
    evals: list[dict[str, Any]] = []
    full: dict[str, Any] = {}
    losses: list[float] = []

    def record(loss: float | None) -> None:
        point = {
            "step": trainer.step,
            "decoder_grad_evals": trainer.decoder_grad_evals,
            "elapsed": trainer.elapsed,
            "train_loss": loss,
        }
        point.update(_cheap_eval(trainer.model, seed))
        evals.append(point)

    record(None)
    diverged_at = None
    while trainer.step < cfg.steps:
        metrics = trainer.train_step()
        losses.append(float(metrics["loss"]))
        if not math.isfinite(metrics["loss"]) or not _model_finite(trainer.model):
            diverged_at = trainer.step
            break
        if trainer.step % eval_every == 0 or trainer.step == cfg.steps:
            record(sum(losses) / len(losses))
            losses.clear()
        if trainer.step in full_steps and trainer.step != cfg.steps:
            full[str(trainer.step)] = _full_eval(trainer.model, seed)
    if diverged_at is None:
        full[str(trainer.step)] = _full_eval(trainer.model, seed)
    grid = None
    if task["want_grid"] and diverged_at is None:
        grid = _generate(trainer.model, task["grid_samples"], torch.Generator().manual_seed(seed))
    return {
        "cell": task["cell"],
        "seed": seed,
        "train_config": cfg.to_dict(),
        "steps_done": trainer.step,
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "decoder_grad_evals_per_step": trainer.decoder_grad_evals / max(trainer.step, 1),
        "train_seconds": trainer.elapsed,
        "wall_seconds": time.perf_counter() - wall_start,
        "num_threads": torch.get_num_threads(),
        "evals": evals,
        "full_evals": full,
        "final": full.get(str(trainer.step)),
        "_grid": grid,
    }


def _run_all(tasks: list[dict[str, Any]], context: dict[str, Any], jobs: int, log: Callable[[str], None]):
    # Longest runs first so that parallel workers finish together.
    order = sorted(tasks, key=lambda t: -t["cost"])
    results = []
    total = len(order)
    if jobs <= 1:
        _worker_init(context)
        for i, task in enumerate(order, 1):
            results.append(_run_task(task))
            _log_done(log, results[-1], i, total)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker; forking a process that has used torch's thread pools is
    # not safe on every platform.
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(context,)
    ) as pool:
        futures = [pool.submit(_run_task, t) for t in order]
        for i, fut in enumerate(as_completed(futures), 1):
            results.append(fut.result())
            _log_done(log, results[-1], i, total)
    return results


def _log_done(log: Callable[[str], None], run: dict[str, Any], i: int, total: int) -> None:
    final = run["final"] or {}
    nll = final.get("nll_nats")
    status = "DIVERGED" if run["diverged"] else f"nll {nll:.2f}" if _finite(nll) else "nll n/a"
    log(
        f"[{i}/{total}] {run['cell']} seed {run['seed']}: {status}, "
        f"{run['steps_done']} steps, {run['wall_seconds']:.1f} s"
    )


# ---------------------------------------------------------------------------------------------------
# The whole reproduction
# ---------------------------------------------------------------------------------------------------


def _git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _json_clean(obj: Any) -> Any:
    """Non-finite floats -> None, tuples -> lists, tensors -> lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_clean(obj.tolist())
    return obj


def run_reproduction(
    cfg: ReproConfig,
    out: str | os.PathLike[str],
    *,
    argv: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every cell, decide the claims and write all artifacts into ``out``.

    Parameters
    ----------
    cfg : ReproConfig
    out : path
        Output directory (created).
    argv : sequence of str, optional
        The command line, recorded in the results.
    log : callable, optional
        ``str -> None`` progress lines (default: stderr).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    import lpc_fast
    from lpc_fast.data import load_dataset
    from lpc_fast.eval.evaluate import make_feature_space
    from lpc_fast.models import ModelConfig
    from lpc_fast.train import TrainConfig
    from lpc_fast.train.base import resolve_device

    cfg.validate()
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)

    train = load_dataset(cfg.dataset, "train")
    test = load_dataset(cfg.dataset, "test")
    arch = _resolve_architecture(cfg, train.shape)
    say(f"dataset {cfg.dataset}: {len(train)} train / {len(test)} test images {train.shape}; model {arch}")
    t0 = time.perf_counter()
    # One feature network for every run: computed (or loaded from the cache) once, shipped to workers.
    feature_space = make_feature_space(None, test)
    say(f"feature space {feature_space.name} ({time.perf_counter() - t0:.1f} s)")

    cells = [c for c in build_cells(cfg) if not cfg.cells or c.name.startswith(tuple(cfg.cells))]
    base = TrainConfig(
        dataset=cfg.dataset,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        device=cfg.device,
        backend=cfg.backend,
        num_threads=cfg.threads,
        model=ModelConfig(architecture=arch),
    )
    device = resolve_device(cfg.device)
    tasks = []
    for cell in cells:
        for seed in range(cfg.seeds):
            tc = dataclasses.replace(base, **cell.overrides, seed=seed, steps=cell.steps)
            tc.validate()
            passes = 1 if cell.overrides.get("method") == "vae" else tc.chain_length + 2
            tasks.append(
                {
                    "cell": cell.name,
                    "train_config": tc.to_dict(),
                    "full_eval_steps": list(cell.full_eval_steps),
                    "want_grid": seed == 0 and cell.group == "main",
                    "grid_samples": cfg.grid_samples,
                    "cost": cell.steps * passes,
                }
            )
    context = {
        "dataset": cfg.dataset,
        "threads": cfg.threads,
        "feature_space": feature_space,
        "eval_every": cfg.eval_every,
        "cheap_is_samples": cfg.cheap_is_samples,
        "cheap_eval_points": min(cfg.cheap_eval_points, len(test)),
        "cheap_generated": min(cfg.cheap_generated, len(test)),
        "num_is_samples": cfg.num_is_samples,
        "num_eval_points": min(cfg.num_eval_points, len(test)),
        "num_generated": min(cfg.num_generated, len(test)),
    }
    say(f"{len(cells)} cells x {cfg.seeds} seeds = {len(tasks)} runs on {cfg.jobs} worker(s)")
    runs = _run_all(tasks, context, cfg.jobs, say)
    order = {c.name: i for i, c in enumerate(cells)}
    runs.sort(key=lambda r: (order[r["cell"]], r["seed"]))
    grids = {r["cell"]: r.pop("_grid") for r in runs if r.get("_grid") is not None}
    for r in runs:
        r.pop("_grid", None)
    # Kept beside results.json so that the report and figures can be rebuilt without retraining.
    torch.save(grids, out / GRIDS_FILE)

    git = _git_info()
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv) if argv is not None else None,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "lpc_fast_version": str(lpc_fast.__version__),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "device": str(device),
        "backend": lpc_fast.describe_selection(device, cfg.backend),
        "num_threads": cfg.threads,
        "jobs": cfg.jobs,
        "dataset": {
            "name": cfg.dataset,
            "shape": list(train.shape),
            "num_levels": train.num_levels,
            "num_train": len(train),
            "num_test": len(test),
            "num_dims": train.num_dims,
        },
        "architecture": arch,
        "feature_space": feature_space.name,
        "eval_sizes": {k: v for k, v in context.items() if k not in ("feature_space", "dataset", "threads")},
        "config": _json_clean(dataclasses.asdict(cfg)),
        "cells": [_json_clean(dataclasses.asdict(c)) for c in cells],
        "runs": _json_clean(runs),
    }
    results["summary"] = summarise(results)
    results["claims"] = evaluate_claims(results)
    results["total_seconds"] = time.perf_counter() - started

    from lpc_fast.eval import plots

    figures = plots.write_all(results, grids, out)
    results["figures"] = [str(Path(p).name) for p in figures]
    (out / "results.json").write_text(json.dumps(_json_clean(results), indent=1) + "\n")
    (out / "REPORT.md").write_text(write_report(results))
    say(f"wrote {out / 'results.json'}, {out / 'REPORT.md'} and {len(figures)} figures")
    return results


def rebuild_report(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Recompute the summary, verdicts, figures and ``REPORT.md`` of an existing run directory.

    Uses ``results.json`` (and ``sample_grids.pt`` when present) without retraining anything, so the
    analysis can be revised and re-applied to a finished run.

    Parameters
    ----------
    out : path
        A directory written by :func:`run_reproduction`.

    Returns
    -------
    dict
        The updated results (also written back to ``results.json``).
    """
    from lpc_fast.eval import plots

    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    grids_path = out / GRIDS_FILE
    grids = torch.load(grids_path, weights_only=True) if grids_path.exists() else {}
    results["summary"] = summarise(results)
    results["claims"] = evaluate_claims(results)
    figures = plots.write_all(results, grids, out)
    results["figures"] = [str(Path(p).name) for p in figures]
    (out / "results.json").write_text(json.dumps(_json_clean(results), indent=1) + "\n")
    (out / "REPORT.md").write_text(write_report(results))
    return results


# ---------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------

#: Final metrics summarised per cell: key in evaluate_model's output -> higher is better.
FINAL_METRICS = {
    "nll_nats": False,
    "bits_per_dim": False,
    "elbo": True,
    "recon_mse": False,
    "fid": False,
    "kid": False,
    "density": True,
    "coverage": True,
}


def _runs_of(results: dict[str, Any], cell: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["cell"] == cell]


def _penalties(results: dict[str, Any]) -> dict[str, float]:
    """Values that stand in for a diverged run (or a non-finite metric) in the tests.

    NLL: the larger of the uniform-pixel model's NLL (``D ln L`` for discrete data) and the worst finite
    NLL of any run; FID: the worst finite FID of any run. A diverged run thus counts as the worst
    outcome seen rather than vanishing from its group (which would flatter it).
    """
    worst: dict[str, float] = {}
    for r in results["runs"]:
        for metrics in (r.get("full_evals") or {}).values():
            for key in ("nll_nats", "fid"):
                v = metrics.get(key)
                if _finite(v):
                    worst[key] = max(worst.get(key, -math.inf), v)
    ds = results["dataset"]
    if ds.get("num_levels"):
        uniform = ds["num_dims"] * math.log(ds["num_levels"])
        worst["nll_nats"] = max(worst.get("nll_nats", -math.inf), uniform)
    return worst


def _final_values(
    results: dict[str, Any], cell: str, metric: str, *, at_step: int | None = None, penalise: bool = True
) -> list[float]:
    pen = _penalties(results).get(metric) if penalise else None
    values = []
    for r in _runs_of(results, cell):
        m = r["final"] if at_step is None else (r.get("full_evals") or {}).get(str(at_step))
        v = m.get(metric) if m else None
        if _finite(v):
            values.append(float(v))
        elif pen is not None and math.isfinite(pen):
            values.append(pen)
    return values


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Mean, standard error and n over seeds of each cell's final metrics (diverged runs excluded here;
    their count is reported)."""
    summary: dict[str, Any] = {}
    cfg = results["config"]
    rows: list[tuple[str, int | None]] = [(c["name"], None) for c in results["cells"]]
    if cfg["vae_steps_factor"] > 1:
        if any(c["name"] == "vae" for c in results["cells"]):
            rows.insert(1, ("vae", cfg["steps"]))
    for cell, at in rows:
        runs = _runs_of(results, cell)
        key = cell if at is None else f"{cell}@{at}"
        entry: dict[str, Any] = {"n_runs": len(runs), "diverged": sum(r["diverged"] for r in runs)}
        for metric in FINAL_METRICS:
            vals = _final_values(results, cell, metric, at_step=at, penalise=False)
            mean, se, n = _mean_se(vals)
            entry[metric] = {"mean": mean, "se": se, "n": n, "values": vals}
        for counter in ("step", "decoder_grad_evals", "elapsed"):
            vals = []
            for r in runs:
                pts = [e for e in r["evals"] if at is None or e["step"] <= at]
                if pts:
                    vals.append(float(pts[-1][counter]))
            mean, se, n = _mean_se(vals)
            entry[counter] = {"mean": mean, "se": se, "n": n}
        summary[key] = entry
    return _json_clean(summary)


def _curve(run: dict[str, Any], metric: str = "nll") -> list[tuple[dict[str, Any], float]]:
    return [(e, float(e[metric])) for e in run["evals"] if _finite(e.get(metric))]


def _to_target(
    results: dict[str, Any], cell: str, target: float, budget_steps: int
) -> dict[str, list[float] | list[bool]]:
    """Per seed: SGD steps, decoder evaluations and seconds until the cheap NLL first reaches ``target``.

    A run that never reaches it within ``budget_steps`` is censored at one evaluation interval past its
    end (counted, never dropped: dropping would favour the method that failed).
    """
    every = results["config"]["eval_every"]
    out: dict[str, list] = {"step": [], "decoder_grad_evals": [], "elapsed": [], "censored": []}
    for r in _runs_of(results, cell):
        hit = None
        for e, v in _curve(r):
            if e["step"] > budget_steps:
                break
            if v <= target:
                hit = e
                break
        if hit is not None:
            for key in ("step", "decoder_grad_evals", "elapsed"):
                out[key].append(float(hit[key]))
            out["censored"].append(False)
            continue
        pts = [e for e in r["evals"] if e["step"] <= budget_steps] or r["evals"]
        last = pts[-1]
        per_step = (last["step"] + every) / max(last["step"], 1)
        out["step"].append(float(last["step"] + every))
        out["decoder_grad_evals"].append(float(last["decoder_grad_evals"]) * per_step)
        out["elapsed"].append(float(last["elapsed"]) * per_step)
        out["censored"].append(True)
    # Each value is only known to within one evaluation interval, in the units of each counter.
    runs = _runs_of(results, cell)
    evals_per_step = _mean_se([r["decoder_grad_evals_per_step"] for r in runs])[0] if runs else math.nan
    secs_per_step = _mean_se([r["train_seconds"] / max(r["steps_done"], 1) for r in runs])[0] if runs else 0.0
    out["resolution"] = {
        "step": float(every),
        "decoder_grad_evals": every * evals_per_step,
        "elapsed": every * secs_per_step,
    }
    return out


def _final_cheap_nll(results: dict[str, Any], cell: str, budget_steps: int | None = None) -> float:
    vals = []
    for r in _runs_of(results, cell):
        pts = [(e, v) for e, v in _curve(r) if budget_steps is None or e["step"] <= budget_steps]
        if pts:
            vals.append(pts[-1][1])
    return _mean_se(vals)[0]


def evaluate_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Decide each claim of LPC.md §4 from the runs in ``results`` (see the report for the rules)."""
    cfg = results["config"]
    alpha = cfg["alpha"]
    lpc_main = lpc_cell_name("jeffreys", True)
    claims = []

    # 1. LPC matches or beats the VAE on likelihood and sample quality (non-inferiority).
    vae_at = None
    if cfg["vae_steps_factor"] > 1:
        # The VAE's better evaluation point (by mean test NLL) of the two: the stricter comparison for LPC.
        end = _mean_se(_final_values(results, "vae", "nll_nats"))[0]
        mid = _mean_se(_final_values(results, "vae", "nll_nats", at_step=cfg["steps"]))[0]
        if _finite(mid) and (not _finite(end) or mid < end):
            vae_at = cfg["steps"]
    vae_label = "VAE" + (f" at {vae_at} steps" if vae_at else " at the end of its budget")
    parts = []
    for metric, rel in (("nll_nats", cfg["nll_margin_rel"]), ("fid", cfg["fid_margin_rel"])):
        b = _final_values(results, "vae", metric, at_step=vae_at)
        margin = rel * abs(_mean_se(b)[0]) if b else math.nan
        parts.append(
            non_inferiority(
                _final_values(results, lpc_main, metric),
                b,
                margin if math.isfinite(margin) else 0.0,
                alpha=alpha,
                metric=metric,
            )
        )
    claims.append(
        {
            "id": "matches_vae",
            "claim": "LPC matches or beats the VAE on sample quality and likelihood",
            "verdict": combine_all([c.verdict for c in parts]),
            "a": lpc_main,
            "b": "vae" + (f"@{vae_at}" if vae_at else ""),
            "rule": (
                "non-inferiority of LPC (encoder init, Jeffreys, preconditioned, "
                f"{cfg['steps']} steps) vs the "
                f"{vae_label} on the final test NLL (K={results['eval_sizes']['num_is_samples']}, margin "
                f"{100 * cfg['nll_margin_rel']:g}% of the VAE's mean) and on the Fréchet distance in the "
                f"offline feature space (margin {100 * cfg['fid_margin_rel']:g}%); one-sided Welch "
                f"t-tests at α = {alpha}; both must hold"
            ),
            "tests": [c.to_dict() | {"text": c.describe()} for c in parts],
        }
    )

    # 2. LPC converges in a fraction of the SGD iterations.
    lpc_final = _final_cheap_nll(results, lpc_main)
    vae_final = _final_cheap_nll(results, "vae")
    # nan when a cell was not run: the test below then has no values and is inconclusive.
    level = lpc_final if not math.isfinite(vae_final) else max(lpc_final, vae_final)
    target = level + cfg["target_tol_rel"] * abs(level)
    budget = {lpc_main: cfg["steps"], "vae": cfg["steps"] * cfg["vae_steps_factor"]}
    hits = {c: _to_target(results, c, target, budget[c]) for c in (lpc_main, "vae")}
    conv_tests = {
        key: superiority(
            hits[lpc_main][key],
            hits["vae"][key],
            alpha=alpha,
            metric=f"{key} to target",
            resolution=(hits[lpc_main]["resolution"][key], hits["vae"]["resolution"][key]),
        )
        for key in ("step", "decoder_grad_evals", "elapsed")
    }
    main_test = conv_tests["step"]
    ratio = main_test.mean_a / main_test.mean_b if main_test.mean_b else math.nan
    claims.append(
        {
            "id": "fewer_sgd_steps",
            "claim": "LPC converges in a fraction of the SGD iterations",
            "verdict": main_test.verdict,
            "a": lpc_main,
            "b": "vae",
            "target_nll": target,
            "step_ratio": ratio,
            "censored": {c: sum(hits[c]["censored"]) for c in hits},
            "rule": (
                "SGD steps until the cheap test NLL (K="
                f"{results['eval_sizes']['cheap_is_samples']}) first reaches a level both methods attain: "
                f"the worse of their final means ({_fmt(level)} nats) plus {100 * cfg['target_tol_rel']:g}%"
                f" = {_fmt(target)} nats; runs that never reach it are censored one evaluation past their "
                f"budget; one-sided Welch t-test (LPC fewer steps) at α = {alpha}, each value's variance "
                "increased by the rounding variance (interval²/12) of the evaluation grid. The same test per "
                "decoder gradient evaluation and per wall-clock second is reported for context"
            ),
            "tests": [conv_tests[k].to_dict() | {"text": conv_tests[k].describe()} for k in conv_tests],
        }
    )

    # 3. Preconditioning makes training robust to the Langevin step size.
    ranges: dict[bool, list[float]] = {True: [], False: []}
    for pre in (True, False):
        per_seed: dict[int, list[float]] = {}
        for eta in cfg["sweep_step_sizes"]:
            cell = sweep_cell_name(_cfg_obj(cfg), pre, eta)
            for r, v in zip(_runs_of(results, cell), _final_values(results, cell, "nll_nats")):
                per_seed.setdefault(r["seed"], []).append(v)
        n_eta = len(cfg["sweep_step_sizes"])
        ranges[pre] = [max(v) - min(v) for v in per_seed.values() if len(v) == n_eta]
    rob = superiority(ranges[True], ranges[False], alpha=alpha, metric="NLL range over step sizes")
    diverged = {
        _pre_tag(pre): sum(
            r["diverged"]
            for eta in cfg["sweep_step_sizes"]
            for r in _runs_of(results, sweep_cell_name(_cfg_obj(cfg), pre, eta))
        )
        for pre in (True, False)
    }
    claims.append(
        {
            "id": "precondition_robust",
            "claim": "Preconditioning makes training robust to the Langevin step size",
            "verdict": rob.verdict,
            "a": "preconditioned sweep",
            "b": "ULA sweep",
            "diverged": diverged,
            "rule": (
                "per seed, the range (max − min) of the final test NLL over the step sizes "
                f"{', '.join(f'{s:g}' for s in cfg['sweep_step_sizes'])}; diverged runs count as the worst "
                f"NLL seen (at least the uniform-pixel model's); one-sided Welch t-test (smaller range with "
                f"preconditioning) at α = {alpha}"
            ),
            "tests": [rob.to_dict() | {"text": rob.describe()}],
        }
    )

    # 4. The encoder warm start beats prior initialisation.
    enc_nll = superiority(
        _final_values(results, lpc_main, "nll_nats"),
        _final_values(results, "lpc_prior", "nll_nats"),
        alpha=alpha,
        metric="nll_nats",
    )
    enc_fid = superiority(
        _final_values(results, lpc_main, "fid"),
        _final_values(results, "lpc_prior", "fid"),
        alpha=alpha,
        metric="fid",
    )
    verdict = enc_nll.verdict
    if verdict == SUPPORTED and enc_fid.verdict == NOT_SUPPORTED:
        verdict = INCONCLUSIVE  # the two metrics disagree significantly
    claims.append(
        {
            "id": "encoder_beats_prior",
            "claim": "The encoder warm start beats prior initialisation",
            "verdict": verdict,
            "a": lpc_main,
            "b": "lpc_prior",
            "rule": (
                f"final test NLL at equal SGD steps ({cfg['steps']}), one-sided Welch t-test at α = {alpha} "
                f"(primary); the Fréchet distance is reported and a significant opposite result on it turns "
                f"a supported verdict into inconclusive. The prior-initialised chain runs T = "
                f"{cfg['prior_chain_length']} moves per step against {cfg['encoder_chain_length']}."
            ),
            "tests": [c.to_dict() | {"text": c.describe()} for c in (enc_nll, enc_fid)],
        }
    )

    # 5. Jeffreys (v2) or reverse KL (v1) is the best encoder objective.
    tests5 = []
    claims5 = {}
    for pre in (True, False):
        fwd = _final_values(results, lpc_cell_name("forward_kl", pre), "nll_nats")
        comps = []
        for obj in ("jeffreys", "reverse_kl"):
            if obj not in cfg["objectives"] or "forward_kl" not in cfg["objectives"]:
                continue
            c = superiority(
                _final_values(results, lpc_cell_name(obj, pre), "nll_nats"),
                fwd,
                alpha=alpha / 2,  # Bonferroni: the best of two objectives is picked
                metric=f"nll_nats ({obj} vs forward_kl, {'precond.' if pre else 'ULA'})",
            )
            comps.append(c)
            tests5.append(c.to_dict() | {"text": c.describe()})
        if not comps:
            claims5[pre] = INCONCLUSIVE
        elif any(c.verdict == SUPPORTED for c in comps):
            claims5[pre] = SUPPORTED
        elif all(c.verdict == NOT_SUPPORTED for c in comps):
            claims5[pre] = NOT_SUPPORTED
        else:
            claims5[pre] = INCONCLUSIVE
    claims.append(
        {
            "id": "best_objective",
            "claim": "Jeffreys or reverse KL is the best encoder objective",
            "verdict": claims5[True],
            "verdict_ula": claims5[False],
            "a": "jeffreys / reverse_kl",
            "b": "forward_kl",
            "rule": (
                "final test NLL of LPC with the encoder warm start, preconditioned (the ULA cells are "
                "reported as a secondary check): supported if Jeffreys or reverse KL beats forward KL in a "
                f"one-sided Welch t-test at α/2 = {alpha / 2:g} each (Bonferroni), not supported if forward "
                "KL beats both, inconclusive otherwise"
            ),
            "tests": tests5,
        }
    )
    return _json_clean(claims)


def _cfg_obj(cfg: dict[str, Any]) -> ReproConfig:
    fields = {f.name for f in dataclasses.fields(ReproConfig)}
    kwargs = {k: v for k, v in cfg.items() if k in fields}
    for key in ("sweep_step_sizes", "objectives", "cells"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return ReproConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}g}"


def _fmt_p(p: Any) -> str:
    if p is None:
        return "n/a"
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"


def _pm(entry: dict[str, Any] | None, digits: int = 4) -> str:
    if not entry or not entry.get("n"):
        return "n/a"
    se = entry.get("se")
    return f"{_fmt(entry['mean'], digits)} ± {_fmt(se, 2)}" if se is not None else _fmt(entry["mean"], digits)


_VERDICT_MARK = {SUPPORTED: "**supported**", NOT_SUPPORTED: "**not supported**", INCONCLUSIVE: "inconclusive"}


def write_report(results: dict[str, Any]) -> str:
    """The Markdown report of ``results`` (tables with mean ± standard error over seeds, verdicts)."""
    cfg = results["config"]
    ds = results["dataset"]
    sizes = results["eval_sizes"]
    labels = {c["name"]: c["label"] for c in results["cells"]}
    lines = [
        f"# LPC reproduction report: {ds['name']}",
        "",
    ]
    if cfg.get("quick"):
        lines += [
            "> **Quick (CI-sized) run.** Budgets are far too small for the verdicts below to be evidence "
            "about the paper; this run only checks that the pipeline works end to end.",
            "",
        ]
    cmd = " ".join(results["command"]) if results.get("command") else "(library call)"
    dirty = " (working tree with uncommitted changes)" if results.get("git_dirty") else ""
    lines += [
        f"- Command: `{cmd}`",
        f"- Date: {results['created']}; commit {results.get('git_commit') or 'unknown'}{dirty}",
        f"- Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs; "
        f"torch {results['torch_version']}; {results['num_threads']} torch thread(s) per worker, "
        f"{results['jobs']} worker process(es); device {results['device']}; {results['backend']}",
        f"- Data: {ds['name']} {tuple(ds['shape'])}, {ds['num_levels']} levels, {ds['num_train']} train / "
        f"{ds['num_test']} test images; model {results['architecture']} (latent 40, discretised Gaussian "
        "likelihood, σ = 0.1), batch "
        f"{cfg['batch_size']}, Adam lr {cfg['lr']:g}",
        f"- Budgets: {cfg['steps']} SGD steps per LPC/PC run, {cfg['steps'] * cfg['vae_steps_factor']} for "
        f"the VAE; T = {cfg['encoder_chain_length']} (encoder init) / {cfg['prior_chain_length']} (prior "
        f"init); Langevin step size {cfg['step_size']:g} outside the sweep; {cfg['seeds']} seeds per cell",
        f"- Evaluation: every {cfg['eval_every']} steps the test NLL with K = {sizes['cheap_is_samples']} on "
        f"{sizes['cheap_eval_points']} test images and the Fréchet distance of {sizes['cheap_generated']} "
        f"samples; at the end `evaluate_model` with K = {sizes['num_is_samples']} on "
        f"{sizes['num_eval_points']} test images and {sizes['num_generated']} samples against as many test "
        "images",
        f"- Sample-quality feature space: `{results['feature_space']}` (the package's offline CNN; "
        "these Fréchet distances are **not** FIDs comparable with published numbers)",
        f"- Wall-clock of the whole run: {results.get('total_seconds', 0) / 60:.1f} min",
        "",
        "## Verdicts",
        "",
        "| Claim (LPC.md §4) | Verdict | Evidence |",
        "|---|---|---|",
    ]
    for c in results["claims"]:
        lines.append(f"| {c['claim']} | {_VERDICT_MARK[c['verdict']]} | {_claim_evidence(c)} |")
    lines += [
        "",
        f"Every test is one-sided at α = {cfg['alpha']} over seeds (Welch's t-test, unequal variances). "
        "*Supported* means the test of the claim rejects its null hypothesis; *not supported* means the "
        "opposite one-sided test rejects (the data contradict the claim); anything else is *inconclusive*. "
        f"With {cfg['seeds']} seeds per cell only large effects can reach significance.",
        "",
        "## Final metrics (mean ± standard error over seeds)",
        "",
        "| Method | n | diverged | test NLL (nats) | bits/dim | ELBO | recon MSE | Fréchet dist. | KID "
        "| density | coverage | SGD steps | decoder evals | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in results["summary"].items():
        cell, _, at = key.partition("@")
        label = labels.get(cell, cell) + (f" — evaluated at step {at}" if at else "")
        lines.append(
            f"| {label} | {e['n_runs']} | {e['diverged']} | {_pm(e['nll_nats'])} "
            f"| {_pm(e['bits_per_dim'], 3)} "
            f"| {_pm(e['elbo'])} | {_pm(e['recon_mse'], 3)} | {_pm(e['fid'], 3)} | {_pm(e['kid'], 3)} "
            f"| {_pm(e['density'], 3)} | {_pm(e['coverage'], 3)} | {_fmt(e['step']['mean'])} "
            f"| {_fmt(e['decoder_grad_evals']['mean'])} | {_pm(e['elapsed'], 3)} |"
        )
    lines += [
        "",
        "Diverged runs (non-finite loss or parameters) are left out of these means; in the tests they count "
        "as the worst value seen. Decoder evaluations count decoder forward/backward passes per data point "
        "(T + 1 per LPC step, + 1 for the reverse-KL term; 1 per VAE step). Train time excludes evaluation.",
        "",
    ]
    lines += _convergence_section(results)
    lines += _sweep_section(results)
    lines += ["## Tests behind each verdict", ""]
    for c in results["claims"]:
        lines += [f"### {c['claim']}: {c['verdict']}", "", f"Rule: {c['rule'].rstrip('.')}.", ""]
        for t in c["tests"]:
            lines.append(f"- {t['text']}")
        if c["id"] == "best_objective":
            lines.append(f"- Secondary check without preconditioning (ULA cells): {c['verdict_ula']}")
        if c["id"] == "precondition_robust":
            lines.append(
                f"- Diverged sweep runs: preconditioned {c['diverged']['pre']}, ULA {c['diverged']['ula']}"
            )
        lines.append("")
    figs = results.get("figures") or []
    if figs:
        lines += ["## Figures", ""]
        for f in figs:
            lines.append(f"![{f}]({f})")
        lines.append("")
    return "\n".join(lines) + "\n"


def _claim_evidence(c: dict[str, Any]) -> str:
    tests = c["tests"]
    if c["id"] == "matches_vae":
        bits = [
            f"{t['metric']}: LPC {_fmt(t['mean_a'])} vs VAE {_fmt(t['mean_b'])}, margin {_fmt(t['margin'])}, "
            f"p = {_fmt_p(t['p_support'])}"
            for t in tests
        ]
        return "; ".join(bits)
    if c["id"] == "fewer_sgd_steps":
        t = tests[0]
        return (
            f"steps to NLL ≤ {_fmt(c['target_nll'])}: LPC {_fmt(t['mean_a'])} vs VAE {_fmt(t['mean_b'])} "
            f"(ratio {_fmt(c['step_ratio'], 3)}; runs that never reached it: LPC {c['censored'][c['a']]}, "
            f"VAE {c['censored'][c['b']]}), p = {_fmt_p(t['p_support'])}"
        )
    if c["id"] == "precondition_robust":
        t = tests[0]
        return (
            f"NLL range over step sizes: precond. {_fmt(t['mean_a'])} vs ULA {_fmt(t['mean_b'])} nats, "
            f"p = {_fmt_p(t['p_support'])}; diverged runs: precond. {c['diverged']['pre']}, "
            f"ULA {c['diverged']['ula']}"
        )
    if c["id"] == "encoder_beats_prior":
        t, f = tests
        return (
            f"NLL encoder {_fmt(t['mean_a'])} vs prior {_fmt(t['mean_b'])}, p = {_fmt_p(t['p_support'])}; "
            f"Fréchet {_fmt(f['mean_a'])} vs {_fmt(f['mean_b'])}, p = {_fmt_p(f['p_support'])}"
        )
    if c["id"] == "best_objective":
        bits = [
            f"{t['metric'].split('(')[1].split(',')[0]}: {_fmt(t['mean_a'])} vs {_fmt(t['mean_b'])}, "
            f"p = {_fmt_p(t['p_support'])}"
            for t in tests
            if "precond." in t["metric"]
        ]
        return "; ".join(bits) + f" (ULA cells: {c['verdict_ula']})"
    return ""


def _convergence_section(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    claim = next(c for c in results["claims"] if c["id"] == "fewer_sgd_steps")
    target = claim["target_nll"]
    lines = [
        "## Cost to reach a common test NLL",
        "",
        f"Target: cheap test NLL ≤ {_fmt(target)} nats (see the convergence claim). Mean ± se over seeds; "
        "censored runs (never reached it) count one evaluation past their budget.",
        "",
        "| Method | reached | SGD steps | decoder evals | train time (s) |",
        "|---|---|---|---|---|",
    ]
    labels = {c["name"]: c["label"] for c in results["cells"]}
    for c in results["cells"]:
        if c["group"] != "main":
            continue
        budget = c["steps"]
        hits = _to_target(results, c["name"], target, budget)
        n = len(hits["step"])
        reached = n - sum(hits["censored"])
        cols = [_pm(_entry(hits[k])) for k in ("step", "decoder_grad_evals", "elapsed")]
        lines.append(f"| {labels[c['name']]} | {reached}/{n} | " + " | ".join(cols) + " |")
    lines.append("")
    del cfg
    return lines


def _entry(values: Sequence[float]) -> dict[str, Any]:
    mean, se, n = _mean_se(list(values))
    return {"mean": mean, "se": se if math.isfinite(se) else None, "n": n}


def _sweep_section(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    obj = _cfg_obj(cfg)
    lines = [
        "## Step-size sweep (LPC, encoder init, Jeffreys): final test NLL (nats)",
        "",
        "| Step size | preconditioned | diverged | ULA | diverged |",
        "|---|---|---|---|---|",
    ]
    for eta in cfg["sweep_step_sizes"]:
        row = [f"{eta:g}"]
        for pre in (True, False):
            cell = sweep_cell_name(obj, pre, eta)
            vals = _final_values(results, cell, "nll_nats", penalise=False)
            runs = _runs_of(results, cell)
            row += [_pm(_entry(vals)), str(sum(r["diverged"] for r in runs))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lpc-fast reproduce``."""
    d = ReproConfig()
    p = argparse.ArgumentParser(
        prog="lpc-fast reproduce",
        description="Train the VAE, LPC (several variants) and PC with shared settings over several seeds, "
        "evaluate them and test the paper's claims; writes results.json, REPORT.md and PNG figures.",
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="dataset name (digits, shapes32 with the conv network, any local dataset, npz:PATH)",
    )
    p.add_argument("--out", default="runs/reproduce", help="output directory (default runs/reproduce)")
    p.add_argument(
        "--quick", action="store_true", help="CI-sized run: tiny budgets, 2 seeds, a reduced sweep, small K"
    )
    p.add_argument("--seeds", type=_positive_int, help=f"seeds per cell (default {d.seeds}; quick 2)")
    p.add_argument("--steps", type=_positive_int, help=f"SGD steps per LPC run (default {d.steps}; quick 30)")
    p.add_argument(
        "--vae-steps-factor",
        type=_positive_int,
        help=f"the VAE runs this many times --steps (default {d.vae_steps_factor})",
    )
    p.add_argument(
        "--eval-every", type=_positive_int, help=f"steps between cheap evaluations ({d.eval_every})"
    )
    p.add_argument(
        "--num-is-samples",
        type=_positive_int,
        help=f"importance samples K of the final evaluation (default {d.num_is_samples}; quick 100)",
    )
    p.add_argument(
        "--cheap-is-samples",
        type=_positive_int,
        help=f"K of the evaluations along the way ({d.cheap_is_samples})",
    )
    p.add_argument(
        "--prior-chain-length", type=_positive_int, help=f"T from the prior (default {d.prior_chain_length})"
    )
    p.add_argument(
        "--step-sizes", type=_float_list, help="comma-separated Langevin step sizes of the robustness sweep"
    )
    p.add_argument(
        "--architecture", choices=("auto", "mlp", "conv"), help="default auto: conv for side >= 32"
    )
    p.add_argument("--alpha", type=float, help=f"one-sided level of the tests (default {d.alpha})")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", default=None, help="Langevin kernel backend (default: automatic)")
    p.add_argument("--threads", type=_positive_int, help=f"torch threads per worker (default {d.threads})")
    p.add_argument("--jobs", type=_positive_int, help=f"parallel worker processes (default {d.jobs})")
    p.add_argument(
        "--cells",
        type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
        help="run only cells whose names start with these comma-separated prefixes (e.g. vae,sweep)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not train: recompute the verdicts, figures and REPORT.md from --out/results.json",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ReproConfig:
    """The :class:`ReproConfig` of parsed command-line arguments."""
    overrides: dict[str, Any] = {"dataset": args.dataset, "device": args.device, "backend": args.backend}
    mapping = {
        "seeds": "seeds",
        "steps": "steps",
        "vae_steps_factor": "vae_steps_factor",
        "eval_every": "eval_every",
        "num_is_samples": "num_is_samples",
        "cheap_is_samples": "cheap_is_samples",
        "prior_chain_length": "prior_chain_length",
        "step_sizes": "sweep_step_sizes",
        "architecture": "architecture",
        "alpha": "alpha",
        "threads": "threads",
        "jobs": "jobs",
        "cells": "cells",
    }
    for arg, fld in mapping.items():
        value = getattr(args, arg)
        if value is not None:
            overrides[fld] = value
    cfg = quick_config(**overrides) if args.quick else ReproConfig(**overrides)
    if args.quick and args.eval_every is None:
        cfg.eval_every = max(1, min(cfg.eval_every, cfg.steps // 3 or 1))
    return cfg.validate()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lpc-fast reproduce``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``reproduce`` (default: ``sys.argv[1:]``).
    """
    from lpc_fast.data import DatasetError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"lpc-fast reproduce: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.report_only:
            results = rebuild_report(args.out)
        else:
            results = run_reproduction(cfg, args.out, argv=["lpc-fast", "reproduce", *argv])
    except FileNotFoundError as exc:
        print(f"lpc-fast reproduce: error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"lpc-fast reproduce: error: {exc}", file=sys.stderr)
        return 2
    width = max(len(c["claim"]) for c in results["claims"])
    for c in results["claims"]:
        print(f"{c['claim']:<{width}}  {c['verdict']}")
    print(f"report: {Path(args.out) / 'REPORT.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
