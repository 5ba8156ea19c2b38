"""Per-call overhead of the public ops against their raw dispatcher ops (CPU, one thread).

Usage::

    python benchmarks/bench_op_overhead.py [--n 1024] [--tensors 3] [--reps 2000] [--rounds 21]
                                           [--backend cpu] [--grad]

Times, interleaved round by round so that machine noise hits all providers alike:

* ``public``: ``lpc_fast.langevin_step_(z, g, v, step=..., ...)``;
* ``raw``: ``torch.ops.lpc_fast.langevin_step_.default`` with the same arguments (the C++ kernel
  with no Python checks or dispatch);
* ``foreach_public`` / ``foreach_raw``: the same pair for ``langevin_step_foreach_`` on
  ``--tensors`` tensors of ``--n`` elements each.

Each round runs ``--reps`` calls of each provider back to back; the report is the median over
rounds of the time per call (microseconds), of the per-round public - raw difference (the Python
overhead) and of the per-round public / raw ratio (paired by round, so a busy machine slows both
sides of a ratio alike).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lpc_fast
from lpc_fast.dispatch import get_backend


def _per_call_us(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--tensors", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--backend", default="cpu", choices=["cpu", "triton"])
    parser.add_argument("--grad", action="store_true", help="call with grad mode on (default: no_grad)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    get_backend(args.backend).availability()  # loads the ops
    prefix = "" if args.backend == "cpu" else "triton_"
    raw = getattr(torch.ops.lpc_fast, f"{prefix}langevin_step_").default
    raw_fe = getattr(torch.ops.lpc_fast, f"{prefix}langevin_step_foreach_").default

    z, g, v = torch.randn(args.n), torch.randn(args.n), torch.zeros(args.n)
    zs = [torch.randn(args.n) for _ in range(args.tensors)]
    gs = [torch.randn(args.n) for _ in range(args.tensors)]
    vs = [torch.zeros(args.n) for _ in range(args.tensors)]
    kw = dict(step=3, step_size=0.01, beta=0.99, eps=1e-3, temperature=1.0, seed=7, offset=1000)
    scalars = (3, 0.01, 0.99, 1e-3, 1.0, True, True, 0.0, 7, 1000)  # ..., bc, pc, weight_decay, ...
    backend = args.backend
    providers = {
        "public": lambda: lpc_fast.langevin_step_(z, g, v, backend=backend, **kw),
        "raw": lambda: raw(z, g, v, *scalars),
        "foreach_public": lambda: lpc_fast.langevin_step_foreach_(zs, gs, vs, backend=backend, **kw),
        "foreach_raw": lambda: raw_fe(zs, gs, vs, *scalars),
    }
    with torch.set_grad_enabled(args.grad):
        for fn in providers.values():  # warm-up (caches, first dispatch)
            _per_call_us(fn, 50)
        times: dict[str, list[float]] = {name: [] for name in providers}
        for _ in range(args.rounds):
            for name, fn in providers.items():
                times[name].append(_per_call_us(fn, args.reps))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, us in med.items():
        print(f"{name:>15}: {us:7.2f} us/call (median of {args.rounds} rounds x {args.reps} calls)")
    for pub, raw_name in (("public", "raw"), ("foreach_public", "foreach_raw")):
        diff = statistics.median(a - b for a, b in zip(times[pub], times[raw_name]))
        ratio = statistics.median(a / b for a, b in zip(times[pub], times[raw_name]))
        print(f"{pub} vs {raw_name}: overhead {diff:5.2f} us/call, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
