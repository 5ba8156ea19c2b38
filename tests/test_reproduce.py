"""The reproduction package: statistics with known answers, the plan, the verdict rules, and a CI-sized run.

Statistics are checked against closed forms, against reference values computed once with scipy (hard-coded
below with their source, so these tests need no scipy), against a hand-worked Welch example, and by
simulation under the null. The verdict rules are checked on constructed results whose right answer is
known. The end-to-end tests run the whole protocol (pilot, early stopping, equal-compute retraining) at CI
size, check every artifact, and stop and resume a run.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lpc_fast.eval.reproduce import (
    HEADLINE_CELLS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    ReproConfig,
    build_cells,
    build_equal_cells,
    build_parser,
    build_pilot_cells,
    cap_guard,
    choose_step_sizes,
    combine_all,
    equal_step_budgets,
    evaluate_claims,
    lpc_cell_name,
    main,
    non_inferiority,
    quick_config,
    split_validation,
    student_t_cdf,
    summarise,
    superiority,
    sweep_cell_name,
    t_quantile,
    welch,
    write_report,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lpc_fast" / "eval" / "reproduce"

# -- Student's t and Welch ---------------------------------------------------------------------------

#: scipy 1.17.1, ``scipy.stats.t.cdf(t, df)``, computed once on 2026-12-03.
T_CDF_SCIPY = {
    (1.5, -4.0): 0.044916263477164126,
    (1.5, -1.0): 0.22556768363835517,
    (1.5, 0.5): 0.65971644466503,
    (1.5, 2.5): 0.915096748692652,
    (3.0, -4.0): 0.014004228005073076,
    (3.0, 0.5): 0.6742760175759245,
    (7.3, -4.0): 0.002381183582163554,
    (7.3, -1.0): 0.17464922822655723,
    (7.3, 2.5): 0.9801748826671998,
    (30.0, -4.0): 0.0001909228180418782,
    (30.0, -1.0): 0.1626543077130151,
    (30.0, 2.5): 0.9909421754659666,
}
#: scipy 1.17.1, ``scipy.stats.t.ppf(p, df)``, computed once on 2026-12-03.
T_PPF_SCIPY = {
    (1.5, 0.9): 2.1963984175655376,
    (1.5, 0.95): 3.70518082009675,
    (1.5, 0.995): 17.820310514462804,
    (3.0, 0.95): 2.3533634348018233,
    (3.0, 0.975): 3.1824463052837078,
    (7.3, 0.95): 1.8829300179564308,
    (7.3, 0.995): 3.451031655622185,
    (30.0, 0.9): 1.3104150253913955,
    (30.0, 0.975): 2.0422724563012378,
}


def test_student_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
    for t in (-7.0, -1.3, -0.2, 0.0, 0.4, 1.0, 3.5, 40.0):
        assert student_t_cdf(t, 1.0) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)
        assert student_t_cdf(t, 2.0) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-10)
    # Large df tends to the standard normal.
    for t in (-2.0, -0.5, 1.0, 1.96):
        assert student_t_cdf(t, 1e6) == pytest.approx(0.5 * math.erfc(-t / math.sqrt(2)), abs=1e-5)
    assert student_t_cdf(math.inf, 3.0) == 1.0 and student_t_cdf(-math.inf, 3.0) == 0.0


def test_student_t_cdf_and_quantile_match_scipy_reference_values():
    for (df, t), ref in T_CDF_SCIPY.items():
        assert student_t_cdf(t, df) == pytest.approx(ref, rel=1e-9, abs=1e-12), (df, t)
    for (df, p), ref in T_PPF_SCIPY.items():
        assert t_quantile(p, df) == pytest.approx(ref, rel=1e-9), (df, p)
        assert t_quantile(1 - p, df) == pytest.approx(-ref, rel=1e-9)  # symmetry
    # Closed form for df = 2: t_p = (2p - 1) sqrt(2 / (4 p (1 - p))).
    for p in (0.6, 0.95, 0.999):
        assert t_quantile(p, 2.0) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 3.0)
    with pytest.raises(ValueError, match="df must be"):
        t_quantile(0.5, 0.0)


def test_welch_on_a_hand_worked_example():
    a, b = [1.0, 2.0, 4.0, 3.5], [2.5, 3.0, 6.0]
    # By hand: mean(a) = 21/8, s_a^2 = 91/48, so s_a^2 / n_a = 91/192; mean(b) = 23/6, s_b^2 = 43/12,
    # s_b^2 / n_b = 43/36. Welch–Satterthwaite: df = (va + vb)^2 / (va^2 / 3 + vb^2 / 2).
    va, vb = Fraction(91, 192), Fraction(43, 36)
    df_exact = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    diff, se, df = welch(a, b)
    assert diff == pytest.approx(float(Fraction(21, 8) - Fraction(23, 6)), rel=1e-14)
    assert se == pytest.approx(math.sqrt(float(va + vb)), rel=1e-14)
    assert df == pytest.approx(float(df_exact), rel=1e-12)
    assert df == pytest.approx(3.5314264956121066, rel=1e-12)  # scipy 1.17.1 ttest_ind(equal_var=False).df
    # scipy 1.17.1: ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    assert student_t_cdf(diff / se, df) == pytest.approx(0.20449229664915158, rel=1e-9)


def test_welch_resolution_adds_rounding_variance():
    _, se, _ = welch([10.0, 10.0], [20.0, 20.0], resolution=(6.0, 6.0))
    assert se == pytest.approx(math.sqrt(2 * 36.0 / 12.0 / 2))
    with pytest.raises(ValueError, match="two values"):
        welch([1.0], [2.0, 3.0])


# -- verdict rules -----------------------------------------------------------------------------------


def test_clear_difference_is_supported_and_its_reverse_not():
    good, bad = [10.0, 10.2, 9.9, 10.1], [12.0, 12.3, 11.8, 12.1]
    c = superiority(good, bad, alpha=0.05)
    assert c.verdict == SUPPORTED and c.p_support < 0.05
    r = superiority(bad, good, alpha=0.05)
    assert r.verdict == NOT_SUPPORTED and r.p_against < 0.05
    # Direction flag: for a higher-is-better metric the same numbers mean the opposite.
    assert superiority(good, bad, higher_is_better=True).verdict == NOT_SUPPORTED


def test_one_sided_p_value_and_interval_are_the_welch_ones():
    a, b = [1.0, 2.0, 4.0, 3.5], [2.5, 3.0, 6.0]
    c = superiority(a, b, alpha=0.05)  # lower is better: the claim is mean(a) < mean(b)
    assert c.p_support == pytest.approx(0.20449229664915158, rel=1e-9)
    assert c.p_against == pytest.approx(1 - 0.20449229664915158, rel=1e-9)
    q = t_quantile(0.95, c.df)
    assert c.ci == pytest.approx((c.diff - q * c.se, c.diff + q * c.se))
    assert c.verdict == INCONCLUSIVE


def test_overlapping_groups_are_inconclusive():
    c = superiority([10.0, 12.0, 11.0], [10.5, 11.5, 11.2])
    assert c.verdict == INCONCLUSIVE
    assert c.p_support >= 0.05 and c.p_against >= 0.05


def test_degenerate_inputs_are_inconclusive():
    assert superiority([1.0], [2.0, 3.0]).verdict == INCONCLUSIVE  # one value
    assert superiority([1.0, math.nan], [2.0, 3.0]).verdict == INCONCLUSIVE
    # Constant groups: no test exists, however far apart the constants are.
    c = superiority([1.0, 1.0, 1.0], [5.0, 5.0, 5.0])
    assert c.verdict == INCONCLUSIVE and c.p_support is None


def test_non_inferiority_margin():
    b = [100.0, 100.5, 99.5, 100.2]
    within = [100.6, 100.9, 100.4, 100.7]  # ~0.6 worse, margin 2
    assert non_inferiority(within, b, 2.0).verdict == SUPPORTED
    assert non_inferiority(within, b, 0.0).verdict != SUPPORTED  # no margin: a worse A cannot "match"
    far = [106.0, 106.4, 105.8, 106.1]
    assert non_inferiority(far, b, 2.0).verdict == NOT_SUPPORTED
    assert non_inferiority([99.0, 99.1, 98.9], [50.0, 51.0, 49.0], 1.0, higher_is_better=True).verdict == (
        SUPPORTED
    )
    with pytest.raises(ValueError):
        non_inferiority(within, b, -1.0)


@pytest.mark.parametrize("test", ["superiority", "non_inferiority"])
def test_supported_only_when_the_test_rejects(test):
    rng = np.random.default_rng(0)
    for _ in range(400):
        n_a, n_b = rng.integers(2, 6, size=2)
        a = rng.normal(rng.normal(0, 1), rng.uniform(0.01, 2), n_a)
        b = rng.normal(rng.normal(0, 1), rng.uniform(0.01, 2), n_b)
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        if test == "superiority":
            c = superiority(a, b, alpha=alpha)
        else:
            c = non_inferiority(a, b, float(rng.uniform(0, 1)), alpha=alpha)
        if c.verdict == SUPPORTED:
            assert c.p_support is not None and c.p_support < alpha
            assert c.ci is not None and c.ci[1] - (c.margin or 0.0) < 1e-9  # interval below the margin
        elif c.verdict == NOT_SUPPORTED:
            assert c.p_against is not None and c.p_against < alpha
        else:
            assert c.p_support is None or (c.p_support >= alpha and c.p_against >= alpha)


@pytest.mark.statistical
def test_false_positive_rate_under_the_null():
    # Same distribution, 3 seeds each: "supported" should come out about alpha of the time. With 4000
    # draws the binomial sd is 0.0034, so 0.065 is more than 4 sd above 0.05 (false alarm < 1e-4).
    rng = np.random.default_rng(1)
    hits = sum(
        superiority(rng.normal(0, 1, 3), rng.normal(0, 1, 3), alpha=0.05).verdict == SUPPORTED
        for _ in range(4000)
    )
    assert hits / 4000 < 0.065


def test_combine_all():
    assert combine_all([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_all([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_all([SUPPORTED, NOT_SUPPORTED]) == NOT_SUPPORTED
    assert combine_all([]) == INCONCLUSIVE


def test_cap_guard_accepts_only_verdicts_against_converged_opponents():
    # A verdict for A stands only if B converged; a verdict against A only if A converged.
    assert cap_guard(SUPPORTED, False, False) == (SUPPORTED, "")
    assert cap_guard(SUPPORTED, True, False) == (SUPPORTED, "")  # A capped yet better: still better
    assert cap_guard(SUPPORTED, False, True)[0] == INCONCLUSIVE
    assert cap_guard(NOT_SUPPORTED, False, True) == (NOT_SUPPORTED, "")
    assert cap_guard(NOT_SUPPORTED, True, False)[0] == INCONCLUSIVE
    assert cap_guard(INCONCLUSIVE, True, True) == (INCONCLUSIVE, "")


# -- the plan ----------------------------------------------------------------------------------------


def test_last_window_gain_measures_the_fall_of_the_best_validation_nll():
    from lpc_fast.eval.reproduce.report import last_window_gain

    evals = [
        {"step": s, "val_nll": v}
        for s, v in [(0, 600.0), (100, 120.0), (200, 118.0), (300, 119.0), (400, 117.5)]
    ]
    # Best up to step 400 - 200 = 200 is 118.0; best overall 117.5.
    assert last_window_gain(evals, 200) == pytest.approx(0.5)
    # A window with no improvement gains 0; a window longer than the run has no answer.
    assert last_window_gain(evals[:4], 100) == pytest.approx(0.0)
    assert last_window_gain(evals, 500) is None and last_window_gain([], 100) is None
    # Non-finite (diverged) evaluations are ignored.
    bad = [*evals, {"step": 500, "val_nll": math.nan}]
    assert last_window_gain(bad, 300) == pytest.approx(118.0 - 117.5)


def test_pilot_grid_must_be_log_spaced_over_two_decades():
    ReproConfig().validate()
    assert len(ReproConfig().pilot_step_sizes) >= 5
    for grid, match in (
        ((0.01, 0.1, 1.0, 10.0), "at least 5"),
        ((0.1, 0.2, 0.4, 0.8, 1.6), "two decades"),
        ((0.01, 0.02, 0.1, 0.5, 1.0), "log-spaced"),
        ((0.01, 0.1, 0.05, 0.5, 1.0), "increasing"),
    ):
        with pytest.raises(ValueError, match=match):
            ReproConfig(pilot_step_sizes=grid).validate()
    with pytest.raises(ValueError, match="include 1"):
        ReproConfig(sweep_factors=(0.1, 10.0)).validate()
    with pytest.raises(ValueError, match="prior_steps"):
        ReproConfig(prior_steps=777).validate()
    with pytest.raises(ValueError, match="ablation_steps"):
        ReproConfig(ablation_steps=777).validate()


def test_cells_follow_the_protocol():
    cfg = ReproConfig()
    chosen = {"preconditioned": 0.2, "ula": 0.01}
    cells = {c.name: c for c in build_cells(cfg, chosen)}
    for name in HEADLINE_CELLS:
        assert cells[name].seeds == tuple(range(5)), name
    assert cells["lpc_prior"].overrides["num_langevin_steps"] == 300
    assert cells["lpc_prior_equal"].overrides["num_langevin_steps"] == 20
    for name, c in cells.items():
        if name not in HEADLINE_CELLS:
            assert c.seeds == tuple(range(3)), name
        if c.precondition is not None:
            eta = chosen["preconditioned" if c.precondition else "ula"] * (c.sweep_factor or 1.0)
            assert c.overrides["langevin_step_size"] == pytest.approx(eta), name
            assert c.overrides["precondition"] == c.precondition
        assert c.early_stopping and c.test_eval
    assert cells[sweep_cell_name(False, 10.0)].overrides["langevin_step_size"] == pytest.approx(0.1)
    assert sweep_cell_name(True, 1.0) == lpc_cell_name("jeffreys", True)
    assert cells["vae"].steps == cfg.vae_steps and cells["vae"].eval_every == cfg.vae_eval_every
    assert equal_step_budgets(cfg) == [400, 1600, 2000]
    assert cells["vae"].test_steps == (400, 1600)  # the cap is evaluated anyway
    short = {c.name: c for c in build_cells(ReproConfig(prior_steps=400, ablation_steps=1600), chosen)}
    for name, c in short.items():
        expected = {"vae": cfg.vae_steps, "lpc_prior": 400}.get(
            name, cfg.steps if c.group == "headline" else 1600
        )
        assert c.steps == expected, name
        assert c.test_steps == tuple(b for b in (400, 1600) if b < expected), name
    pilot = build_pilot_cells(cfg)
    assert len(pilot) == 2 * len(cfg.pilot_step_sizes)
    assert all(not c.test_eval and set(c.seeds).isdisjoint(range(cfg.seeds)) for c in pilot)
    assert {c.step_size for c in pilot} == set(cfg.pilot_step_sizes)


def test_validation_split_is_fixed_disjoint_and_documented():
    import torch

    from lpc_fast.data import ImageDataset

    images = torch.arange(200, dtype=torch.float32).reshape(200, 1, 1, 1) / 200
    train = ImageDataset(images, torch.arange(200), num_levels=None, name="toy", split="train")
    fit, val, info = split_validation(train, 0.15)
    fit2, val2, info2 = split_validation(train, 0.15)
    assert len(val) == 30 and len(fit) == 170 and info["num_validation"] == 30
    assert torch.equal(val.images, val2.images) and info == info2  # fixed, whatever the run's seed
    assert set(val.labels.tolist()).isdisjoint(fit.labels.tolist())
    assert sorted(val.labels.tolist() + fit.labels.tolist()) == list(range(200))
    assert val.split == "validation" and fit.split == "fit"
    with pytest.raises(ValueError, match="too few"):
        split_validation(ImageDataset(images[:1], None, num_levels=None, name="toy", split="train"), 0.5)


def _pilot_run(cell, seed, val_nll, diverged=False):
    return {"cell": cell, "seed": seed, "diverged": diverged, "best": {"val_nll": val_nll, "step": 10}}


def test_step_size_choice_takes_the_lowest_validation_nll():
    cfg = ReproConfig(pilot_seeds=2)
    runs = []
    for c in build_pilot_cells(cfg):
        pre = c.precondition
        # Preconditioned: best at 0.1; ULA: best at 1.0 but that one diverged once -> 0.316.
        score = abs(math.log10(c.step_size) - (-1.0 if pre else 0.0))
        for s in c.seeds:
            runs.append(
                _pilot_run(c.name, s, 100 + score, diverged=(not pre and c.step_size == 1.0 and s == 100))
            )
    choice = choose_step_sizes(cfg, runs)
    assert choice["chosen"] == {"preconditioned": 0.1, "ula": 0.316}
    ula = {r["step_size"]: r for r in choice["table"]["ula"]}
    assert ula[1.0]["diverged"] == 1 and math.isinf(ula[1.0]["val_nll"])
    all_bad = [dict(r, diverged=True) if "ula" in r["cell"] else r for r in runs]
    with pytest.raises(RuntimeError, match="ula"):
        choose_step_sizes(cfg, all_bad)
    with pytest.raises(RuntimeError, match="runs finished"):
        choose_step_sizes(cfg, runs[1:])


def test_equal_compute_cells_retrain_the_dearer_method_to_the_cheaper_ones_budget():
    cfg = ReproConfig()
    cells = build_cells(cfg, {"preconditioned": 0.1, "ula": 0.01})
    costs = {
        "lpc_jeffreys_pre": {
            "decoder_grad_evals_per_step": 22.0,
            "decoder_grad_evals_converged": 22.0 * 1200,
            "elapsed_per_step": 0.05,
            "elapsed_converged": 0.05 * 1200,
        },
        "vae": {
            "decoder_grad_evals_per_step": 1.0,
            "decoder_grad_evals_converged": 3000.0,
            "elapsed_per_step": 0.004,
            "elapsed_converged": 0.004 * 3000,
        },
    }
    eq = {c.name: c for c in build_equal_cells(cells, costs)}
    # The VAE converges with 3000 decoder evaluations and 12 s; LPC is retrained to those budgets.
    assert eq["equal_evals_lpc_jeffreys_pre"].steps == round(3000 / 22)
    assert eq["equal_time_lpc_jeffreys_pre"].steps == round(12 / 0.05)
    for c in eq.values():
        assert c.group == "equal" and not c.early_stopping and c.base_cell == "lpc_jeffreys_pre"
        assert c.seeds == tuple(range(cfg.seeds)) and c.overrides["method"] == "lpc"
    costs["vae"]["decoder_grad_evals_converged"] = 1e9  # now LPC is the cheaper one: the VAE is retrained
    eq = {c.name: c for c in build_equal_cells(cells, costs)}
    assert eq["equal_evals_vae"].steps == min(cfg.vae_steps, 22 * 1200)  # capped at the VAE's cap
    assert build_equal_cells(cells, {"vae": costs["vae"]}) == []


# -- claim-level rules on synthetic results ----------------------------------------------------------


def _synthetic_results(final_nll, *, capped=(), diverged=(), cfg=None):
    """A results dict shaped like run_reproduction's; test NLL of (cell, seed) is ``final_nll(cell, seed)``
    at every budget and at the end; runs in ``capped`` stopped at their cap, others by patience."""
    cfg = cfg or ReproConfig(
        seeds=4, ablation_seeds=3, steps=100, vae_steps=100, budgets=(50,), eval_every=10, vae_eval_every=10
    )
    chosen = {"preconditioned": 0.1, "ula": 0.01}
    cells = build_cells(cfg, chosen)
    runs = []
    for cell in cells:
        per_step = 1 if cell.name == "vae" else 22
        for seed in cell.seeds:
            nll = final_nll(cell.name, seed)
            bad = (cell.name, seed) in diverged
            cap = cell.name in capped
            stop = cell.steps if cap else int(0.8 * cell.steps)
            best = stop if cap else int(0.5 * cell.steps)
            evals = [
                {
                    "step": s,
                    "decoder_grad_evals": s * per_step,
                    "elapsed": s * 0.01 * per_step,
                    "val_nll": nll + 100.0 * (1 - s / best) if s <= best else nll + 1,
                    "val_fid": None,
                }
                for s in range(0, stop + 1, cell.eval_every)
            ]
            final = None if bad else {"nll_nats": nll, "fid": 10.0 + nll / 100, "bits_per_dim": nll / 44}
            full = {} if bad else {str(b): final for b in cell.test_steps if b <= stop}
            if cap and not bad:
                full[str(cell.steps)] = final
            runs.append(
                {
                    "cell": cell.name,
                    "seed": seed,
                    "diverged": bad,
                    "stop_reason": "diverged" if bad else ("cap" if cap else "patience"),
                    "stop_step": stop,
                    "hit_cap": cap and not bad,
                    "steps_done": stop,
                    "final_step": best,
                    "best": {
                        "step": best,
                        "val_nll": nll,
                        "decoder_grad_evals": best * per_step,
                        "elapsed": best,
                    },
                    "decoder_grad_evals_per_step": per_step,
                    "train_seconds": stop * 0.01 * per_step,
                    "evals": evals,
                    "full_evals": full,
                    "final": final,
                }
            )
    results = {
        "config": dataclasses.asdict(cfg) | {"chosen_step_sizes": chosen},
        "cells": [dataclasses.asdict(c) for c in cells],
        "runs": runs,
        "dataset": {
            "name": "synthetic",
            "num_levels": 17,
            "num_dims": 64,
            "shape": [1, 8, 8],
            "num_train": 10,
            "num_test": 10,
        },
        "eval_sizes": {
            "num_is_samples": 1000,
            "cheap_is_samples": 64,
            "cheap_eval_points": 100,
            "cheap_generated": 100,
            "num_eval_points": 100,
            "num_generated": 100,
        },
        "created": "2026-01-01T00:00:00+00:00",
        "machine": {"platform": "test", "cpu_count": 1},
        "torch_version": "x",
        "num_threads": 1,
        "jobs": 1,
        "device": "cpu",
        "backend": "kernel backend: reference",
        "architecture": "mlp",
        "feature_space": "synthetic",
    }
    results["summary"] = summarise(results)
    results["claims"] = evaluate_claims(results)
    return results


def _views(results, cid, view):
    claim = next(c for c in results["claims"] if c["id"] == cid)
    return [v for v in claim["views"] if v["view"] == view]


def test_claims_follow_clear_synthetic_effects():
    noise = [0.0, 0.3, -0.2, 0.1, 0.2]

    def nll(cell, seed):
        base = {"lpc_prior": 130.0, "lpc_prior_equal": 131.0, lpc_cell_name("forward_kl", True): 125.0}
        value = base.get(cell, 100.0)
        if cell.startswith("sweep_ula"):
            value = 100.0 + 80.0 * ("x10" in cell)  # ULA breaks down at the largest step size
        return value + noise[seed] * (1.0 + 0.5 * len(cell) % 3)

    results = _synthetic_results(nll, diverged={(sweep_cell_name(False, 10.0), 0)})
    for view in ("a", "b", "c"):
        assert all(v["verdict"] == SUPPORTED for v in _views(results, "encoder_beats_prior", view)), view
    for view in ("a", "b"):
        assert all(v["verdict"] == SUPPORTED for v in _views(results, "best_objective", view))
        assert all(v["verdict"] == SUPPORTED for v in _views(results, "precondition_robust", view))
        assert all(v["verdict"] == SUPPORTED for v in _views(results, "matches_vae", view))
    assert len(_views(results, "matches_vae", "a")) == len(
        equal_step_budgets(ReproConfig(steps=100, budgets=(50,)))
    )
    rob = next(c for c in results["claims"] if c["id"] == "precondition_robust")
    assert rob["diverged"] == {"pre": 0, "ula": 1}
    report = write_report(results)
    assert report.index("## Protocol") < report.index("## Verdicts")
    for c in results["claims"]:
        for v in c["views"]:
            assert f"| {c['claim']} | ({v['view']}) " in report


def test_claims_without_effects_are_not_supported():
    rng = np.random.default_rng(3)
    table = {}

    def nll(cell, seed):
        return table.setdefault((cell, seed), 100.0 + float(rng.normal(0, 3)))

    results = _synthetic_results(nll)
    for cid in ("encoder_beats_prior", "best_objective", "precondition_robust"):
        for view in ("a", "b"):
            assert all(v["verdict"] != SUPPORTED for v in _views(results, cid, view)), (cid, view)
    # A much worse LPC contradicts "matches the VAE" in every view.
    results = _synthetic_results(
        lambda cell, seed: 100.0 + (20.0 if cell.startswith("lpc_jeff") else 0) + seed
    )
    for view in ("a", "b"):
        assert all(v["verdict"] == NOT_SUPPORTED for v in _views(results, "matches_vae", view))


def test_equal_step_views_stay_within_every_compared_cells_cap():
    cfg = ReproConfig(
        seeds=3, ablation_seeds=3, steps=100, vae_steps=100, budgets=(50,), ablation_steps=50, prior_steps=50
    )
    results = _synthetic_results(lambda cell, seed: 100.0 + seed, cfg=cfg)
    for cid in ("best_objective", "precondition_robust", "encoder_beats_prior"):
        labels = [v["label"] for v in _views(results, cid, "a")]
        assert labels and all(label.startswith("50 SGD steps") for label in labels), (cid, labels)
    assert [v["label"] for v in _views(results, "matches_vae", "a")] == [
        "50 SGD steps each",
        "100 SGD steps each",
    ]
    assert "ablation and sweep cells at most 50" in write_report(results)


def test_a_capped_opponent_makes_the_converged_verdict_inconclusive():
    # LPC clearly better than a VAE that stopped at its cap: view (b) may not call that a win.
    def nll(cell, seed):
        return (130.0 if cell == "vae" else 100.0) + 0.3 * seed

    results = _synthetic_results(nll, capped={"vae"})
    (b,) = _views(results, "matches_vae", "b")
    assert b["raw_verdict"] == SUPPORTED and b["verdict"] == INCONCLUSIVE and "cap" in b["note"]
    assert all(v["verdict"] == SUPPORTED for v in _views(results, "matches_vae", "a"))
    # The same numbers with a converged VAE are a win.
    (b,) = _views(_synthetic_results(nll), "matches_vae", "b")
    assert b["verdict"] == SUPPORTED and not b["note"]


# -- package structure -------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Sibling modules imported anywhere in ``path`` (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("lpc_fast.eval.reproduce."):
                out.add(node.module.split(".")[3])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lpc_fast.eval.reproduce."):
                    out.add(a.name.split(".")[3])
    return out


def test_package_import_graph_has_no_cycles():
    modules = {p.stem: p for p in PACKAGE_DIR.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {m: _imports(p) & set(modules) for m, p in modules.items()}
    assert {"stats", "plan", "runner", "report", "figures"} <= set(graph)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(m: str, path: tuple[str, ...]) -> None:
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join((*path, m)))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, (*path, m))
        state[m] = 2
        order.append(m)

    for m in sorted(graph):
        visit(m, ())
    assert graph["common"] == set() and graph["stats"] == {"common"}
    # No module outside the package imports the old flat module or the plots module.
    lpc_root = PACKAGE_DIR.parents[1]
    assert not (lpc_root / "eval" / "plots.py").exists() and not (lpc_root / "eval" / "reproduce.py").exists()


def test_each_module_imports_first_in_a_fresh_interpreter():
    names = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem not in ("__init__", "__main__"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for key in [k for k in sys.modules if k.startswith('lpc_fast.eval.reproduce')]:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module('lpc_fast.eval.reproduce.' + name)\n"
        "from lpc_fast.eval.reproduce import main, run_reproduction, rebuild_report, write_report\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- command line and the end-to-end CI-sized run ------------------------------------------------------


def test_parser_and_quick_config():
    args = build_parser().parse_args(["--quick", "--steps", "12", "--budgets", "4,8", "--resume"])
    assert args.quick and args.steps == 12 and args.budgets == (4, 8) and args.resume
    q = quick_config()
    assert q.seeds == 2 and q.num_is_samples < ReproConfig().num_is_samples
    q.validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--pilot-step-sizes", "0.1,-1"])


def test_conv_widths_reach_the_model_config_and_are_validated():
    from lpc_fast.eval.reproduce.cli import config_from_args
    from lpc_fast.eval.reproduce.plan import config_from_dict
    from lpc_fast.eval.reproduce.runner import model_widths

    args = build_parser().parse_args(
        ["--dataset", "shapes32", "--conv-channels", "32,32,16,16", "--conv-hidden", "128"]
    )
    cfg = config_from_args(args)
    assert model_widths(cfg) == {"conv_channels": (32, 32, 16, 16), "conv_hidden": 128}
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg  # survives the results.json round trip
    assert model_widths(ReproConfig()) == {}  # default: the model's own widths
    with pytest.raises(ValueError, match="conv_hidden"):
        ReproConfig(conv_hidden=0).validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--conv-channels", "32,0"])


def test_cell_filter_is_validated():
    cfg = ReproConfig(cells=("sweep", "vae"))
    names = [c.name for c in build_cells(cfg, None) if c.name.startswith(cfg.cells)]
    assert "vae" in names and all(n == "vae" or n.startswith("sweep") for n in names)
    with pytest.raises(ValueError, match="matches none"):
        ReproConfig(cells=("nonexistent",)).validate()
    args = build_parser().parse_args(["--cells", "vae, sweep"])
    assert args.cells == ("vae", "sweep")


def _is_png(path) -> bool:
    from PIL import Image

    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size[0] > 50 and im.size[1] > 50


QUICK = ["--quick", "--steps", "4", "--eval-every", "2", "--num-is-samples", "10"]


def test_quick_run_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main([*QUICK, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    cfg = results["config"]
    assert cfg["steps"] == 4 and cfg["vae_steps"] == quick_config().vae_steps and cfg["seeds"] == 2
    assert cfg["step_size_selection"] == "validation"
    assert cfg["pilot_step_sizes"] == list(quick_config().pilot_step_sizes)
    assert set(cfg["chosen_step_sizes"]) == {"preconditioned", "ula"}
    for sampler, eta in cfg["chosen_step_sizes"].items():
        rows = results["pilot"][sampler]
        assert [r["step_size"] for r in rows] == cfg["pilot_step_sizes"]
        assert eta == min(rows, key=lambda r: r["val_nll"])["step_size"]
    assert results["validation_split"]["num_validation"] + results["validation_split"]["num_fit"] == 1500
    cells = {c["name"]: c for c in results["cells"]}
    groups = {c["group"] for c in cells.values()}
    assert {"pilot", "headline", "ablation", "sweep", "equal"} == groups
    for run in results["runs"]:
        assert run["stop_reason"] in ("patience", "cap", "diverged") and run["stop_step"] >= 1
        cell = cells[run["cell"]]
        if cell["group"] == "pilot":
            assert run["final"] is None and run["full_evals"] == {}  # the test split is never touched
        elif not run["diverged"]:
            assert run["final"]["num_is_samples"] == 10
            assert run["final_step"] == (run["best"]["step"] if cell["early_stopping"] else run["steps_done"])
        if cell["precondition"] is not None and cell["group"] != "pilot":
            key = "preconditioned" if cell["precondition"] else "ula"
            factor = cell["sweep_factor"] or 1.0
            assert run["train_config"]["langevin_step_size"] == pytest.approx(
                cfg["chosen_step_sizes"][key] * factor
            )
    assert len([r for r in results["runs"] if r["cell"] == "lpc_prior"]) == 2
    lpc = next(r for r in results["runs"] if r["cell"] == "lpc_prior")
    assert lpc["evals"][-1]["decoder_grad_evals"] == lpc["steps_done"] * (
        quick_config().prior_chain_length + 2
    )
    for key in ("step", "decoder_grad_evals", "elapsed", "val_nll"):
        assert key in lpc["evals"][-1]

    report = (out / "REPORT.md").read_text()
    assert "Quick (CI-sized) run" in report and report.index("## Protocol") < report.index("## Verdicts")
    for c in results["claims"]:
        for v in c["views"]:
            assert v["verdict"] in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
            assert f"| {c['claim']} | ({v['view']}) " in report
    assert {v["view"] for c in results["claims"] for v in c["views"]} == {"a", "b", "c"}
    for name in results["figures"]:
        assert _is_png(out / name), name
        assert f"]({name})" in report
    assert {
        "curves_steps.png",
        "curves_decoder_evals.png",
        "curves_wallclock.png",
        "step_size_pilot.png",
        "step_size_sweep.png",
        "samples.png",
    } <= set(results["figures"])
    assert "REPORT.md" in capsys.readouterr().out

    # The analysis can be re-applied without retraining; an existing run is never overwritten silently.
    (out / "REPORT.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "REPORT.md").exists()
    assert main([*QUICK, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_stopped_run_resumes_without_retraining_finished_runs(tmp_path, monkeypatch, capsys):
    from lpc_fast.eval.reproduce import runner

    out = tmp_path / "vae_only"
    argv = [*QUICK, "--cells", "vae", "--out", str(out)]
    assert main(argv) == 0
    full = json.loads((out / "results.json").read_text())
    assert [r["cell"] for r in full["runs"]] == ["vae", "vae"] and "pilot" not in full

    # Simulate a run killed after its first run: what the checkpoint after that run looks like.
    partial = dict(full, status="running", runs=full["runs"][:1])
    for key in ("summary", "claims", "figures"):
        partial.pop(key)
    (out / "results.json").write_text(json.dumps(partial))
    assert main(["--report-only", "--out", str(out)]) == 2  # a partial run has no report yet
    assert "partial" in capsys.readouterr().err

    trained = []
    real = runner._run_task
    monkeypatch.setattr(runner, "_run_task", lambda task: trained.append(task["cell"]) or real(task))
    assert main([*argv, "--resume"]) == 0
    assert trained == ["vae"]  # only the missing seed
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "complete" and resumed["resumed_runs"] == 1
    strip = (
        "wall_seconds",
        "train_seconds",
        "train_wall_seconds",
        "evals",
        "best",
    )  # wall-clock measurements differ
    for a, b in zip(full["runs"], resumed["runs"]):
        assert {k: v for k, v in a.items() if k not in strip} == {
            k: v for k, v in b.items() if k not in strip
        }
        assert [e["val_nll"] for e in a["evals"]] == [e["val_nll"] for e in b["evals"]]  # deterministic

    # A different configuration cannot resume into the same directory.
    assert main([*argv, "--resume", "--patience", "7"]) == 2
    assert "patience" in capsys.readouterr().err
