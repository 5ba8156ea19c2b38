"""Sampler benchmark: one Langevin update of a set of latent tensors, per provider, size and thread count.

Usage::

    python benchmarks/bench_sampler.py [--quick] [--sizes 2^10 70656 2^22] [--tensors 1 3]
                                       [--threads 1 all] [--providers ...] [--budget 2]
                                       [--results-dir benchmarks/results] [--json PATH] [--markdown PATH]

Providers (every one does a plain ULA update ``z <- z - lr g + sqrt(2 lr) xi`` of every tensor):

``handwritten``  per tensor ``z.add_(g, alpha=-lr); z.add_(torch.randn_like(z), alpha=sqrt(2 lr))``
``client``       ``torch.optim.SGD(latents, lr).step()`` then a noise callback adding ``sqrt(2 lr) xi``
``sampler``      ``lpc_fast.LangevinSampler(latents, lr=lr).step()`` (its defaults: ULA, no diagnostics)
``op``           ``lpc_fast.langevin_step_`` once per tensor (the raw fused op, offsets advanced by hand)
``foreach``      ``lpc_fast.langevin_step_foreach_`` once for all tensors (the raw multi-tensor op)
``floor``        no update: only reads each tensor's ``.grad`` (the cost of the loop itself)

Latents: ``--tensors 1`` is one tensor of ``n``; ``--tensors 3`` splits ``n`` in the proportions of a
predictive-coding client's three latent layers ``[256, 20], [256, 128], [256, 128]`` (70,656 latents in
all at full size). Sizes count latents in all tensors. Threads: ``1`` and ``all`` (every core).

Every provider is first checked (a wrong update is never timed): its step with ``temperature 0`` (or,
for torch's noise, the mean of its increments) must be ``-lr g``, and its noise standard normal; the
lpc_fast providers must draw exactly the contract noise of their ``(seed, offset)``. Providers are
timed round-robin (``harness.time_interleaved``), so the ratios between them are robust to a shared
machine's drift; each row also records the paired ratios ``sampler / handwritten`` and
``sampler / foreach`` (medians over rounds of same-round ratios).

Weights (``--case weights``): one SGLD / pSGLD step over the six tensors of a 2-hidden-layer MLP of 1,200
units on the 64-pixel digits (``64x1200, 1200, 1200x1200, 1200, 1200x10, 10``: 1,531,210 weights) with a
Gaussian prior of precision 100 (sigma = 0.1), the optimizer step of ``examples/bayesian_mlp.py``:

``sgld-hand``    Welling & Teh-style SGLD, ``theta -= lr (g / 2 + xi / sqrt(lr))``, the prior's gradient
                 added to ``g`` by hand (``HandSGLD`` of the example)
``sgld``         ``LangevinSampler(weights, lr=lr / 2, weight_decay=100)``
``psgld-hand``   Li et al.-style pSGLD (RMSprop preconditioner, no bias correction; ``HandPSGLD``)
``psgld``        ``LangevinSampler(weights, lr=lr / 2, mode="preconditioned", beta=alpha, eps=eps,
                 bias_correction=False, weight_decay=100)``

each checked first (standardised increments standard normal; the samplers' equal to the contract noise)
and timed interleaved; rows carry ``hand_over_sampler``, the paired ratio of each hand-written update to
its sampler line.

Rows go to ``<results-dir>/cpu.jsonl`` and ``.csv`` (``level="sampler"``, the common layout); ``plot.py``
draws ``cpu_sampler.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_importable()

import lpc_fast  # noqa: E402
from lpc_fast import rng  # noqa: E402

ALL_PROVIDERS = ("floor", "handwritten", "client", "sampler", "op", "foreach")
WEIGHT_PROVIDERS = ("sgld-hand", "sgld", "psgld-hand", "psgld")
#: The six tensors of a 64 -> 1200 -> 1200 -> 10 MLP (1,531,210 weights).
WEIGHT_SHAPES = ((64, 1200), (1200,), (1200, 1200), (1200,), (1200, 10), (10,))
WEIGHT_N = sum(math.prod(s) for s in WEIGHT_SHAPES)
#: The SGLD / pSGLD settings of examples/bayesian_mlp.py: step in the hand-written convention, prior
#: precision 1 / sigma^2 with sigma = 0.1, RMSprop decay and epsilon.
WEIGHT_LR, WEIGHT_DECAY, ALPHA, PSGLD_EPS = 2e-4, 100.0, 0.99, 1e-5
CLIENT_SHAPES = ((256, 20), (256, 128), (256, 128))
CLIENT_N = sum(a * b for a, b in CLIENT_SHAPES)  # 70,656
DEFAULT_SIZES = [2**10, 2**12, 2**14, CLIENT_N, 2**18, 2**20, 2**22]
QUICK_SIZES = [2**10, CLIENT_N]
LR = 0.01
SEED = 0x5A3D


def shapes_for(n: int, tensors: int) -> list[tuple[int, ...]]:
    """Shapes of ``tensors`` latent tensors holding ``n`` latents in all (client proportions for 3)."""
    if tensors == 1:
        return [(n,)]
    if tensors != 3:
        raise ValueError(f"tensors must be 1 or 3, got {tensors}")
    if n == CLIENT_N:
        return [tuple(s) for s in CLIENT_SHAPES]
    weights = [a * b for a, b in CLIENT_SHAPES]
    sizes = [max(1, round(n * w / CLIENT_N)) for w in weights]
    sizes[-1] = max(1, n - sum(sizes[:-1]))
    return [(s,) for s in sizes]


def provider_unavailable(name: str) -> str | None:
    """Why provider ``name`` cannot run here (None when it can)."""
    if name == "foreach" and not hasattr(lpc_fast, "langevin_step_foreach_"):
        return "lpc_fast.langevin_step_foreach_ is not available in this build"
    return None


def make_provider(
    name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> Callable[[], Any]:
    """A no-argument call doing one update of fresh latents of ``shapes`` (gradients already set)."""
    return build_provider(name, shapes, dtype)[0]


def build_provider(
    name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> tuple[Callable[[], Any], list[torch.Tensor], list[torch.Tensor]]:
    """``(update call, latents, gradients)`` of provider ``name`` over fresh latents of ``shapes``."""
    gen = torch.Generator().manual_seed(1)
    zs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    return _build(name, zs, grads), zs, grads


def _build(name: str, zs: list[torch.Tensor], grads: list[torch.Tensor]) -> Callable[[], Any]:
    shapes = [tuple(z.shape) for z in zs]
    noise_scale = math.sqrt(2 * LR)
    if name == "floor":
        for z, g in zip(zs, grads):
            z.grad = g
        return lambda: [z.grad for z in zs]
    if name == "handwritten":

        def handwritten():
            for z, g in zip(zs, grads):
                z.add_(g, alpha=-LR)
                z.add_(torch.randn_like(z), alpha=noise_scale)

        return handwritten
    if name == "client":
        params = [z.requires_grad_() for z in zs]
        for p, g in zip(params, grads):
            p.grad = g
        opt = torch.optim.SGD(params, lr=LR)

        def noise_callback():
            with torch.no_grad():
                for p in params:
                    p.add_(torch.randn_like(p), alpha=noise_scale)

        def client():
            opt.step()
            noise_callback()

        return client
    if name == "sampler":
        for z, g in zip(zs, grads):
            z.grad = g
        return lpc_fast.LangevinSampler(zs, lr=LR, seed=SEED).step
    vs = [torch.zeros(s, dtype=torch.float32) for s in shapes]
    state = {"offset": 0, "step": 1}
    counters = sum(rng.offset_increment(z.numel()) for z in zs)
    if name == "op":

        def op():
            offset = state["offset"]
            for z, g, v in zip(zs, grads, vs):
                lpc_fast.langevin_step_(
                    z, g, v, step=1, step_size=LR, precondition=False, seed=SEED, offset=offset
                )
                offset += rng.offset_increment(z.numel())
            state["offset"] = offset

        return op
    if name == "foreach":
        foreach = lpc_fast.langevin_step_foreach_

        def foreach_op():
            offset = state["offset"]
            foreach(zs, grads, vs, step=1, step_size=LR, precondition=False, seed=SEED, offset=offset)
            state["offset"] = offset + counters

        return foreach_op
    raise ValueError(f"unknown provider {name!r}")


def _hand_optimizers():
    """The hand-written SGLD / pSGLD of examples/bayesian_mlp.py (one definition of each)."""
    sys.path.insert(0, os.path.join(harness.ROOT, "examples"))
    try:
        import bayesian_mlp
    finally:
        sys.path.pop(0)
    return bayesian_mlp.HandSGLD, bayesian_mlp.HandPSGLD


def build_weight_provider(
    name: str, shapes: tuple[tuple[int, ...], ...] = WEIGHT_SHAPES, dtype: torch.dtype = torch.float32
) -> tuple[Callable[[], Any], list[torch.Tensor], list[torch.Tensor]]:
    """``(step call, weights, gradients)``: one optimizer step of provider ``name`` over fresh weights."""
    gen = torch.Generator().manual_seed(2)
    ws = [(0.1 * torch.randn(s, generator=gen)).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    for w, g in zip(ws, grads):
        w.grad = g
    hand_sgld, hand_psgld = _hand_optimizers()
    if name == "sgld-hand":
        opt = hand_sgld(ws, lr=WEIGHT_LR, weight_decay=WEIGHT_DECAY)
    elif name == "sgld":
        opt = lpc_fast.LangevinSampler(ws, lr=WEIGHT_LR / 2, weight_decay=WEIGHT_DECAY, seed=SEED)
    elif name == "psgld-hand":
        opt = hand_psgld(ws, lr=WEIGHT_LR, alpha=ALPHA, eps=PSGLD_EPS, weight_decay=WEIGHT_DECAY)
    elif name == "psgld":
        opt = lpc_fast.LangevinSampler(
            ws,
            lr=WEIGHT_LR / 2,
            mode="preconditioned",
            beta=ALPHA,
            eps=PSGLD_EPS,
            bias_correction=False,
            weight_decay=WEIGHT_DECAY,
            seed=SEED,
        )
    else:
        raise ValueError(f"unknown weights provider {name!r}")
    return opt.step, ws, grads


def check_weight_provider(name: str, shapes: tuple[tuple[int, ...], ...] | None = None) -> str | None:
    """None when one step of ``name`` (from v = 0) is SGLD / pSGLD with the prior: the increments
    standardised by their drift and scale are standard normal (the samplers': the contract noise)."""
    shapes = shapes or ((64, 40), (40,), (40, 40), (40,), (40, 10), (10,))
    fn, ws, grads = build_weight_provider(name, shapes, torch.float64)
    before = [w.detach().clone() for w in ws]
    fn()
    xis = []
    for w, b, g in zip(ws, before, grads):
        s = g + WEIGHT_DECAY * b  # the energy's gradient: likelihood plus prior
        p = (
            1.0 / (PSGLD_EPS + ((1 - ALPHA) * s * s).sqrt())
            if name.startswith("psgld")
            else torch.ones_like(s)
        )
        xis.append(((w.detach() - b + WEIGHT_LR / 2 * p * s) / (WEIGHT_LR * p).sqrt()).reshape(-1))
    xi = torch.cat(xis)
    n = xi.numel()
    if abs(xi.mean().item()) > 6 / math.sqrt(n) or abs(xi.std().item() - 1) > 6 * math.sqrt(2 / n):
        return (
            f"increments are not SGLD's: standardised mean {xi.mean().item():.3g}, std {xi.std().item():.3g}"
        )
    if not name.endswith("-hand"):
        offsets, _ = rng.foreach_offsets(0, [w.numel() for w in ws])
        want = torch.cat(
            [rng.philox_normal_reference(w.numel(), seed=SEED, offset=o) for w, o in zip(ws, offsets)]
        )
        if not torch.allclose(xi, want, rtol=1e-6, atol=1e-6):
            return "noise differs from the contract noise of (seed, offset)"
    return None


def run_weights(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The weights case: every provider's step over the MLP's six tensors, interleaved."""
    providers = []
    for name in WEIGHT_PROVIDERS:
        why = harness.check_failure(check_weight_provider, name)
        if why is not None:
            print(f"skipping {name}: {why}")
        else:
            providers.append(name)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        torch.set_num_threads(os.cpu_count() if threads == "all" else int(threads))
        env = harness.environment("cpu")
        print(
            f"\n== weights, {env['threads']} thread(s), load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores"
        )
        fns = {p: build_weight_provider(p)[0] for p in providers}
        samples = harness.time_interleaved(
            fns, budget_s=args.budget, min_rounds=args.min_rounds, max_rounds=args.max_rounds, warmup=3
        )
        for p in providers:
            stats = harness.summarize(samples[p])
            hand = f"{p}-hand"
            ratio = None
            if not p.endswith("-hand") and hand in samples:
                ratio = harness.paired_ratio(samples, hand, p)
            rows.append(
                {
                    **env,
                    "level": "sampler",
                    "bench": "bench_sampler",
                    "case": "weights",
                    "provider": p,
                    "model": "mlp-1200",
                    "T": None,
                    "batch": None,
                    "n": WEIGHT_N,
                    "tensors": len(WEIGHT_SHAPES),
                    "shapes": [list(s) for s in WEIGHT_SHAPES],
                    **stats,
                    "throughput": WEIGHT_N / stats["median_s"],
                    "throughput_unit": "weights/s",
                    "ratio_to_floor": None,
                    "peak_mem_bytes": None,
                    "mem_method": None,
                    "hand_over_sampler": ratio,
                }
            )
        line = "  ".join(
            f"{r['provider']} {harness.fmt_seconds(r['median_s'])}" for r in rows[-len(providers) :]
        )
        print(f"n={WEIGHT_N} tensors={len(WEIGHT_SHAPES)}: {line}", flush=True)
    return rows


def markdown_weights(rows: list[dict[str, Any]]) -> str:
    """One line per thread count: median per step and the hand-written / sampler ratios."""
    body = []
    for threads in sorted({r["threads"] for r in rows}):
        cur = {r["provider"]: r for r in rows if r["threads"] == threads}
        line: list[Any] = [threads]
        line += [harness.fmt_seconds(cur[p]["median_s"]) if p in cur else "" for p in WEIGHT_PROVIDERS]
        for p in ("sgld", "psgld"):
            ratio = cur[p]["hand_over_sampler"] if p in cur else None
            line.append("" if ratio is None else f"{ratio:.2f}")
        body.append(line)
    header = ["threads", *WEIGHT_PROVIDERS, "sgld-hand / sgld", "psgld-hand / psgld"]
    return (
        f"SGLD / pSGLD step over a 1,200-unit MLP's weights ({WEIGHT_N:,} in 6 tensors; bench_sampler.py "
        "--case weights)\n\n" + harness.markdown_table(header, body)
    )


def check_provider(name: str) -> str | None:
    """None when the provider does a ULA update (drift ``-lr g``, standard normal noise); else why not."""
    if name == "floor":
        return None
    shapes = shapes_for(3 * 4099, 3)
    fn, zs, grads = build_provider(name, shapes, torch.float64)
    before = [z.detach().clone() for z in zs]
    fn()
    xi = torch.cat(
        [((z.detach() - b + LR * g) / math.sqrt(2 * LR)).reshape(-1) for z, b, g in zip(zs, before, grads)]
    )
    n = xi.numel()
    if abs(xi.mean().item()) > 6 / math.sqrt(n) or abs(xi.std().item() - 1) > 6 * math.sqrt(2 / n):
        moments = f"mean {xi.mean().item():.3g}, std {xi.std().item():.3g}"
        return f"increments are not -lr g + sqrt(2 lr) N(0, 1): {moments}"
    if name in ("sampler", "op", "foreach"):
        want = torch.cat(
            [
                rng.philox_normal_reference(z.numel(), seed=SEED, offset=off)
                for z, off in zip(zs, _offsets(zs))
            ]
        )
        if not torch.allclose(xi, want, rtol=1e-5, atol=1e-5):
            return "noise differs from the contract noise of (seed, offset)"
    return None


def _offsets(zs: list[torch.Tensor]) -> list[int]:
    out, off = [], 0
    for z in zs:
        out.append(off)
        off += rng.offset_increment(z.numel())
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    providers = []
    for name in args.providers:
        why = provider_unavailable(name)
        if why is None:
            why = harness.check_failure(check_provider, name)
        if why is not None:
            print(f"skipping {name}: {why}")
        else:
            providers.append(name)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        torch.set_num_threads(os.cpu_count() if threads == "all" else int(threads))
        env = harness.environment("cpu")
        print(
            f"\n== {env['threads']} thread(s), load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores"
        )
        for tensors in args.tensors:
            for n in args.sizes:
                shapes = shapes_for(n, tensors)
                fns = {p: make_provider(p, shapes) for p in providers}
                samples = harness.time_interleaved(
                    fns,
                    budget_s=args.budget,
                    min_rounds=args.min_rounds,
                    max_rounds=args.max_rounds,
                    warmup=3,
                )
                ratios = {}
                if "sampler" in samples:
                    for base in ("handwritten", "foreach", "op"):
                        if base in samples:
                            ratios[f"sampler_over_{base}"] = harness.paired_ratio(samples, "sampler", base)
                for p in providers:
                    stats = harness.summarize(samples[p])
                    rows.append(
                        {
                            **env,
                            "level": "sampler",
                            "bench": "bench_sampler",
                            "provider": p,
                            "model": None,
                            "T": None,
                            "batch": None,
                            "n": n,
                            "tensors": tensors,
                            "shapes": [list(s) for s in shapes],
                            **stats,
                            "throughput": n / stats["median_s"],
                            "throughput_unit": "latents/s",
                            "ratio_to_floor": None,
                            "peak_mem_bytes": None,
                            "mem_method": None,
                            **ratios,
                        }
                    )
                _print_case(rows[-len(providers) :], ratios)
    return rows


def _print_case(rows: list[dict[str, Any]], ratios: dict[str, float]) -> None:
    r0 = rows[0]
    line = "  ".join(f"{r['provider']} {harness.fmt_seconds(r['median_s'])}" for r in rows)
    extra = "  ".join(f"{k.replace('sampler_over_', 'sampler/')} {v:.2f}" for k, v in ratios.items())
    print(f"n={r0['n']:>8} tensors={r0['tensors']}: {line}   [{extra}]", flush=True)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per thread count: median per update and the paired sampler ratios."""
    out = []
    for threads in sorted({r["threads"] for r in rows}):
        sub = [r for r in rows if r["threads"] == threads]
        providers = list(dict.fromkeys(r["provider"] for r in sub))
        cases = list(dict.fromkeys((r["tensors"], r["n"]) for r in sub))
        body = []
        for tensors, n in cases:
            cur = {r["provider"]: r for r in sub if (r["tensors"], r["n"]) == (tensors, n)}
            line: list[Any] = [tensors, n]
            line += [harness.fmt_seconds(cur[p]["median_s"]) if p in cur else "" for p in providers]
            any_row = next(iter(cur.values()))
            for key in ("sampler_over_handwritten", "sampler_over_foreach"):
                value = any_row.get(key)
                line.append("" if value is None else f"{value:.2f}")
            body.append(line)
        header = ["tensors", "latents", *providers, "sampler / handwritten", "sampler / foreach"]
        out.append(
            f"Sampler update, {threads} thread(s) (bench_sampler.py)\n\n"
            + harness.markdown_table(header, body)
        )
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, 3 tensors, one thread, short budget")
    ap.add_argument(
        "--case",
        choices=["latents", "weights"],
        default="latents",
        help="latents: the ULA providers over latent sizes; weights: SGLD / pSGLD over a 1,200-unit MLP",
    )
    ap.add_argument("--sizes", nargs="+", type=harness_size, default=None, help="e.g. 2^10 70656")
    ap.add_argument("--tensors", nargs="+", type=int, default=None, choices=[1, 3])
    ap.add_argument("--threads", nargs="+", default=None, help="thread counts: integers or 'all'")
    ap.add_argument("--providers", nargs="+", default=list(ALL_PROVIDERS), choices=ALL_PROVIDERS)
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per case (soft)")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--results-dir", default=harness.RESULTS_DIR)
    ap.add_argument("--no-results", action="store_true", help="do not append to the results files")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--markdown", default=None, help="write the tables to this file")
    args = ap.parse_args(argv)
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.tensors = args.tensors or ([3] if args.quick else [1, 3])
    args.threads = args.threads or (["1"] if args.quick else ["1", "all"])
    args.budget = args.budget if args.budget is not None else (0.3 if args.quick else 3.0)
    if args.quick:
        args.min_rounds = min(args.min_rounds, 3)
    for t in args.threads:
        if t != "all" and not (t.isdigit() and int(t) >= 1):
            ap.error(f"--threads takes integers >= 1 or 'all', got {t!r}")
    rows = run_weights(args) if args.case == "weights" else run(args)
    if not rows:
        print("no provider could run")
        return 1
    if not args.no_results:
        for path in harness.append_results(rows, args.results_dir):
            print(f"appended rows to {path}")
    if args.json:
        harness.write_json(rows, args.json)
    table = markdown_weights(rows) if args.case == "weights" else markdown(rows)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    return 0


def harness_size(text: str) -> int:
    """``1024``, ``2^20`` or ``2**20``."""
    text = text.strip()
    if text.startswith(("2^", "2**")):
        return 2 ** int(text.replace("**", "^").split("^")[-1])
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
