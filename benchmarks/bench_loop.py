"""Inference-loop benchmark: T Langevin moves on a paper-sized decoder, per provider.

Usage::

    python benchmarks/bench_loop.py --device cpu|cuda [--models mlp conv] [--T 20 300] [--batch 64]
        [--providers floor handwritten reference fused ...] [--budget 20] [--threads N]
        [--json PATH] [--no-append] [--quick]

One chain is ``T + 1`` decoder forward/backward passes (each gives ``∇_z E`` and accumulates ``∇_θ E``
into ``.grad``, LPC.md §3) and ``T`` moves. Providers (all start from the same ``z0`` and data):

``floor``          the decoder's forward/backward passes alone (no moves), at ``T + 1`` distinct points of
                   the chain's scale: the ceiling of any sampler
``handwritten``    an eager loop as users write it: autograd, then an RMSprop-preconditioned update in
                   torch ops with ``torch.randn_like`` noise
``reference``      :class:`lpc_fast.LangevinSampler` with ``backend="reference"`` (plain PyTorch)
``fused``          :class:`lpc_fast.LangevinSampler` with the automatic backend (the fused kernel)
``fused_loop``     :class:`lpc_fast.fastloop.LangevinLoop`, ``mode="eager"``
``fused_graph``    ``LangevinLoop(mode="cuda_graph")``: the chain is one CUDA graph (CUDA only)
``fused_compile``  ``LangevinLoop(mode="compile")``: each pass one ``torch.compile`` graph

Both samplers run with ``record_diagnostics=False`` (what the trainer uses). Metric: decoder gradient
evaluations per second, ``(T + 1) / time`` (batched passes; ``x batch`` for per-chain counts), and
``floor / provider`` (100% = no overhead beyond the decoder; ``paired``: the median of the per-round
ratios). Every provider except ``floor`` is first checked against the reference sampler on a 3-move
chain (``handwritten`` at temperature 0, since it draws torch's own noise; ``fused_compile`` against the
reference in float64, because the compiled decoder's float32 gradients differ from eager float32 ones,
and for the conv decoder are closer to float64): a wrong loop is never timed. Peak memory is measured on
one chain for T <= 50 (it does not grow with T).

Models: ``mlp`` (the MLP decoder on sklearn's digits, 8x8, 17 levels) and ``conv`` (the beta-VAE conv
decoder on 32x32x3, 256 levels); both latent 40, discretised-Gaussian likelihood, no encoder.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_importable()

from lpc_fast.fastloop import LangevinLoop  # noqa: E402
from lpc_fast.models import ModelConfig, build_model  # noqa: E402
from lpc_fast.sampler import LangevinSampler  # noqa: E402

ALL_PROVIDERS = (
    "floor",
    "handwritten",
    "reference",
    "fused",
    "fused_loop",
    "fused_graph",
    "fused_compile",
)
STEP = dict(step_size=0.05, beta=0.99, eps=1e-3)
SEED, OFFSET = 1234, 0
GATE_T = 3
MEMORY_MAX_T = 50


class Energy(nn.Module):
    """``(z, x) -> E(z; x)`` per chain: the unit every provider differentiates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.energy(z, x)


@dataclass
class Setup:
    """One benchmark configuration: model, data and warm start on a device."""

    model_name: str
    energy: Energy
    params: list[torch.Tensor]
    x: torch.Tensor
    z0: torch.Tensor
    device: str

    @property
    def batch(self) -> int:
        return self.x.shape[0]


def make_setup(model_name: str, batch: int, device: str, quick: bool = False) -> Setup:
    """The decoder, a data batch and a fixed warm start for ``model_name`` in {mlp, conv}."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if model_name == "mlp":
            hidden = (32,) if quick else (256, 256)
            cfg = ModelConfig(
                architecture="mlp", mlp_hidden=hidden, latent_dim=8 if quick else 40, use_encoder=False
            )
            model = build_model(cfg, (1, 8, 8), num_levels=17)
            x = _digits(batch, gen)
        elif model_name == "conv":
            chans = (8, 8) if quick else (64, 64, 32, 32)
            cfg = ModelConfig(
                architecture="conv",
                conv_channels=chans,
                conv_hidden=32 if quick else 256,
                latent_dim=8 if quick else 40,
                use_encoder=False,
            )
            side = 8 if quick else 32
            model = build_model(cfg, (3, side, side), num_levels=256)
            x = torch.randint(0, 256, (batch, 3, side, side), generator=gen).float() / 255.0
        else:
            raise ValueError(f"unknown model {model_name!r} (mlp, conv)")
    model = model.to(device)
    z0 = torch.randn(batch, model.latent_dim, generator=gen).to(device)
    return Setup(model_name, Energy(model), list(model.parameters()), x.to(device), z0, device)


def _digits(batch: int, gen: torch.Generator) -> torch.Tensor:
    try:
        from lpc_fast.data import load_dataset

        images = load_dataset("digits").images
    except Exception:  # noqa: BLE001 - the decoder's cost does not depend on the pixel values
        return torch.randint(0, 17, (batch, 1, 8, 8), generator=gen).float() / 16.0
    idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
    return images[idx].float()


# ------------------------------------------------------------------------------------------------
# Providers: make_provider(...) -> a callable running one whole chain from setup.z0, returning z_T.


def _clear_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def handwritten_chain(
    energy: nn.Module, x: torch.Tensor, z0: torch.Tensor, steps: int, temperature: float = 1.0
) -> torch.Tensor:
    """The eager loop users write today: autograd, then a hand-written preconditioned Langevin update."""
    lr, beta, eps = STEP["step_size"], STEP["beta"], STEP["eps"]
    z = z0.detach().clone().requires_grad_(True)
    v = torch.zeros_like(z)
    for t in range(steps + 1):
        z.grad = None
        energy(z, x).sum().backward()
        if t == steps:
            break
        with torch.no_grad():
            g = z.grad
            v.mul_(beta).addcmul_(g, g, value=1.0 - beta)
            p = (v / (1.0 - beta ** (t + 1))).sqrt_().add_(eps).reciprocal_()
            z.addcmul_(p, g, value=-lr)
            z.add_(torch.randn_like(z) * (2.0 * lr * temperature * p).sqrt_())
    return z.detach()


def sampler_chain(
    energy: nn.Module,
    x: torch.Tensor,
    z0: torch.Tensor,
    steps: int,
    backend: str | None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The same loop with :class:`LangevinSampler` doing the move."""
    z = z0.detach().clone().requires_grad_(True)
    sampler = LangevinSampler(
        [z],
        **STEP,
        mode="preconditioned",  # the paper's sampler, as the hand-written and LangevinLoop providers
        temperature=temperature,
        seed=SEED,
        offset=OFFSET,
        backend=backend,
        record_diagnostics=False,
    )
    for t in range(steps + 1):
        z.grad = None
        energy(z, x).sum().backward()
        if t < steps:
            sampler.step()
    return z.detach()


def floor_points(z0: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """``T + 1`` distinct points of a chain's scale (``z0`` plus unit noise), as leaves requiring grad.

    The floor evaluates the decoder at a new point each pass, as a chain does: repeating one input lets
    the CPU's branch predictors learn the data-dependent branches of the likelihood (``log_ndtr``) and
    makes the floor a few percent faster than any chain could be.
    """
    gen = torch.Generator().manual_seed(99)
    return [
        (z0.detach().cpu() + torch.randn(z0.shape, generator=gen)).to(z0.device).requires_grad_(True)
        for _ in range(steps + 1)
    ]


def floor_chain(energy: nn.Module, x: torch.Tensor, points: list[torch.Tensor]) -> torch.Tensor:
    """The ``T + 1`` forward/backward passes alone, one per point of :func:`floor_points`."""
    for z in points:
        z.grad = None
        energy(z, x).sum().backward()
    return points[-1].detach()


def provider_unavailable(name: str, device: str) -> str | None:
    """Why provider ``name`` cannot run on ``device`` (None when it can)."""
    if name == "fused_graph" and torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if name == "fused_compile" and os.environ.get("TRITON_INTERPRET") == "1":
        return "torch.compile cannot run under TRITON_INTERPRET=1"
    return None


def make_provider(name: str, s: Setup, steps: int, temperature: float = 1.0) -> Callable[[], torch.Tensor]:
    """One chain of ``steps`` moves of provider ``name`` on setup ``s`` (a fresh chain per call)."""
    energy, x, z0, params = s.energy, s.x, s.z0, s.params
    if name == "floor":
        points = floor_points(z0, steps)
        return lambda: (_clear_grads(params), floor_chain(energy, x, points))[1]
    if name == "handwritten":
        return lambda: (_clear_grads(params), handwritten_chain(energy, x, z0, steps, temperature))[1]
    if name in ("reference", "fused"):
        backend = "reference" if name == "reference" else None
        return lambda: (_clear_grads(params), sampler_chain(energy, x, z0, steps, backend, temperature))[1]
    mode = {"fused_loop": "eager", "fused_graph": "cuda_graph", "fused_compile": "compile"}[name]
    loop = LangevinLoop(
        energy,
        params,
        num_steps=steps,
        **STEP,
        temperature=temperature,
        seed=SEED,
        mode=mode,
        keep_samples=False,
    )

    def run() -> torch.Tensor:
        _clear_grads(params)
        return loop.run(x, z0, offset=OFFSET)["z"]

    return run


def check_provider(name: str, s: Setup) -> str | None:
    """None when ``name``'s chain matches the reference sampler's on a short chain; else what differs."""
    if name == "floor":
        return None
    temperature = 0.0 if name == "handwritten" else 1.0
    if name == "fused_compile":
        # The compiled decoder computes its gradients differently from eager float32 (and, for the conv
        # decoder, measurably closer to float64): compare with the reference sampler in float64.
        ref = Setup(s.model_name, copy.deepcopy(s.energy).double(), [], s.x.double(), s.z0.double(), s.device)
        ref.params = list(ref.energy.parameters())
        tol = 1e-3
    else:
        # The same float32 autograd gradients drive both chains: only the moves can differ.
        ref, tol = s, 1e-4
    # Deterministic cuDNN: the check compares moves driven by the same gradients, and cuDNN's
    # default convolution backward (atomics) gives other gradients on every call.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        expected = make_provider("reference", ref, GATE_T, temperature)().double()
        got = make_provider(name, s, GATE_T, temperature)().double()
    scale = max(1.0, float(expected.abs().max()))
    err = float((got - expected).abs().max())
    if not math.isfinite(err) or err > tol * scale:
        which = "float64 reference sampler" if ref is not s else "reference sampler"
        return f"z after {GATE_T} moves differs from the {which} by {err:.3g} (> {tol * scale:.3g})"
    return None


# ------------------------------------------------------------------------------------------------


def run_config(
    s: Setup, steps: int, providers: list[str], budget_s: float, min_rounds: int, max_rounds: int
) -> list[dict[str, Any]]:
    """Time ``providers`` interleaved on one (model, T) configuration; one row per provider."""
    fns = {name: make_provider(name, s, steps) for name in providers}
    samples = harness.time_interleaved(
        fns, device=s.device, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds
    )
    stats = {name: harness.summarize(xs) for name, xs in samples.items()}
    floor = stats.get("floor", {}).get("median_s")
    rows = []
    for name in providers:
        st = stats[name]
        if steps <= MEMORY_MAX_T:
            mem, method = harness.peak_memory(fns[name], s.device)
        else:
            # The peak is that of one step (nothing grows with T): a long chain would only cost time.
            mem, method = None, f"not measured for T > {MEMORY_MAX_T}"
        rows.append(
            dict(
                level="loop",
                bench="bench_loop",
                provider=name,
                model=s.model_name,
                T=steps,
                batch=s.batch,
                latent_dim=int(s.z0.shape[1]),
                **st,
                throughput=(steps + 1) / st["median_s"],
                throughput_unit="decoder_grad_evals/s",
                chain_grad_evals_per_s=s.batch * (steps + 1) / st["median_s"],
                ratio_to_floor=None if floor is None else floor / st["median_s"],
                paired_ratio_to_floor=None if floor is None else harness.paired_ratio(samples, "floor", name),
                # On a loaded machine the fastest round is the least disturbed one.
                ratio_to_floor_min=None if floor is None else stats["floor"]["min_s"] / st["min_s"],
                peak_mem_bytes=mem,
                mem_method=method,
            )
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of one configuration's rows (also printed)."""
    first = rows[0]
    title = f"\n{first['model']} decoder, T = {first['T']}, batch {first['batch']} ({first['device']})"
    body = []
    for r in rows:
        ratio = "" if r["ratio_to_floor"] is None else f"{100 * r['ratio_to_floor']:.1f}%"
        paired = "" if r["paired_ratio_to_floor"] is None else f"{100 * r['paired_ratio_to_floor']:.1f}%"
        body.append(
            [
                r["provider"],
                harness.fmt_seconds(r["median_s"]),
                harness.fmt_seconds(r["p20_s"]),
                harness.fmt_seconds(r["p80_s"]),
                f"{r['throughput']:.1f}",
                ratio,
                paired,
                f"{r['peak_mem_bytes'] / 2**20:.2f}" if r["peak_mem_bytes"] is not None else "n/m",
            ]
        )
    table = harness.markdown_table(
        [
            "provider",
            "median / chain",
            "p20",
            "p80",
            "grad evals/s",
            "floor / provider",
            "paired",
            "peak MiB / step",
        ],
        body,
    )
    print(title)
    print(table)
    return title + "\n\n" + table + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    ap.add_argument("--T", nargs="+", type=int, default=[20, 300], dest="steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--providers", nargs="+", default=None, choices=ALL_PROVIDERS)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing per configuration (soft)")
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", default=None, help="also write this run's rows to this JSON file")
    ap.add_argument("--results-dir", default=harness.RESULTS_DIR)
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/results")
    ap.add_argument("--markdown", default=None, help="write the tables to this markdown file")
    ap.add_argument("--quick", action="store_true", help="tiny models, batch 8, T = 3 (a smoke test)")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: nothing to benchmark on cuda")
        return 1
    harness.set_threads(args.threads)
    if args.quick:
        args.steps, args.batch = [3], min(args.batch, 8)
        args.budget, args.min_rounds, args.max_rounds = 0.0, 2, 2
    providers = list(args.providers) if args.providers else [p for p in ALL_PROVIDERS]
    env = harness.environment(args.device)
    print(
        f"lpc_fast loop benchmark: {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"git {env['git']}, {env['threads']} threads"
    )
    rows: list[dict[str, Any]] = []
    tables = []
    for model_name in args.models:
        s = make_setup(model_name, args.batch, args.device, quick=args.quick)
        runnable = []
        for name in providers:
            why = provider_unavailable(name, args.device)
            if why is None:
                why = harness.check_failure(check_provider, name, s)
            if why is None:
                runnable.append(name)
            else:
                print(f"skipping {name} on {model_name}: {why}")
        if not runnable:
            continue
        for steps in args.steps:
            new = run_config(s, steps, runnable, args.budget, args.min_rounds, args.max_rounds)
            new = [{**r, **env} for r in new]
            tables.append(print_rows(new))
            rows += new
    if not rows:
        print("no provider could run")
        return 1
    if not args.no_append:
        for path in harness.append_results(rows, args.results_dir):
            print(f"appended to {path}")
    if args.json:
        harness.write_json(rows, args.json)
        print(f"wrote {len(rows)} rows to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
