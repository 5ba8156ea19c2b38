"""The reproduction runner: its statistics, its verdict rules and an end-to-end CI-sized run.

The statistical tests are checked against closed forms (Student's t CDF), against their definition (a
verdict is ``supported`` only when the one-sided p-value is below α) and by simulation under the null
(the false-positive rate stays near α).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lpc_fast.eval.reproduce import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    ReproConfig,
    build_cells,
    build_parser,
    combine_all,
    evaluate_claims,
    lpc_cell_name,
    main,
    non_inferiority,
    quick_config,
    student_t_cdf,
    summarise,
    superiority,
    sweep_cell_name,
    welch,
    write_report,
)

# -- Student's t and Welch ---------------------------------------------------------------------------


def test_student_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
    for t in (-7.0, -1.3, -0.2, 0.0, 0.4, 1.0, 3.5, 40.0):
        assert student_t_cdf(t, 1.0) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)
        assert student_t_cdf(t, 2.0) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-10)
    # Large df tends to the standard normal.
    for t in (-2.0, -0.5, 1.0, 1.96):
        assert student_t_cdf(t, 1e6) == pytest.approx(0.5 * math.erfc(-t / math.sqrt(2)), abs=1e-5)
    assert student_t_cdf(math.inf, 3.0) == 1.0 and student_t_cdf(-math.inf, 3.0) == 0.0


def test_student_t_cdf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1.3, 2.0, 3.7, 10.0, 55.5):
        for t in (-9.0, -2.2, -0.7, 0.0, 0.3, 1.8, 6.0):
            assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-9)


def test_welch_against_its_formula_and_scipy():
    a, b = [1.0, 2.0, 4.0, 3.5], [2.5, 3.0, 6.0]
    diff, se, df = welch(a, b)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert se == pytest.approx(math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    assert student_t_cdf(diff / se, df) == pytest.approx(ref.pvalue, rel=1e-7)


def test_welch_resolution_adds_rounding_variance():
    _, se, _ = welch([10.0, 10.0], [20.0, 20.0], resolution=(6.0, 6.0))
    assert se == pytest.approx(math.sqrt(2 * 36.0 / 12.0 / 2))


# -- verdict rules -----------------------------------------------------------------------------------


def test_clear_difference_is_supported_and_its_reverse_not():
    good, bad = [10.0, 10.2, 9.9, 10.1], [12.0, 12.3, 11.8, 12.1]
    c = superiority(good, bad, alpha=0.05)
    assert c.verdict == SUPPORTED and c.p_support < 0.05
    r = superiority(bad, good, alpha=0.05)
    assert r.verdict == NOT_SUPPORTED and r.p_against < 0.05
    # Direction flag: for a higher-is-better metric the same numbers mean the opposite.
    assert superiority(good, bad, higher_is_better=True).verdict == NOT_SUPPORTED


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


# -- claim-level rules on synthetic results ----------------------------------------------------------


def _synthetic_results(final_nll, *, seeds=4, diverged=()):
    """A results dict shaped like run_reproduction's, with final NLL ``final_nll(cell, seed)``."""
    cfg = ReproConfig(
        seeds=seeds, steps=100, vae_steps_factor=2, eval_every=50, sweep_step_sizes=(0.01, 0.05, 0.2)
    )
    cells = build_cells(cfg)
    runs = []
    for cell in cells:
        for seed in range(seeds):
            nll = final_nll(cell.name, seed)
            bad = (cell.name, seed) in diverged
            steps = list(range(0, cell.steps + 1, cfg.eval_every))
            evals = [
                {
                    "step": s,
                    "decoder_grad_evals": s * (1 if cell.name == "vae" else 22),
                    "elapsed": s * 0.01,
                    "nll": nll + 100.0 * (1 - s / cell.steps),
                    "fid": 10.0 + nll / 100,
                }
                for s in steps
            ]
            final = None if bad else {"nll_nats": nll, "fid": 10.0 + nll / 100, "bits_per_dim": nll / 44}
            full = {} if bad else {str(cell.steps): final, **{str(s): final for s in cell.full_eval_steps}}
            runs.append(
                {
                    "cell": cell.name,
                    "seed": seed,
                    "diverged": bad,
                    "steps_done": cell.steps,
                    "decoder_grad_evals_per_step": 1 if cell.name == "vae" else 22,
                    "train_seconds": cell.steps * 0.01,
                    "evals": evals,
                    "full_evals": full,
                    "final": final,
                }
            )
    import dataclasses

    results = {
        "config": dataclasses.asdict(cfg),
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
    return results, cfg


def _claim(results, cid):
    return next(c for c in results["claims"] if c["id"] == cid)


def test_claims_follow_clear_synthetic_effects():
    noise = [0.0, 0.3, -0.2, 0.1]

    def nll(cell, seed):
        base = {"lpc_prior": 130.0, lpc_cell_name("forward_kl", True): 125.0, "vae": 100.0}.get(cell, 100.0)
        if cell.startswith("sweep_ula"):
            base = 100.0 + 80.0 * ("0.2" in cell)  # ULA breaks down at the largest step size
        return base + noise[seed] * (1.0 + 0.5 * len(cell) % 3)

    results, cfg = _synthetic_results(nll, diverged={(sweep_cell_name(ReproConfig(), False, 0.2), 0)})
    assert _claim(results, "encoder_beats_prior")["verdict"] == SUPPORTED
    assert _claim(results, "best_objective")["verdict"] == SUPPORTED
    assert _claim(results, "matches_vae")["verdict"] == SUPPORTED  # equal within a 2% margin
    rob = _claim(results, "precondition_robust")
    assert rob["verdict"] == SUPPORTED and rob["diverged"] == {"pre": 0, "ula": 1}
    report = write_report(results)
    for c in results["claims"]:
        assert f"| {c['claim']} | " in report


def test_claims_without_effects_are_not_supported():
    rng = np.random.default_rng(3)
    table = {}

    def nll(cell, seed):
        return table.setdefault((cell, seed), 100.0 + float(rng.normal(0, 3)))

    results, _ = _synthetic_results(nll)
    for cid in ("encoder_beats_prior", "best_objective", "precondition_robust"):
        assert _claim(results, cid)["verdict"] != SUPPORTED, cid
    # A much worse LPC contradicts "matches the VAE".
    results, _ = _synthetic_results(
        lambda cell, seed: 100.0 + (20.0 if cell.startswith("lpc_jeff") else 0) + seed
    )
    assert _claim(results, "matches_vae")["verdict"] == NOT_SUPPORTED


# -- command line and the end-to-end CI-sized run ------------------------------------------------------


def test_parser_and_quick_config():
    args = build_parser().parse_args(["--quick", "--steps", "12", "--step-sizes", "0.01,0.1"])
    assert args.quick and args.steps == 12 and args.step_sizes == (0.01, 0.1)
    q = quick_config()
    assert q.seeds == 2 and q.num_is_samples < ReproConfig().num_is_samples
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steps", "0"])


def test_cell_filter_is_validated():
    cfg = ReproConfig(cells=("sweep", "vae"))
    names = [c.name for c in build_cells(cfg) if c.name.startswith(cfg.cells)]
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


def test_quick_run_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "repro"
    argv = ["--quick", "--steps", "4", "--eval-every", "2", "--num-is-samples", "20", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    for key in (
        "config",
        "git_commit",
        "backend",
        "torch_version",
        "num_threads",
        "runs",
        "summary",
        "claims",
        "feature_space",
        "dataset",
        "cells",
    ):
        assert key in results, key
    assert results["backend"].startswith("kernel backend:")
    cells = {c["name"] for c in results["cells"]}
    assert {
        "vae",
        "lpc_prior",
        "pc",
        lpc_cell_name("jeffreys", True),
        lpc_cell_name("forward_kl", False),
    } <= cells
    assert len(results["runs"]) == 2 * len(cells)
    run = results["runs"][0]
    for key in ("step", "decoder_grad_evals", "elapsed", "nll", "fid"):
        assert key in run["evals"][-1]
    assert run["final"]["num_is_samples"] == 20
    vae = [r for r in results["runs"] if r["cell"] == "vae"][0]
    assert set(vae["full_evals"]) == {"4", "16"}  # at the LPC budget and at its own end
    lpc = [r for r in results["runs"] if r["cell"] == "lpc_prior"][0]
    assert lpc["evals"][-1]["decoder_grad_evals"] == 4 * (quick_config().prior_chain_length + 2)

    report = (out / "REPORT.md").read_text()
    assert "Quick (CI-sized) run" in report
    for c in results["claims"]:
        assert c["verdict"] in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
        assert f"| {c['claim']} | " in report
    for name in results["figures"]:
        assert _is_png(out / name), name
        assert f"]({name})" in report
    assert {
        "curves_steps.png",
        "curves_decoder_evals.png",
        "curves_wallclock.png",
        "step_size_sweep.png",
    } <= set(results["figures"])
    assert "samples.png" in results["figures"]
    printed = capsys.readouterr().out
    assert "REPORT.md" in printed

    # The analysis can be re-applied without retraining.
    (out / "REPORT.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "REPORT.md").exists()
