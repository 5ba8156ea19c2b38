"""Check the paper's claims (LPC.md §4) in the open: choose step sizes on validation, train, test, report.

``lpc-fast reproduce`` trains, with the same model, likelihood, optimizer, batch size and seeds, the VAE
baseline, LPC from the prior (the paper's ``T = 300`` and an equal-compute ``T = 20``), LPC with the
encoder warm start for each encoder objective with and without preconditioning, deterministic predictive
coding, and a step-size robustness sweep; every run stops early on a validation split; each claim is
decided by one-sided Welch tests at equal SGD steps, at convergence and at equal compute.

The package, by what its modules hold (imports only go down this list, never up):

* :mod:`~lpc_fast.eval.reproduce.common`: JSON cleaning and number formats;
* :mod:`~lpc_fast.eval.reproduce.stats`: Student's t, Welch's test, one-sided verdicts and verdict rules;
* :mod:`~lpc_fast.eval.reproduce.plan`: the protocol, configuration, validation split, cells, budgets, seeds;
* :mod:`~lpc_fast.eval.reproduce.claims`: summary tables and the verdict of each claim under each view;
* :mod:`~lpc_fast.eval.reproduce.figures` and :mod:`~lpc_fast.eval.reproduce.report`: PNG figures and
  ``REPORT.md``;
* :mod:`~lpc_fast.eval.reproduce.runner`: parallel training with a resumable ``results.json``;
* :mod:`~lpc_fast.eval.reproduce.cli`: the command line.
"""

from __future__ import annotations

from .claims import FINAL_METRICS, VIEWS, evaluate_claims, metric_values, summarise, to_target
from .cli import build_parser, config_from_args, main
from .plan import (
    HEADLINE_CELLS,
    VALIDATION_SEED,
    CellSpec,
    ReproConfig,
    build_cells,
    build_equal_cells,
    build_pilot_cells,
    equal_step_budgets,
    lpc_cell_name,
    quick_config,
    split_validation,
    sweep_cell_name,
)
from .report import write_report
from .runner import (
    GRIDS_FILE,
    RESULTS_FORMAT,
    ReproError,
    choose_step_sizes,
    rebuild_report,
    run_reproduction,
)
from .stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Comparison,
    cap_guard,
    combine_all,
    mean_se,
    non_inferiority,
    student_t_cdf,
    superiority,
    t_quantile,
    welch,
)

__all__ = [
    "FINAL_METRICS",
    "GRIDS_FILE",
    "HEADLINE_CELLS",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "RESULTS_FORMAT",
    "SUPPORTED",
    "VALIDATION_SEED",
    "VIEWS",
    "CellSpec",
    "Comparison",
    "ReproConfig",
    "ReproError",
    "build_cells",
    "build_equal_cells",
    "build_parser",
    "build_pilot_cells",
    "cap_guard",
    "choose_step_sizes",
    "combine_all",
    "config_from_args",
    "equal_step_budgets",
    "evaluate_claims",
    "lpc_cell_name",
    "main",
    "mean_se",
    "metric_values",
    "non_inferiority",
    "quick_config",
    "rebuild_report",
    "run_reproduction",
    "split_validation",
    "student_t_cdf",
    "summarise",
    "superiority",
    "sweep_cell_name",
    "t_quantile",
    "to_target",
    "welch",
    "write_report",
]
