"""Kernel-op counts of a training step: LPC against the VAE, per step and per decoder gradient evaluation.

Usage::

    python benchmarks/bench_ops.py [--model mlp|conv] [--conv] [--T 20] [--batch 64] [--json PATH]

Each count is the number of ops that reach the dispatcher below autograd in eager mode
(:class:`lpc_fast.opcount.KernelOpCounter`: view and metadata ops excluded), i.e. the kernel launches
the same code makes on a GPU, counted on the CPU. The configurations are ``bench_train.py``'s (the
paper's digits setup by default: MLP decoder 40 -> 256 -> 256 -> 64 with encoder warm start, Jeffreys
objective, T = 20, batch 64; ``--conv``: the beta-VAE conv network on shapes32). A step is counted
after one warm-up step (the optimizers' state exists). Reported:

``per step``        ops of one ``train_step``
``per eval``        ``per step`` / the step's decoder gradient evaluations (``decoder_grad_evals_step``:
                    ``T + 1`` chain passes and the reverse-KL pass)
``per chain pass``  ops of one chain pass (energy and ``∇_z E`` at one point; the decoder gradient of the
                    kept samples is taken after the chain, in one pass over all of them)

Targets for the digits setup (issue 19): <= 500 ops per LPC step, <= 16 per decoder gradient evaluation.
Counts are deterministic: ``tests/test_op_counts.py`` pins them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402
import harness  # noqa: E402

harness.ensure_importable()

from lpc_fast.opcount import KernelOpCounter  # noqa: E402

#: Targets of the digits setup (issue 19).
TARGET_OPS_PER_LPC_STEP = 500
TARGET_OPS_PER_CHAIN_EVAL = 16


def default_args(**overrides: Any) -> argparse.Namespace:
    """``bench_train``'s arguments for the digits setup (MLP, encoder, fused Adam), with ``overrides``."""
    args = argparse.Namespace(
        device="cpu", model="mlp", encoder=True, fused_adam=True, T=20, batch=64, quick=False, dataset=None
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def count_step(trainer: Any) -> KernelOpCounter:
    """Ops of one training step, after a warm-up step."""
    trainer.train_step()
    with KernelOpCounter() as counter:
        trainer.train_step()
    return counter


def count_chain_eval(trainer: Any) -> int:
    """Ops of one chain pass (``∇_z E`` at a fresh point), as the trainer's chain makes it."""
    x = trainer.next_batch()
    z = torch.randn(x.shape[0], trainer.latent_dim, device=trainer.device).requires_grad_(True)
    energy = trainer._energy
    lean = hasattr(trainer.model, "energy_and_grad")

    def one() -> None:
        if lean:
            energy(z, x, "grad")
        else:  # the chain's autograd path
            with torch.enable_grad():
                torch.autograd.grad(energy(z, x).sum(), [z])

    one()
    with KernelOpCounter() as counter:
        one()
    return counter.total


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of counts for the LPC and VAE trainers of ``args``."""
    torch.manual_seed(0)
    data = bench_train.make_data(args)
    rows = []
    for name in ("lpc_fused", "vae"):
        trainer = bench_train.make_trainer(name, args, data)
        counter = count_step(trainer)
        evals = 1 if name == "vae" else int(trainer.config.chain_length + 1)
        if name != "vae" and trainer.encoder is not None and trainer.config.encoder_objective != "forward_kl":
            evals += 1
        row = dict(
            provider=name,
            model=args.model,
            T=args.T,
            batch=args.batch,
            ops_per_step=counter.total,
            decoder_grad_evals_step=evals,
            ops_per_eval=counter.total / evals,
            most_common=counter.most_common(12),
        )
        if name != "vae":
            row["chain_eval"] = count_chain_eval(trainer)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table of :func:`measure`'s rows."""
    header = ["provider", "per step", "decoder evals / step", "per eval", "per chain pass"]
    body = [
        [
            r["provider"],
            r["ops_per_step"],
            r["decoder_grad_evals_step"],
            f"{r['ops_per_eval']:.1f}",
            r.get("chain_eval", ""),
        ]
        for r in rows
    ]
    lines = [harness.markdown_table(header, body), ""]
    for r in rows:
        common = ", ".join(f"{name} {n}" for name, n in r["most_common"])
        lines.append(f"most frequent ({r['provider']}): {common}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "conv"], default="mlp")
    ap.add_argument("--conv", action="store_true", help="the conv model on shapes32 (as bench_train --conv)")
    ap.add_argument("--T", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    args = default_args(model=a.model, T=a.T, batch=a.batch)
    if a.conv:
        args.model, args.dataset = "conv", "shapes32"
    rows = measure(args)
    print(
        f"kernel ops per training step ({args.model} model"
        f"{' on ' + args.dataset if args.dataset else ' on digits'}, T = {args.T}, batch {args.batch}, CPU)"
    )
    print()
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
