"""A Bayesian MLP on the digits: SGLD and pSGLD over the weights, hand-written and with ``LangevinSampler``.

The network is a classifier ``64 -> H -> H -> 10`` (ReLU; ``H = 1200`` at full size, 1.5M weights in six
tensors) with a Gaussian prior ``N(0, sigma^2)`` on every weight, ``sigma = 0.1``. Its posterior on the
1,500 training digits is sampled with

* ``sgld``: the update of Welling & Teh's SGLD as such code writes it,
  ``theta -= lr * (g / 2 + xi / sqrt(lr))``, and its ``LangevinSampler`` line ``lr=lr / 2``;
* ``psgld``: the RMSprop-preconditioned SGLD of Li et al. (no bias correction),
  ``V = alpha V + (1 - alpha) g^2``, ``G = 1 / (eps + sqrt(V))``,
  ``theta -= lr * (G g / 2 + sqrt(G) xi / sqrt(lr))``, and its line
  ``lr=lr / 2, mode="preconditioned", beta=alpha, eps=eps, bias_correction=False``;

where ``g`` is the gradient of the energy ``N * mean cross-entropy + |theta|^2 / (2 sigma^2)``: the
hand-written updates add the prior's gradient ``theta / sigma^2`` themselves, the sampler takes it as
``weight_decay=1 / sigma**2`` (computed in its fused kernel). A posterior ensemble averages the predictive
probabilities of the samples taken every second epoch after burn-in; ``adam`` trains the same network
with Adam on the mean cross-entropy (a point estimate, no prior: with 1.5M weights under this prior the
MAP point shrinks the network far below what it needs) for comparison. Reported per run: test NLL and
error of the ensemble (or of the Adam network), and the mean time of the optimizer step and of the whole
training step (forward, backward, optimizer), timed in the same process.

Run::

    python examples/bayesian_mlp.py                            # full size: H = 1200, 40 epochs, 1 thread
    python examples/bayesian_mlp.py --hidden 32 --epochs 4     # a few seconds
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpc_fast import LangevinSampler  # noqa: E402
from lpc_fast.data import load_dataset  # noqa: E402

METHODS = ("adam", "sgld-hand", "sgld", "psgld-hand", "psgld")


class HandSGLD(torch.optim.Optimizer):
    """SGLD as Welling & Teh-style code writes it: ``theta -= lr * (g / 2 + xi / sqrt(lr))``, with a Gaussian
    prior's gradient ``weight_decay * theta`` added to ``g`` by hand."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                noise = torch.randn_like(p).div_(math.sqrt(lr))
                p.add_(g.mul(0.5).add_(noise), alpha=-lr)


class HandPSGLD(torch.optim.Optimizer):
    """pSGLD as Li et al.-style code writes it (RMSprop preconditioner, no bias correction)."""

    def __init__(self, params, lr: float, alpha: float, eps: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, alpha, eps, wd = group["lr"], group["alpha"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if "square_avg" not in state:
                    state["square_avg"] = torch.zeros_like(p)
                v = state["square_avg"]
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                avg = v.sqrt().add_(eps)
                noise = torch.randn_like(p).div_(avg.mul(lr).sqrt_())
                p.add_(g.div(avg).mul_(0.5).add_(noise), alpha=-lr)


def make_net(hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def make_optimizer(method: str, params, args: argparse.Namespace) -> torch.optim.Optimizer:
    wd = 1.0 / args.sigma**2
    if method == "adam":
        return torch.optim.Adam(params, lr=args.adam_lr)
    if method == "sgld-hand":
        return HandSGLD(params, lr=args.lr_sgld, weight_decay=wd)
    if method == "sgld":
        return LangevinSampler(params, lr=args.lr_sgld / 2, weight_decay=wd)
    if method == "psgld-hand":
        return HandPSGLD(params, lr=args.lr_psgld, alpha=args.alpha, eps=args.eps, weight_decay=wd)
    if method == "psgld":
        return LangevinSampler(
            params,
            lr=args.lr_psgld / 2,
            mode="preconditioned",
            beta=args.alpha,
            eps=args.eps,
            bias_correction=False,
            weight_decay=wd,
        )
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def run(method: str, seed: int, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Train (or sample) one network; returns the test NLL and error and the mean step times."""
    torch.manual_seed(seed)  # the network's initialisation and the batches; the samplers' seeds too
    net = make_net(args.hidden)
    opt = make_optimizer(method, net.parameters(), args)
    x, y, xt, yt = data["x"], data["y"], data["xt"], data["yt"]
    n = x.shape[0]
    probs = torch.zeros(xt.shape[0], 10, dtype=torch.float64)
    samples = 0
    opt_time = step_time = 0.0
    steps = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        for i in range(0, n, args.batch_size):
            idx = perm[i : i + args.batch_size]
            t0 = time.perf_counter()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            if method != "adam":
                loss = n * loss  # the data set's energy (the prior comes with the optimizer)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            opt_time += t2 - t1
            step_time += t2 - t0
            steps += 1
        take = method != "adam" and epoch >= args.burn_in and (epoch - args.burn_in) % args.sample_every == 0
        if take or (method == "adam" and epoch == args.epochs - 1):
            with torch.no_grad():
                probs += F.softmax(net(xt), dim=1).double()
            samples += 1
    probs /= samples
    nll = float(-probs[torch.arange(yt.shape[0]), yt].clamp_min(1e-300).log().mean())
    error = float((probs.argmax(1) != yt).double().mean())
    finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    return {
        "method": method,
        "seed": seed,
        "test_nll": nll,
        "test_error": error,
        "samples": samples,
        "finite": finite,
        "opt_step_ms": 1e3 * opt_time / steps,
        "train_step_ms": 1e3 * step_time / steps,
    }


def load_data() -> dict[str, torch.Tensor]:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    return {
        "x": train.images.reshape(-1, 64),
        "y": train.labels,
        "xt": test.images.reshape(-1, 64),
        "yt": test.labels,
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def _fmt(mean_se: tuple[float, float], scale: float, digits: int) -> str:
    m, se = mean_se
    return f"{scale * m:.{digits}f} ± {scale * se:.{digits}f}"


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: mean and standard error (over seeds) of each reported number."""
    out = {}
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        out[method] = {"seeds": len(rows)}
        for key in ("test_nll", "test_error", "opt_step_ms", "train_step_ms"):
            out[method][key] = _mean_se([r[key] for r in rows])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS)
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per method")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--hidden", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--burn-in", type=int, default=10, help="epochs before the first posterior sample")
    p.add_argument("--sample-every", type=int, default=2, help="epochs between posterior samples")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.1, help="prior standard deviation of every weight")
    p.add_argument("--lr-sgld", type=float, default=2e-4, help="SGLD step in the Welling & Teh convention")
    p.add_argument("--lr-psgld", type=float, default=5e-3, help="pSGLD step in the Li et al. convention")
    p.add_argument("--alpha", type=float, default=0.99)
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
    if args.burn_in >= args.epochs:
        p.error(f"--burn-in ({args.burn_in}) must be below --epochs ({args.epochs})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        data = load_data()
        results = []
        # Methods interleaved per seed, so machine load drifts hit every method alike.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in args.methods:
                r = run(method, seed, data, args)
                results.append(r)
                print(
                    f"{method:>10} seed {seed}: test NLL {r['test_nll']:.4f}  "
                    f"error {100 * r['test_error']:.1f}%  optimizer step {r['opt_step_ms']:.2f} ms  "
                    f"training step {r['train_step_ms']:.2f} ms",
                    flush=True,
                )
    finally:
        torch.set_num_threads(previous)
    summary = summarise(results)
    print("\nmethod       seeds  test NLL          error (%)       optimizer step (ms)  training step (ms)")
    for method, s in summary.items():
        cells = [
            _fmt(s["test_nll"], 1.0, 3),
            _fmt(s["test_error"], 100.0, 1),
            _fmt(s["opt_step_ms"], 1.0, 2),
            _fmt(s["train_step_ms"], 1.0, 2),
        ]
        print(f"{method:<12} {s['seeds']:>5}  {cells[0]:<16}  {cells[1]:<14}  {cells[2]:<19}  {cells[3]}")
    for hand, fused in (("sgld-hand", "sgld"), ("psgld-hand", "psgld")):
        if hand in summary and fused in summary:
            opt = summary[hand]["opt_step_ms"][0] / summary[fused]["opt_step_ms"][0]
            whole = summary[hand]["train_step_ms"][0] / summary[fused]["train_step_ms"][0]
            print(f"{fused}: optimizer step {opt:.2f}x faster than {hand}, training step {whole:.2f}x")
    return {"results": results, "summary": summary, "args": vars(args)}


if __name__ == "__main__":
    main()
