"""The command line of ``lpc-fast reproduce``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lpc_fast._paths import NPZ_DATASET, OUT_DIR, path_option, resolve_path_args

from .plan import ReproConfig, quick_config
from .runner import ReproError, rebuild_report, run_reproduction

__all__ = ["build_parser", "config_from_args", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_list(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive {what}, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    return _positive_list(text, float, "numbers")


def _int_list(text: str) -> tuple[int, ...]:
    return _positive_list(text, int, "integers")


#: Command-line option (argparse dest) -> ReproConfig field, for the options that override a field.
_FIELDS = {
    "seeds": "seeds",
    "ablation_seeds": "ablation_seeds",
    "steps": "steps",
    "vae_steps": "vae_steps",
    "prior_steps": "prior_steps",
    "ablation_steps": "ablation_steps",
    "budgets": "budgets",
    "eval_every": "eval_every",
    "vae_eval_every": "vae_eval_every",
    "patience": "patience",
    "pilot_steps": "pilot_steps",
    "pilot_step_sizes": "pilot_step_sizes",
    "sweep_factors": "sweep_factors",
    "num_is_samples": "num_is_samples",
    "cheap_is_samples": "cheap_is_samples",
    "curve_fid": "curve_fid",
    "prior_chain_length": "prior_chain_length",
    "architecture": "architecture",
    "conv_channels": "conv_channels",
    "conv_hidden": "conv_hidden",
    "alpha": "alpha",
    "threads": "threads",
    "jobs": "jobs",
    "cells": "cells",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lpc-fast reproduce``."""
    d = ReproConfig()
    q = quick_config()
    p = argparse.ArgumentParser(
        prog="lpc-fast reproduce",
        description="Choose the Langevin step sizes on a validation split, train the VAE, LPC (several "
        "variants) and PC to convergence with early stopping over several seeds, evaluate them on the test "
        "split and test the paper's claims at equal SGD steps, at convergence and at equal compute; writes "
        "results.json (after every finished run), REPORT.md and PNG figures.",
    )
    path_option(
        p,
        "--dataset",
        path=NPZ_DATASET,
        default=d.dataset,
        help="dataset name (digits, shapes32 with the conv network, any local dataset, npz:PATH)",
    )
    path_option(
        p, "--out", path=OUT_DIR, default="runs/reproduce", help="output directory (default runs/reproduce)"
    )
    p.add_argument("--quick", action="store_true", help="CI-sized run: tiny budgets, 2 seeds, small K")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted reproduction in --out: keep its finished runs, train the rest",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not train: recompute the verdicts, figures and REPORT.md from --out/results.json",
    )
    p.add_argument("--seeds", type=_positive_int, help=f"seeds of the headline cells (default {d.seeds})")
    p.add_argument(
        "--ablation-seeds", type=_positive_int, help=f"seeds of the other cells (default {d.ablation_seeds})"
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        help=f"SGD step cap of LPC / PC runs (default {d.steps}; quick {q.steps})",
    )
    p.add_argument("--vae-steps", type=_positive_int, help=f"SGD step cap of the VAE (default {d.vae_steps})")
    p.add_argument(
        "--prior-steps",
        type=_positive_int,
        help="SGD step cap of the prior-initialised cell at the paper's T (one of --budgets or --steps; "
        "default --steps)",
    )
    p.add_argument(
        "--ablation-steps",
        type=_positive_int,
        help="SGD step cap of the ablation and sweep cells (one of --budgets or --steps; default --steps)",
    )
    p.add_argument(
        "--budgets",
        type=_int_list,
        help="comma-separated SGD steps of the equal-steps test evaluations "
        f"(default {','.join(map(str, d.budgets))})",
    )
    p.add_argument(
        "--eval-every",
        type=_positive_int,
        help=f"LPC / PC steps between validation evaluations ({d.eval_every})",
    )
    p.add_argument(
        "--vae-eval-every",
        type=_positive_int,
        help=f"VAE steps between validation evaluations ({d.vae_eval_every})",
    )
    p.add_argument(
        "--patience",
        type=_positive_int,
        help=f"validation evaluations without improvement before a run stops ({d.patience})",
    )
    p.add_argument(
        "--pilot-steps", type=_positive_int, help=f"SGD step cap of each pilot run ({d.pilot_steps})"
    )
    p.add_argument(
        "--pilot-step-sizes",
        type=_float_list,
        help="comma-separated, log-spaced pilot grid (>= 5 values spanning >= two decades)",
    )
    p.add_argument(
        "--sweep-factors",
        type=_float_list,
        help="comma-separated factors of the chosen step size in the robustness sweep (must include 1)",
    )
    p.add_argument(
        "--num-is-samples",
        type=_positive_int,
        help=f"importance samples K of the test evaluations (default {d.num_is_samples}; "
        f"quick {q.num_is_samples})",
    )
    p.add_argument(
        "--cheap-is-samples",
        type=_positive_int,
        help=f"K of the validation evaluations ({d.cheap_is_samples})",
    )
    p.add_argument(
        "--prior-chain-length",
        type=_positive_int,
        help=f"T of the headline prior cell (default {d.prior_chain_length})",
    )
    p.add_argument(
        "--curve-fid",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Fréchet distance at every validation evaluation (curves only; default on, quick off)",
    )
    p.add_argument(
        "--architecture", choices=("auto", "mlp", "conv"), help="default auto: conv for side >= 32"
    )
    p.add_argument(
        "--conv-channels",
        type=_int_list,
        help="comma-separated channels of the conv networks (default: the beta-VAE widths 64,64,32,32)",
    )
    p.add_argument(
        "--conv-hidden", type=_positive_int, help="fully connected width of the conv networks (default 256)"
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
    return p


def config_from_args(args: argparse.Namespace) -> ReproConfig:
    """The :class:`ReproConfig` of parsed command-line arguments."""
    overrides: dict[str, Any] = {"dataset": args.dataset, "device": args.device, "backend": args.backend}
    for arg, fld in _FIELDS.items():
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Path options first: one line naming the option before anything runs.
        resolve_path_args(
            parser, args, lambda msg: print(f"lpc-fast reproduce: note: {msg}", file=sys.stderr)
        )
        cfg = None if args.report_only else config_from_args(args)
    except ValueError as exc:
        print(f"lpc-fast reproduce: error: {exc}", file=sys.stderr)
        return 2
    try:
        if cfg is None:
            results = rebuild_report(args.out)
        else:
            results = run_reproduction(
                cfg, args.out, argv=["lpc-fast", "reproduce", *argv], resume=args.resume
            )
    except (ReproError, FileNotFoundError, FileExistsError, DatasetError) as exc:
        print(f"lpc-fast reproduce: error: {exc}", file=sys.stderr)
        return 2
    width = max(len(c["claim"]) for c in results["claims"])
    for c in results["claims"]:
        for v in c["views"] or [{"view": "-", "verdict": "inconclusive (cells not run)"}]:
            print(f"{c['claim']:<{width}}  ({v['view']})  {v['verdict']}")
    print(f"report: {Path(args.out) / 'REPORT.md'}")
    return 0
