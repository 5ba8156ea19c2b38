"""Training-step benchmark: one LPC step (T = 20) against one VAE step, same model, batch and optimizer.

Usage::

    python benchmarks/bench_train.py --device cpu|cuda [--model mlp|conv] [--T 20] [--batch 64]
        [--providers lpc_fused lpc_reference lpc_loop vae decoder_floor ...] [--budget 20]
        [--threads N] [--json PATH] [--no-append] [--quick] [--no-fused-adam] [--conv]

Providers (each its own trainer, built from the same seed; a call is one ``train_step``):

``lpc_fused``      :class:`lpc_fast.train.LPCTrainer` with the automatic kernel backend
``lpc_reference``  the same trainer with ``backend="reference"`` (the eager PyTorch sampler)
``lpc_loop``       the trainer with ``loop_mode="eager"`` (chain in :class:`lpc_fast.fastloop.LangevinLoop`)
``lpc_graph``      ... with ``loop_mode="cuda_graph"`` (CUDA only)
``lpc_compile``    ... with ``loop_mode="compile"``
``lpc_previous``   ``lpc_fused`` as it was before the CPU conv-model work: the discretised-Gaussian
                   likelihood evaluated branch by branch (four ``log_ndtr`` per pixel, autograd backward)
                   and the conv decoder in the plain layout; same trajectory up to float32 rounding
``vae``            :class:`lpc_fast.train.VAETrainer` (one decoder pass per step)
``decoder_floor``  the decoder forward/backward passes an LPC step makes (``decoder_grad_evals_step``
                   of them: ``T + 1`` chain passes plus the reverse-KL pass), alone, at the same batch

Reported per provider: steps/s and decoder gradient evaluations/s (per chain, i.e. the trainer's
``decoder_grad_evals_step`` x steps/s), and for the LPC providers the fraction of the step spent outside
the decoder's forward/backward, ``1 - decoder_floor / step`` (the encoder's passes, both Adam steps, the
sampler and the loop's bookkeeping; the floor is the eager decoder, so for ``lpc_compile``, whose
compiled decoder is faster than eager, the fraction can be negative). The LPC providers are first
checked against ``lpc_reference`` (the same loss after one step): a wrong trainer is never timed.

The model is the paper's setup on digits by default (MLP decoder and encoder, latent 40,
discretised-Gaussian likelihood, encoder warm start, Jeffreys encoder objective, Adam, batch 64).
The trainers use fused Adam where torch supports it (``TrainConfig.fused_optimizer``);
``--no-fused-adam`` times them with the default Adam. ``--no-encoder`` drops the encoder (prior warm
start): the step is then the chain and the decoder's Adam step only, which isolates the sampler's share.

``--conv`` is the conv model's setup: the beta-VAE conv network on ``shapes32`` (procedural 32x32x3), batch
64, T = 20, and the providers ``lpc_previous lpc_fused vae`` unless ``--providers`` is given; the table
then also reports each LPC provider's speed-up over ``lpc_previous`` (the median of the per-round ratios).
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

from lpc_fast.models import ModelConfig  # noqa: E402
from lpc_fast.train import LPCTrainer, TrainConfig, VAETrainer  # noqa: E402

ALL_PROVIDERS = (
    "decoder_floor",
    "lpc_reference",
    "lpc_previous",
    "lpc_fused",
    "lpc_loop",
    "lpc_graph",
    "lpc_compile",
    "vae",
)
_LOOP_MODES = {"lpc_loop": "eager", "lpc_graph": "cuda_graph", "lpc_compile": "compile"}


def make_config(
    method: str, args: argparse.Namespace, backend: str | None = None, loop_mode: str = "sampler"
) -> TrainConfig:
    """The benchmark's training configuration for ``method`` in {lpc, vae}."""
    encoder = getattr(args, "encoder", True)
    if args.model == "mlp":
        hidden = (32,) if args.quick else (256, 256)
        model = ModelConfig(
            architecture="mlp", mlp_hidden=hidden, latent_dim=8 if args.quick else 40, use_encoder=encoder
        )
    else:
        model = ModelConfig(
            architecture="conv",
            conv_channels=(8, 8) if args.quick else (64, 64, 32, 32),
            conv_hidden=32 if args.quick else 256,
            latent_dim=8 if args.quick else 40,
            use_encoder=encoder,
        )
    return TrainConfig(
        method=method,
        dataset="digits",
        batch_size=args.batch,
        num_langevin_steps=args.T,
        device=args.device,
        backend=backend,
        model=model,
        seed=0,
        warm_start="encoder" if encoder else "prior",
        loop_mode=loop_mode,
        fused_optimizer=getattr(args, "fused_adam", True),
    )


def make_data(args: argparse.Namespace) -> Any:
    """Digits for the MLP; shapes32 with ``--conv``, else random 8-bit 32x32x3 images, for conv."""
    if args.model == "mlp" or getattr(args, "dataset", None):
        from lpc_fast.data import load_dataset

        return load_dataset(getattr(args, "dataset", None) or "digits")
    side = 8 if args.quick else 32
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (max(4 * args.batch, 256), 3, side, side), generator=gen).float() / 255.0


def make_trainer(name: str, args: argparse.Namespace, data: Any):
    """A fresh trainer for provider ``name`` (not ``decoder_floor``)."""
    if name == "vae":
        return VAETrainer(make_config("vae", args), data)
    if name == "lpc_reference":
        return LPCTrainer(make_config("lpc", args, backend="reference"), data)
    if name == "lpc_fused":
        return LPCTrainer(make_config("lpc", args), data)
    if name == "lpc_previous":
        trainer = LPCTrainer(make_config("lpc", args), data)
        lik = trainer.model.likelihood
        if hasattr(lik, "log_prob_levels_reference"):
            lik.log_prob_levels = lik.log_prob_levels_reference  # this trainer's model only
            lik._fused_args = lambda out: None  # not the fused op: log_prob sums log_prob_levels
        if hasattr(trainer.model.decoder, "channels_last_on_cpu"):
            trainer.model.decoder.channels_last_on_cpu = False  # the conv decoder's previous layout
        return trainer
    return LPCTrainer(make_config("lpc", args, loop_mode=_LOOP_MODES[name]), data)


def decoder_floor(trainer: LPCTrainer) -> tuple[Callable[[], None], int]:
    """The decoder passes of one LPC step alone, on the trainer's model and a batch of its data."""
    x = trainer.next_batch()
    reverse_kl = trainer.encoder is not None and trainer.config.encoder_objective != "forward_kl"
    evals = trainer.config.chain_length + 1 + (1 if reverse_kl else 0)
    gen = torch.Generator().manual_seed(99)
    # A new point per pass, as in a chain (a repeated input would let branch prediction learn it).
    points = [
        (1.4 * torch.randn(x.shape[0], trainer.latent_dim, generator=gen))
        .to(trainer.device)
        .requires_grad_(True)
        for _ in range(evals)
    ]
    energy = trainer._energy
    params = trainer.theta_params

    def run() -> None:
        for p in params:
            p.grad = None
        for z in points:
            z.grad = None
            energy(z, x).sum().backward()

    return run, evals


def provider_unavailable(name: str, device: str) -> str | None:
    if name == "lpc_graph" and torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if name == "lpc_compile" and os.environ.get("TRITON_INTERPRET") == "1":
        return "torch.compile cannot run under TRITON_INTERPRET=1"
    return None


def check_provider(name: str, args: argparse.Namespace, data: Any) -> str | None:
    """None when one step of ``name`` gives the reference trainer's loss; else what differs."""
    if name in ("vae", "decoder_floor", "lpc_reference"):
        return None
    if name == "lpc_previous":  # the same algorithm; the likelihood's rounding differs (~1e-7 per pixel)
        a, b = make_trainer("lpc_fused", args, data), make_trainer(name, args, data)
        for _ in range(2):
            ma, mb = a.train_step(), b.train_step()
            for key in ("loss", "energy_end", "encoder_loss"):
                # T = 20 Langevin steps through the decoder amplify per-pixel rounding (measured 4e-5
                # relative on the loss after two conv steps); a wrong bin or scale changes it by >> 1e-3.
                if key in ma and not math.isclose(ma[key], mb[key], rel_tol=1e-3):
                    return f"{key} is {mb[key]!r}, the default trainer's is {ma[key]!r} (beyond rounding)"
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            # Adam's first steps move an entry by ~lr = 1e-3 in the direction of its gradient's sign, and
            # rounding can flip the sign of a near-zero gradient: two steps may differ by up to 4 lr.
            if not torch.allclose(pa, pb, rtol=0, atol=4e-3):
                return "parameters after two steps differ from the default trainer's beyond rounding"
        return None
    expected = make_trainer("lpc_reference", args, data).train_step()
    got = make_trainer(name, args, data).train_step()
    tol = 1e-3 if name == "lpc_compile" else 1e-4
    for key in ("loss", "energy_end", "encoder_loss"):
        if key not in expected:
            continue
        a, b = expected[key], got[key]
        if not math.isfinite(b) or abs(a - b) > tol * max(1.0, abs(a)):
            return f"{key} after one step is {b:.6g}, the reference trainer's is {a:.6g}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", choices=["mlp", "conv"], default="mlp")
    ap.add_argument(
        "--no-encoder",
        dest="encoder",
        action="store_false",
        help="LPC without an encoder (prior warm start, no encoder objective; no vae provider)",
    )
    ap.add_argument(
        "--no-fused-adam",
        dest="fused_adam",
        action="store_false",
        help="the trainers' default (unfused) Adam instead of fused Adam",
    )
    ap.add_argument("--T", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--providers", nargs="+", default=None, choices=ALL_PROVIDERS)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing (soft)")
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", default=None, help="also write this run's rows to this JSON file")
    ap.add_argument("--results-dir", default=harness.RESULTS_DIR)
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/results")
    ap.add_argument("--markdown", default=None, help="write the table to this markdown file")
    ap.add_argument("--quick", action="store_true", help="tiny model, batch 8, T = 3 (a smoke test)")
    ap.add_argument(
        "--conv",
        action="store_true",
        help="the conv model on shapes32: lpc_previous (old default), lpc_fused (default) and vae",
    )
    args = ap.parse_args(argv)
    args.dataset = None
    if args.conv:
        args.model, args.dataset = "conv", "shapes32"
        if args.providers is None:
            args.providers = ["lpc_previous", "lpc_fused", "vae"]
        if args.quick:
            args.dataset = None  # the tiny conv model runs on 8x8 random images

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: nothing to benchmark on cuda")
        return 1
    harness.set_threads(args.threads)
    if args.quick:
        args.T, args.batch = 3, min(args.batch, 8)
        args.budget, args.min_rounds, args.max_rounds = 0.0, 2, 2
    if args.providers:
        providers = list(args.providers)
    else:
        providers = [p for p in ALL_PROVIDERS if p != "lpc_compile" or args.device == "cuda"]
    if not args.encoder:
        providers = [p for p in providers if p != "vae"]
    env = harness.environment(args.device)
    print(
        f"lpc_fast training-step benchmark: {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"git {env['git']}, {env['threads']} threads, {args.model} model"
        f"{' on ' + args.dataset if args.dataset else ''}, T = {args.T}, batch {args.batch}"
    )
    data = make_data(args)
    runnable = []
    for name in providers:
        why = provider_unavailable(name, args.device)
        if why is None:
            why = harness.check_failure(check_provider, name, args, data)
        if why is None:
            runnable.append(name)
        else:
            print(f"skipping {name}: {why}")

    fns: dict[str, Callable[[], Any]] = {}
    evals: dict[str, int] = {}
    for name in runnable:
        if name == "decoder_floor":
            fns[name], evals[name] = decoder_floor(make_trainer("lpc_fused", args, data))
            continue
        trainer = make_trainer(name, args, data)
        fns[name] = trainer.train_step
        evals[name] = 1 if name == "vae" else int(trainer.train_step()["decoder_grad_evals_step"])
    samples = harness.time_interleaved(
        fns, device=args.device, budget_s=args.budget, min_rounds=args.min_rounds, max_rounds=args.max_rounds
    )
    floor = harness.summarize(samples["decoder_floor"])["median_s"] if "decoder_floor" in samples else None
    rows = []
    for name in runnable:
        st = harness.summarize(samples[name])
        mem, method = harness.peak_memory(fns[name], args.device)
        is_lpc = name.startswith("lpc_")
        outside = None
        paired_outside = None
        if is_lpc and floor is not None:
            outside = 1.0 - floor / st["median_s"]
            paired_outside = 1.0 - harness.paired_ratio(samples, "decoder_floor", name)
        rows.append(
            dict(
                level="train",
                bench="bench_train",
                provider=name,
                model=args.model if args.encoder else f"{args.model} (no encoder)",
                T=args.T if (is_lpc or name == "decoder_floor") else None,
                batch=args.batch,
                **st,
                throughput=1.0 / st["median_s"],
                throughput_unit="steps/s" if name != "decoder_floor" else "floor calls/s",
                decoder_grad_evals_step=evals[name],
                decoder_grad_evals_per_s=evals[name] / st["median_s"],
                chain_grad_evals_per_s=args.batch * evals[name] / st["median_s"],
                ratio_to_floor=None if floor is None or not is_lpc else floor / st["median_s"],
                speedup_vs_previous=(
                    harness.paired_ratio(samples, "lpc_previous", name)
                    if is_lpc and "lpc_previous" in samples
                    else None
                ),
                outside_decoder_fraction=outside,
                paired_outside_decoder_fraction=paired_outside,
                peak_mem_bytes=mem,
                mem_method=method,
                **env,
            )
        )
    table = markdown(rows)
    print()
    print(table)
    if not args.no_append:
        for path in harness.append_results(rows, args.results_dir):
            print(f"appended to {path}")
    if args.json:
        harness.write_json(rows, args.json)
        print(f"wrote {len(rows)} rows to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """The markdown table of one run's rows."""
    if not rows:
        return ""
    r0 = rows[0]
    title = f"Training step, {r0['model']} model on {r0['device']}, T = {r0['T'] or ''}, batch {r0['batch']}"
    speedups = any(r.get("speedup_vs_previous") is not None for r in rows)
    body = []
    for r in rows:
        outside = r["outside_decoder_fraction"]
        body.append(
            [
                r["provider"],
                harness.fmt_seconds(r["median_s"]),
                harness.fmt_seconds(r["p20_s"]),
                harness.fmt_seconds(r["p80_s"]),
                f"{r['throughput']:.2f}" if r["provider"] != "decoder_floor" else "",
                r["decoder_grad_evals_step"],
                f"{r['decoder_grad_evals_per_s']:.0f}",
                "" if outside is None else f"{100 * outside:.1f}%",
                f"{r['peak_mem_bytes'] / 2**20:.2f}" if r["peak_mem_bytes"] is not None else "",
            ]
        )
        if speedups:
            sp = r.get("speedup_vs_previous")
            body[-1].append("" if sp is None else f"{sp:.2f}x")
    header = [
        "provider",
        "median / step",
        "p20",
        "p80",
        "steps/s",
        "decoder evals / step",
        "decoder evals/s",
        "outside decoder",
        "peak MiB",
    ]
    if speedups:
        header.append("speed-up vs lpc_previous")
    return title + "\n\n" + harness.markdown_table(header, body)


if __name__ == "__main__":
    sys.exit(main())
