"""A three-layer predictive-coding model of the digits, its latents sampled with ``LangevinSampler``.

The generative model has three latent layers of different widths, top to bottom ``z1`` (8), ``z2`` (32)
and ``z3`` (48), above the 8x8 image ``x`` (64 pixels)::

    z1 ~ N(0, I)
    z2 ~ N(W1 tanh(z1) + b1, s^2 I)
    z3 ~ N(W2 tanh(z2) + b2, s^2 I)
    x  ~ N(W3 tanh(z3) + b3, s_x^2 I)

so the energy ``E = -log p(x, z1, z2, z3)`` (up to a constant) is a sum of squared prediction errors,
one per layer. Each batch runs ``T`` Langevin steps over the three latent tensors, then one Adam step
on the weights with the gradient of the energy averaged over the last ``T - burn_in`` samples.

It uses the sampler the way existing predictive-coding trainers use a latent optimizer: built from a
factory (``optimizer_x_fn(params, lr=...)``) for every batch's new latents, with a learning-rate scheduler
on the Langevin step size ``eta`` inside each batch's chain. The sampler's defaults are plain Langevin
and a fresh noise seed drawn from torch's generator, so ``torch.manual_seed`` makes the run reproducible
and no two batches share noise.

Run::

    python examples/hierarchical_pc.py                 # five epochs of 23 batches, T = 40
    python examples/hierarchical_pc.py --seconds 2     # stop after about two seconds of training
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lpc_fast  # noqa: E402
from lpc_fast.data import load_dataset  # noqa: E402

WIDTHS = (8, 32, 48)  # z1 (top), z2, z3
PIXELS = 64


class HierarchicalPC(nn.Module):
    """Top-down predictions ``mu_{l+1} = W_l tanh(z_l) + b_l`` and the energy of a batch."""

    def __init__(
        self, widths: tuple[int, ...] = WIDTHS, pixels: int = PIXELS, sigma: float = 1.0, sigma_x: float = 0.2
    ) -> None:
        super().__init__()
        sizes = (*widths, pixels)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.widths = widths
        self.sigma = sigma
        self.sigma_x = sigma_x

    def energy(self, zs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Per-example energy ``[B]``: the N(0, I) prior of ``z1`` plus one Gaussian error per layer."""
        e = 0.5 * zs[0].pow(2).sum(1)
        below = [*zs[1:], x]
        for layer, z, target in zip(self.layers, zs, below):
            s = self.sigma_x if target is x else self.sigma
            e = e + 0.5 * (target - layer(torch.tanh(z))).pow(2).sum(1) / s**2
        return e


def infer(
    model: HierarchicalPC,
    x: torch.Tensor,
    optimizer_x_fn,
    *,
    lr: float,
    steps: int,
    burn_in: int,
    decay: float,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """``steps`` Langevin steps from the prior mean; returns the final latents and the kept samples."""
    zs = [torch.zeros(x.shape[0], w, requires_grad=True) for w in model.widths]
    sampler = optimizer_x_fn(zs, lr=lr)  # a new sampler for every batch's latents, as trainers do
    schedule = torch.optim.lr_scheduler.ExponentialLR(sampler, gamma=decay)
    kept = []
    for t in range(steps):
        sampler.zero_grad()
        with torch.enable_grad():
            energy = model.energy(zs, x).sum()
            grads = torch.autograd.grad(energy, zs)  # the latents' gradient only, not the weights'
        for z, g in zip(zs, grads):
            z.grad = g
        sampler.step()
        schedule.step()  # eta_t = lr * decay**t
        if t >= burn_in:
            kept.append([z.detach().clone() for z in zs])
    return zs, kept


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", "train").images.reshape(-1, PIXELS)
    test = load_dataset("digits", "test").images.reshape(-1, PIXELS)
    model = HierarchicalPC()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr_theta)
    optimizer_x_fn = functools.partial(lpc_fast.LangevinSampler, temperature=args.temperature)
    infer_kw = dict(lr=args.eta, steps=args.T, burn_in=args.burn_in, decay=args.eta_decay)

    def test_energy() -> float:
        _, kept = infer(model, test[: args.batch_size * 2], optimizer_x_fn, **infer_kw)
        with torch.no_grad():
            return float(
                torch.stack([model.energy(zs, test[: args.batch_size * 2]).mean() for zs in kept]).mean()
            )

    start_energy = test_energy()
    history = []
    start = time.perf_counter()
    batches = 0
    for epoch in range(args.epochs):
        order = torch.randperm(data.shape[0])
        total, count = 0.0, 0
        for i in range(0, data.shape[0] - args.batch_size + 1, args.batch_size):
            x = data[order[i : i + args.batch_size]]
            _, kept = infer(model, x, optimizer_x_fn, **infer_kw)
            opt.zero_grad()
            # The LPC weight update: the energy's gradient averaged over the kept posterior samples.
            loss = torch.stack([model.energy(zs, x).mean() for zs in kept]).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
            batches += 1
            if _done(args, start, batches):
                break
        history.append(total / max(count, 1))
        print(f"epoch {epoch + 1}: mean training energy {history[-1]:.2f} nats per image ({batches} batches)")
        if _done(args, start, batches):
            break
    final_energy = test_energy()
    elapsed = time.perf_counter() - start
    print(
        f"test energy per image: {start_energy:.2f} before training, {final_energy:.2f} after "
        f"({batches} batches in {elapsed:.1f} s)"
    )
    return {
        "start_energy": start_energy,
        "final_energy": final_energy,
        "history": history,
        "batches": batches,
        "seconds": elapsed,
    }


def _done(args: argparse.Namespace, start: float, batches: int) -> bool:
    if args.max_batches is not None and batches >= args.max_batches:
        return True
    return args.seconds is not None and time.perf_counter() - start > args.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--T", type=int, default=40, help="Langevin steps per batch")
    ap.add_argument("--burn-in", type=int, default=30, help="steps before the kept samples")
    ap.add_argument("--eta", type=float, default=0.02, help="initial Langevin step size")
    ap.add_argument("--eta-decay", type=float, default=0.97, help="ExponentialLR factor on eta per step")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr-theta", type=float, default=3e-3, help="Adam learning rate of the weights")
    ap.add_argument("--seconds", type=float, default=None, help="stop training after about this long")
    ap.add_argument("--max-batches", type=int, default=None, help="stop training after this many batches")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 <= args.burn_in < args.T:
        ap.error(f"--burn-in must be in [0, T={args.T}), got {args.burn_in}")
    if not math.isfinite(args.eta) or args.eta <= 0:
        ap.error(f"--eta must be a finite positive number, got {args.eta}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
