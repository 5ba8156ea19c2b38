"""The experiment plan: configuration, validation split, step-size pilot, cells, budgets and seeds.

The protocol (stated again at the top of every report):

* **Data.** The dataset's test split is used only for the final numbers. A validation split is carved from
  the training split by a fixed permutation (:data:`VALIDATION_SEED`, ``validation_fraction`` of the
  training images); the models are trained on the rest (the *fit* split). Early stopping, the step-size
  pilot and every curve use the validation split.
* **Step sizes.** For each sampler (preconditioned, ULA) a pilot trains LPC (encoder warm start, Jeffreys)
  at every step size of a log-spaced grid (at least five values spanning at least two decades) and picks
  the one with the lowest validation NLL; that value is used by every cell of that sampler. The
  robustness sweep multiplies the chosen values by pre-registered factors (``sweep_factors``).
* **Runs.** Every cell trains with early stopping on the validation NLL (``patience`` evaluations without
  improvement) under a maximum budget (its cap); a run records where it stopped and why (``patience``,
  ``cap`` or ``diverged``) and its final numbers are those of its best validation state. Full test
  evaluations also run at fixed SGD steps (``budgets``) for the equal-steps view.
* **Seeds.** ``seeds`` for the headline cells (VAE, LPC preconditioned Jeffreys, LPC ULA Jeffreys, LPC
  from the prior at ``T = prior_chain_length``), ``ablation_seeds`` for the others.
* **Equal compute.** After the main runs, the method that is more expensive to converge (per decoder
  gradient evaluation, and per second of training) is retrained (deterministically: the same trajectory)
  for the budget at which the cheaper one converged, and evaluated there.

Nothing in this module imports the runner, the analysis or the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HEADLINE_CELLS",
    "VALIDATION_SEED",
    "CellSpec",
    "ReproConfig",
    "build_cells",
    "build_equal_cells",
    "build_pilot_cells",
    "config_from_dict",
    "equal_step_budgets",
    "lpc_cell_name",
    "quick_config",
    "split_validation",
    "sweep_cell_name",
    "time_measure",
]

#: Seed of the permutation that carves the validation split out of the training split (fixed: the
#: validation set never depends on a run's seeds, so every run and every pilot sees the same one).
VALIDATION_SEED = 1
#: Seeds of the step-size pilot start here (distinct from the main runs' seeds ``0 .. seeds-1``).
PILOT_SEED_BASE = 100
#: Cells run with ``seeds`` seeds; every other cell (except the equal-compute retraining of a headline
#: cell) runs with ``ablation_seeds``.
HEADLINE_CELLS = ("vae", "lpc_jeffreys_pre", "lpc_jeffreys_ula", "lpc_prior")
#: Sampler keys of the chosen step sizes.
SAMPLERS = ("preconditioned", "ula")
STEP_SIZE_SELECTION = "validation"


@dataclass
class ReproConfig:
    """Budget and settings of a reproduction run.

    Attributes
    ----------
    dataset : str
        Any name :func:`lpc_fast.data.load_dataset` accepts (``digits``, ``shapes32``, ``npz:PATH`` ...).
    architecture : {"auto", "mlp", "conv"}
        ``auto`` picks the conv network for images of side >= 32, else the MLP.
    conv_channels, conv_hidden : tuple of int or None, int or None
        Widths of the conv networks (None: :class:`lpc_fast.models.ModelConfig`'s defaults, the paper's
        beta-VAE widths). Narrower networks make a CPU run affordable; the report states them.
    seeds, ablation_seeds : int
        Seeds of the headline cells (:data:`HEADLINE_CELLS`) and of the other cells.
    steps : int
        Maximum SGD steps (cap) of every LPC / PC run; early stopping usually ends a run before it.
    vae_steps : int
        Cap of the VAE runs (by default the same as ``steps``: a common maximum budget).
    prior_steps : int or None
        Cap of the prior-initialised cell at ``T = prior_chain_length`` (None: ``steps``). A lower cap
        keeps that expensive cell affordable; a run stopped by it is reported as not converged.
    ablation_steps : int or None
        Cap of the ablation and sweep cells (None: ``steps``), for the same reason.
    budgets : tuple of int
        SGD steps at which every run is fully evaluated on the test split (the equal-steps view); the
        common cap ``min(steps, vae_steps)`` is always added.
    eval_every, vae_eval_every : int
        SGD steps between validation evaluations of LPC / PC runs and of VAE runs.
    patience : int
        Early stopping: validation evaluations without a new best validation NLL before a run stops.
    validation_fraction : float
        Fraction of the training split held out for validation (at least one image).
    pilot_step_sizes : tuple of float
        Step-size grid of the pilot (increasing, log-spaced, at least 5 values spanning >= 100x).
    pilot_steps, pilot_seeds : int
        Cap and number of seeds of each pilot run.
    sweep_factors : tuple of float
        The robustness sweep: chosen step size times each factor (must include 1).
    cheap_is_samples, cheap_eval_points, cheap_generated : int
        K, validation points and generated images of the evaluations along the way.
    curve_fid : bool
        Whether the evaluations along the way also compute the Fréchet distance of ``cheap_generated``
        samples to validation images (for the curves only; it never decides anything).
    num_is_samples, num_eval_points, num_generated : int
        The same for the final :func:`lpc_fast.eval.evaluate_model` on the test split (capped by its size).
    encoder_chain_length, prior_chain_length : int
        T with the encoder warm start and from the prior (headline prior cell). The equal-compute prior
        cell uses ``encoder_chain_length``.
    objectives : tuple of str
        Encoder objectives compared.
    batch_size, lr : int, float
        Minibatch size and Adam learning rate (both networks).
    alpha : float
        One-sided level of every test.
    nll_margin_rel, fid_margin_rel : float
        Non-inferiority margins of "matches the VAE", as fractions of the VAE's mean.
    target_tol_rel : float
        Convergence target tolerance (fraction of the target validation NLL).
    grid_samples : int
        Images in each method's sample grid.
    device, backend : str or None
        Torch device and Langevin kernel backend (None: automatic).
    threads, jobs : int
        Torch CPU threads per worker process; worker processes.
    quick : bool
        Marks a CI-sized run (the report says its verdicts are not evidence).
    cells : tuple of str
        Run only the cells whose names start with one of these prefixes (empty: all); pilot and
        equal-compute cells run when a cell that needs them does.
    step_size_selection : str
        How the Langevin step sizes are chosen: always ``"validation"`` (recorded in ``results.json``).
    """

    dataset: str = "digits"
    architecture: str = "auto"
    conv_channels: tuple[int, ...] | None = None
    conv_hidden: int | None = None
    seeds: int = 5
    ablation_seeds: int = 3
    steps: int = 2000
    vae_steps: int = 2000
    prior_steps: int | None = None
    ablation_steps: int | None = None
    budgets: tuple[int, ...] = (400, 1600)
    eval_every: int = 50
    vae_eval_every: int = 100
    patience: int = 6
    validation_fraction: float = 0.15
    pilot_step_sizes: tuple[float, ...] = (0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)
    pilot_steps: int = 400
    pilot_seeds: int = 1
    sweep_factors: tuple[float, ...] = (0.1, 0.316, 1.0, 3.16, 10.0)
    cheap_is_samples: int = 64
    cheap_eval_points: int = 300
    cheap_generated: int = 300
    curve_fid: bool = True
    num_is_samples: int = 1000
    num_eval_points: int = 500
    num_generated: int = 2000
    encoder_chain_length: int = 20
    prior_chain_length: int = 300
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
    step_size_selection: str = STEP_SIZE_SELECTION

    @property
    def prior_cap(self) -> int:
        """Cap of the headline prior cell."""
        return self.prior_steps if self.prior_steps is not None else self.steps

    @property
    def ablation_cap(self) -> int:
        """Cap of the ablation and sweep cells."""
        return self.ablation_steps if self.ablation_steps is not None else self.steps

    def validate(self) -> ReproConfig:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in (
            "seeds",
            "ablation_seeds",
            "steps",
            "vae_steps",
            "eval_every",
            "vae_eval_every",
            "patience",
            "pilot_steps",
            "pilot_seeds",
            "threads",
            "jobs",
            "grid_samples",
            "encoder_chain_length",
            "prior_chain_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seeds < 2 or self.ablation_seeds < 2:
            raise ValueError(
                "seeds and ablation_seeds must be >= 2 (Welch's test needs two values per group)"
            )
        for name in ("prior_steps", "ablation_steps"):
            value = getattr(self, name)
            if value is not None and value not in (*self.budgets, self.steps):
                raise ValueError(
                    f"{name} must be None or one of the budgets {self.budgets} or steps ({self.steps}), "
                    f"got {value}: those cells are compared with the others at equal steps there"
                )
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive step counts, got {self.budgets}")
        for name in ("cheap_is_samples", "num_is_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if self.architecture not in ("auto", "mlp", "conv"):
            raise ValueError(f"architecture must be auto, mlp or conv, got {self.architecture!r}")
        if self.conv_channels is not None and (
            not self.conv_channels or any(int(c) < 1 for c in self.conv_channels)
        ):
            raise ValueError(f"conv_channels must be positive integers, got {self.conv_channels!r}")
        if self.conv_hidden is not None and int(self.conv_hidden) < 1:
            raise ValueError(f"conv_hidden must be a positive integer, got {self.conv_hidden!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        _check_pilot_grid(self.pilot_step_sizes)
        if not self.sweep_factors or any(not f > 0 for f in self.sweep_factors):
            raise ValueError("sweep_factors must be a non-empty list of positive numbers")
        if not any(math.isclose(f, 1.0) for f in self.sweep_factors) or len(self.sweep_factors) < 2:
            raise ValueError(
                "sweep_factors must include 1 (the chosen step size) and at least one other factor"
            )
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if "jeffreys" not in self.objectives:
            raise ValueError("objectives must include jeffreys (the paper's final method)")
        if self.step_size_selection != STEP_SIZE_SELECTION:
            raise ValueError(
                f"step_size_selection must be {STEP_SIZE_SELECTION!r}, got {self.step_size_selection!r}"
            )
        names = [c.name for c in build_cells(self, None)]
        for prefix in self.cells:
            if not any(n.startswith(prefix) for n in names):
                raise ValueError(f"cells: {prefix!r} matches none of {', '.join(names)}")
        return self


def _check_pilot_grid(grid: tuple[float, ...]) -> None:
    if len(grid) < 5 or any(not g > 0 for g in grid):
        raise ValueError(f"pilot_step_sizes must hold at least 5 positive values, got {grid}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"pilot_step_sizes must be increasing, got {grid}")
    if grid[-1] / grid[0] < 100 * (1 - 1e-3):
        raise ValueError(f"pilot_step_sizes must span at least two decades, got {grid[0]:g} .. {grid[-1]:g}")
    logs = [math.log(b / a) for a, b in zip(grid, grid[1:])]
    if max(logs) > 1.05 * min(logs):  # printed values are rounded: 5% slack on each ratio
        raise ValueError(f"pilot_step_sizes must be log-spaced (equal ratios), got {grid}")


def quick_config(**overrides: Any) -> ReproConfig:
    """The CI-sized configuration of ``--quick`` (a minute or two on two busy cores).

    Tiny budgets, two seeds, a two-point sweep, short chains, small K and no Fréchet distance along the way
    (the curves' Fréchet panel stays empty); the whole protocol still runs
    (pilot, early stopping, equal-compute retraining) and every artifact is written, but the verdicts of
    such a run are not evidence (the report says so).
    """
    base = dict(
        seeds=2,
        ablation_seeds=2,
        steps=16,
        vae_steps=32,
        budgets=(8,),
        eval_every=4,
        vae_eval_every=4,
        patience=3,
        pilot_steps=8,
        sweep_factors=(1.0, 3.16),
        cheap_is_samples=8,
        cheap_eval_points=100,
        cheap_generated=100,
        curve_fid=False,
        num_is_samples=20,
        num_eval_points=100,
        num_generated=100,
        prior_chain_length=10,
        encoder_chain_length=5,
        grid_samples=16,
        quick=True,
    )
    base.update(overrides)
    return ReproConfig(**base)


def config_from_dict(d: dict[str, Any]) -> ReproConfig:
    """The :class:`ReproConfig` of a ``results.json`` ``config`` entry (unknown keys ignored)."""
    fields = {f.name: f for f in dataclasses.fields(ReproConfig)}
    kwargs = {k: v for k, v in d.items() if k in fields}
    for key, f in fields.items():
        if key in kwargs and isinstance(kwargs[key], list) and "tuple" in str(f.type):
            kwargs[key] = tuple(kwargs[key])
    return ReproConfig(**kwargs)


def equal_step_budgets(cfg: ReproConfig) -> list[int]:
    """SGD budgets of the equal-steps view: ``budgets`` below the common cap, and the common cap."""
    cap = min(cfg.steps, cfg.vae_steps)
    return sorted({b for b in cfg.budgets if b < cap} | {cap})


# ---------------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------------


def split_validation(train: Any, fraction: float) -> tuple[Any, Any, dict[str, Any]]:
    """Carve the fixed validation split out of a training split.

    Parameters
    ----------
    train : ImageDataset
        The dataset's training split.
    fraction : float
        Fraction of its images held out (rounded, at least one, at most all but one).

    Returns
    -------
    (fit, validation, info)
        Two :class:`lpc_fast.data.ImageDataset` (splits ``"fit"`` and ``"validation"``) and a JSON-able
        description (seed, sizes, a digest of the validation indices).
    """
    import hashlib

    import numpy as np
    import torch

    from lpc_fast.data import ImageDataset

    n = len(train)
    if n < 2:
        raise ValueError(f"the training split has {n} image(s): too few to hold out a validation split")
    n_val = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng(VALIDATION_SEED).permutation(n)
    val_idx = np.sort(perm[:n_val])
    fit_idx = np.sort(perm[n_val:])

    def subset(idx: np.ndarray, split: str) -> ImageDataset:
        t = torch.from_numpy(idx)
        return ImageDataset(
            train.images[t],
            None if train.labels is None else train.labels[t],
            num_levels=train.num_levels,
            name=train.name,
            split=split,
            factors=None if train.factors is None else train.factors[t],
            factor_names=train.factor_names,
            spec=train.spec,
        )

    info = {
        "seed": VALIDATION_SEED,
        "fraction": fraction,
        "num_fit": int(fit_idx.size),
        "num_validation": int(val_idx.size),
        "indices_sha256": hashlib.sha256(val_idx.astype(np.int64).tobytes()).hexdigest()[:16],
        "rule": (
            f"numpy.random.default_rng({VALIDATION_SEED}).permutation(n_train)[:round({fraction:g} * "
            "n_train)]"
            " of the training split"
        ),
    }
    return subset(fit_idx, "fit"), subset(val_idx, "validation"), info


# ---------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------


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
        ``pilot`` (step-size choice), ``headline``, ``ablation``, ``sweep`` (robustness sweep) or
        ``equal`` (retraining at the cheaper method's converged budget).
    overrides : dict
        :class:`lpc_fast.train.TrainConfig` fields.
    steps : int
        Cap in SGD steps.
    seeds : tuple of int
        Seeds of the runs.
    eval_every : int
        SGD steps between validation evaluations.
    early_stopping : bool
        Whether a run stops after ``patience`` evaluations without a new best validation NLL (and reports
        its best validation state); otherwise it runs exactly ``steps`` steps and reports its last state.
    test_steps : tuple of int
        Steps (below the cap) at which the model is fully evaluated on the test split.
    test_eval : bool
        Whether the run is evaluated on the test split at all (never for the pilot).
    precondition, step_size, sweep_factor : optional
        Langevin settings, for the analysis.
    base_cell : str or None
        For ``equal`` cells: the cell retrained.
    """

    name: str
    label: str
    group: str
    overrides: dict[str, Any]
    steps: int
    seeds: tuple[int, ...]
    eval_every: int
    early_stopping: bool = True
    test_steps: tuple[int, ...] = ()
    test_eval: bool = True
    precondition: bool | None = None
    step_size: float | None = None
    sweep_factor: float | None = None
    base_cell: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _pre_tag(precondition: bool) -> str:
    return "pre" if precondition else "ula"


def _sampler(precondition: bool) -> str:
    return SAMPLERS[0] if precondition else SAMPLERS[1]


def lpc_cell_name(objective: str, precondition: bool) -> str:
    """Name of the encoder-warm-start LPC cell of ``objective`` with or without preconditioning."""
    return f"lpc_{objective}_{_pre_tag(precondition)}"


def sweep_cell_name(precondition: bool, factor: float) -> str:
    """The cell holding the sweep point ``chosen step size * factor`` of one sampler."""
    if math.isclose(factor, 1.0):
        return lpc_cell_name("jeffreys", precondition)
    return f"sweep_{_pre_tag(precondition)}_x{factor:g}"


def build_pilot_cells(cfg: ReproConfig) -> list[CellSpec]:
    """The step-size pilot: LPC (encoder init, Jeffreys) at each grid value, per sampler (no test use)."""
    seeds = tuple(PILOT_SEED_BASE + i for i in range(cfg.pilot_seeds))
    cells = []
    for pre in (True, False):
        for eta in cfg.pilot_step_sizes:
            cells.append(
                CellSpec(
                    f"pilot_{_pre_tag(pre)}_eta{eta:g}",
                    f"pilot: LPC, encoder init, Jeffreys, {'precond.' if pre else 'ULA'}, step size {eta:g}",
                    "pilot",
                    dict(
                        method="lpc",
                        warm_start="encoder",
                        num_langevin_steps=cfg.encoder_chain_length,
                        encoder_objective="jeffreys",
                        precondition=pre,
                        langevin_step_size=eta,
                    ),
                    cfg.pilot_steps,
                    seeds,
                    cfg.eval_every,
                    test_eval=False,
                    precondition=pre,
                    step_size=eta,
                )
            )
    return cells


def build_cells(cfg: ReproConfig, step_sizes: dict[str, float] | None) -> list[CellSpec]:
    """The main cells (headline, ablation, sweep), in report order.

    Parameters
    ----------
    cfg : ReproConfig
    step_sizes : dict or None
        The chosen step size per sampler (``{"preconditioned": ..., "ula": ...}``); None before the
        pilot (the cells then carry ``step_size=None``, which is enough to list their names).
    """

    def eta(pre: bool) -> float | None:
        return None if step_sizes is None else float(step_sizes[_sampler(pre)])

    head = tuple(range(cfg.seeds))
    abl = tuple(range(cfg.ablation_seeds))
    budgets = equal_step_budgets(cfg)

    def lpc(pre: bool, factor: float = 1.0, **kw: Any) -> dict[str, Any]:
        e = eta(pre)
        d = dict(method="lpc", precondition=pre, **kw)
        if e is not None:
            d["langevin_step_size"] = e * factor
        return d

    def tests(cap: int) -> tuple[int, ...]:
        return tuple(b for b in budgets if b < cap)

    enc = dict(warm_start="encoder", num_langevin_steps=cfg.encoder_chain_length)
    n = cfg.steps
    na = cfg.ablation_cap
    cells = [
        CellSpec(
            "vae",
            "VAE",
            "headline",
            dict(method="vae"),
            cfg.vae_steps,
            head,
            cfg.vae_eval_every,
            test_steps=tests(cfg.vae_steps),
        ),
    ]
    for pre in (True, False):
        cells.append(
            CellSpec(
                lpc_cell_name("jeffreys", pre),
                f"LPC, encoder init, Jeffreys, {'precond.' if pre else 'ULA'}",
                "headline",
                lpc(pre, **enc, encoder_objective="jeffreys"),
                n,
                head,
                cfg.eval_every,
                test_steps=tests(n),
                precondition=pre,
                step_size=eta(pre),
                sweep_factor=1.0,
            )
        )
    prior = dict(warm_start="prior", encoder_objective="jeffreys")
    cells.append(
        CellSpec(
            "lpc_prior",
            f"LPC, prior init (T={cfg.prior_chain_length}), Jeffreys, precond.",
            "headline",
            lpc(True, **prior, num_langevin_steps=cfg.prior_chain_length),
            cfg.prior_cap,
            head,
            cfg.eval_every,
            test_steps=tests(cfg.prior_cap),
            precondition=True,
            step_size=eta(True),
        )
    )
    cells.append(
        CellSpec(
            "lpc_prior_equal",
            f"LPC, prior init (T={cfg.encoder_chain_length}, equal compute), Jeffreys, precond.",
            "ablation",
            lpc(True, **prior, num_langevin_steps=cfg.encoder_chain_length),
            na,
            abl,
            cfg.eval_every,
            test_steps=tests(na),
            precondition=True,
            step_size=eta(True),
        )
    )
    for objective in cfg.objectives:
        if objective == "jeffreys":
            continue
        for pre in (True, False):
            cells.append(
                CellSpec(
                    lpc_cell_name(objective, pre),
                    f"LPC, encoder init, {objective}, {'precond.' if pre else 'ULA'}",
                    "ablation",
                    lpc(pre, **enc, encoder_objective=objective),
                    na,
                    abl,
                    cfg.eval_every,
                    test_steps=tests(na),
                    precondition=pre,
                    step_size=eta(pre),
                )
            )
    cells.append(
        CellSpec(
            "pc",
            "PC (temperature 0), encoder init, Jeffreys, precond.",
            "ablation",
            dict(lpc(True, **enc, encoder_objective="jeffreys"), method="pc"),
            na,
            abl,
            cfg.eval_every,
            test_steps=tests(na),
            precondition=True,
            step_size=eta(True),
        )
    )
    for pre in (True, False):
        for factor in cfg.sweep_factors:
            if math.isclose(factor, 1.0):
                continue  # the headline Jeffreys cell is this sweep point
            e = eta(pre)
            cells.append(
                CellSpec(
                    sweep_cell_name(pre, factor),
                    f"LPC, encoder init, Jeffreys, {'precond.' if pre else 'ULA'}, step size "
                    + (f"{e * factor:.3g} ({factor:g}× chosen)" if e is not None else f"{factor:g}× chosen"),
                    "sweep",
                    lpc(pre, factor, **enc, encoder_objective="jeffreys"),
                    na,
                    abl,
                    cfg.eval_every,
                    test_steps=tests(na),
                    precondition=pre,
                    step_size=None if e is None else e * factor,
                    sweep_factor=factor,
                )
            )
    return cells


#: The equal-compute comparisons: (A, B) pairs whose cheaper-to-converge member fixes the budget at which
#: the other is retrained.
EQUAL_COMPUTE_PAIRS = (("lpc_jeffreys_pre", "vae"),)
#: Cost counters of the equal-compute view: key in an evaluation record -> description.
COST_COUNTERS = {"decoder_grad_evals": "decoder gradient evaluations", "elapsed": "training time"}
#: What the ``elapsed`` counter measures, by :func:`time_measure`.
TIME_MEASURES = {
    "cpu": "CPU seconds of the single-threaded worker process spent in training steps (its wall clock on "
    "an idle machine, and not inflated when other work shares the cores)",
    "wall": "wall clock of the training steps",
}


def time_measure(device: Any, threads: int) -> str:
    """The key of :data:`TIME_MEASURES` used for a run on ``device`` with ``threads`` torch threads.

    CPU time is used for single-threaded CPU workers only: with several threads it would sum them.
    """
    return "cpu" if str(getattr(device, "type", device)) == "cpu" and threads == 1 else "wall"


def build_equal_cells(cells: list[CellSpec], costs: dict[str, dict[str, float]]) -> list[CellSpec]:
    """Retraining cells of the equal-compute view.

    Parameters
    ----------
    cells : list of CellSpec
        The main cells (the pair members are looked up by name).
    costs : dict
        Per cell name: ``<counter>_per_step`` (mean over seeds of the counter per SGD step) and
        ``<counter>_converged`` (mean over seeds of the counter at the run's best validation step), for
        each counter of :data:`COST_COUNTERS`. Missing or non-finite entries skip the comparison.

    Returns
    -------
    list of CellSpec
        For each pair and counter, the more expensive method retrained (same seeds, no early stopping) for
        ``round(cheaper's converged cost / its own cost per step)`` steps (at least 1, at most its cap).
    """
    by_name = {c.name: c for c in cells}
    out = []
    for a, b in EQUAL_COMPUTE_PAIRS:
        if a not in by_name or b not in by_name or a not in costs or b not in costs:
            continue
        for counter, what in COST_COUNTERS.items():
            ca, cb = costs[a].get(f"{counter}_converged"), costs[b].get(f"{counter}_converged")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (ca, cb)):
                continue
            cheap, dear = (a, b) if ca <= cb else (b, a)
            budget = min(ca, cb)
            per_step = costs[dear].get(f"{counter}_per_step")
            if not (isinstance(per_step, (int, float)) and per_step > 0 and math.isfinite(per_step)):
                continue
            base = by_name[dear]
            steps = int(min(base.steps, max(1, round(budget / per_step))))
            tag = "evals" if counter == "decoder_grad_evals" else "time"
            out.append(
                CellSpec(
                    f"equal_{tag}_{dear}",
                    f"{base.label}, retrained to the {what} at which {by_name[cheap].label} converged "
                    f"({steps} steps)",
                    "equal",
                    dict(base.overrides),
                    steps,
                    base.seeds,
                    base.eval_every,
                    early_stopping=False,
                    precondition=base.precondition,
                    step_size=base.step_size,
                    base_cell=dear,
                    extra={"counter": counter, "budget": budget, "cheaper": cheap, "pair": [a, b]},
                )
            )
    return out
