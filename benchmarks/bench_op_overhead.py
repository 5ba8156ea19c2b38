"""Per-call overhead of the public ops against their raw dispatcher ops (CPU, one thread).

Usage::

    python benchmarks/bench_op_overhead.py [--n 1024] [--tensors 3] [--reps 2000] [--rounds 21]
                                           [--backend cpu] [--grad]
    TRITON_INTERPRET=1 python benchmarks/bench_op_overhead.py --stub-triton [--n 1024]

Times, interleaved round by round so that machine noise hits all providers alike:

* ``public``: ``lpc_fast.langevin_step_(z, g, v, step=..., ...)``;
* ``raw``: ``torch.ops.lpc_fast.langevin_step_.default`` with the same arguments (the C++ kernel
  with no Python checks or dispatch);
* ``foreach_public`` / ``foreach_raw``: the same pair for ``langevin_step_foreach_`` on
  ``--tensors`` tensors of ``--n`` elements each.

``--stub-triton`` measures the host path of the Triton backend instead: with ``TRITON_INTERPRET=1``
the interpreter's kernel run (``InterpretedFunction.run``) is replaced by a no-op, so what is
timed is everything a GPU launch would cost on the host except Triton's own launcher: argument
checks, backend routing, the dispatcher (or its bypass), table lookups and the ``kernel[grid](...)``
call. Providers: the single op on ``--n`` elements (public function and dispatcher op), the foreach
op on three tensors of shapes [256, 20], [256, 128], [256, 128] (public and dispatcher op),
``LangevinSampler.step()`` (preconditioned) over those three tensors, and the C++ CPU kernels
beside them (public and dispatcher op; these run their kernels). The report ends with the targets:
single op <= 20 us, foreach <= 30 us, sampler step <= 1.15x the public foreach call it makes.

Each round runs ``--reps`` calls of each provider back to back; the report is the median over
rounds of the time per call (microseconds), of the per-round public - raw difference (the Python
overhead) and of the per-round public / raw ratio (paired by round, so a busy machine slows both
sides of a ratio alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import lpc_fast
from lpc_fast.dispatch import get_backend

#: The foreach shapes of the stubbed-launch mode (a small LPC model's latents).
FOREACH_SHAPES = ((256, 20), (256, 128), (256, 128))
#: Targets of the stubbed-launch mode (microseconds per call, and the sampler / foreach ratio).
TARGET_SINGLE_US = 20.0
TARGET_FOREACH_US = 30.0
TARGET_SAMPLER_RATIO = 1.15


def _per_call_us(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def _time(providers: dict[str, Callable[[], None]], reps: int, rounds: int) -> dict[str, list[float]]:
    for fn in providers.values():  # warm-up (caches, first dispatch)
        _per_call_us(fn, 50)
    times: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            times[name].append(_per_call_us(fn, reps))
    return times


def _report(times: dict[str, list[float]], rounds: int, reps: int, pairs) -> dict[str, float]:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, us in med.items():
        print(f"{name:>22}: {us:7.2f} us/call (median of {rounds} rounds x {reps} calls)")
    for a, b in pairs:
        diff = statistics.median(x - y for x, y in zip(times[a], times[b]))
        ratio = statistics.median(x / y for x, y in zip(times[a], times[b]))
        print(f"{a} vs {b}: difference {diff:6.2f} us/call, ratio {ratio:.3f}")
    return med


def stub_interpreter_launch() -> None:
    """Replace the Triton interpreter's kernel run by a no-op (the host path stays)."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("--stub-triton needs TRITON_INTERPRET=1 in the environment before Python starts")
    from triton.runtime import interpreter

    def run(self, *args, grid, warmup, **kwargs):
        return None

    interpreter.InterpretedFunction.run = run


def stubbed_triton(args: argparse.Namespace) -> None:
    """The Triton host path with the launch stubbed, beside the C++ CPU path (module docstring)."""
    stub_interpreter_launch()
    ok, why = get_backend("triton").availability()  # registers the ops
    if not ok:
        raise SystemExit(f"the triton backend is unavailable: {why}")
    ops = torch.ops.lpc_fast
    n = args.n
    z, g, v = torch.randn(n), torch.randn(n), torch.zeros(n)
    zs = [torch.randn(s) for s in FOREACH_SHAPES]
    gs = [torch.randn(s) for s in FOREACH_SHAPES]
    vs = [torch.zeros(s) for s in FOREACH_SHAPES]
    kw = dict(step=3, step_size=0.01, beta=0.99, eps=1e-3, temperature=1.0, seed=7, offset=1000)
    scalars = (3, 0.01, 0.99, 1e-3, 1.0, True, True, False, 7, 1000)
    latents = [torch.randn(s) for s in FOREACH_SHAPES]
    for lat, grad in zip(latents, gs):
        lat.grad = grad.clone()
    sampler = lpc_fast.LangevinSampler(
        latents, lr=0.01, mode="preconditioned", beta=0.99, eps=1e-3, seed=7, backend="triton"
    )
    # The same call the sampler makes (preconditioned, bias-corrected, its hyper-parameters).
    providers = {
        "triton_public": lambda: lpc_fast.langevin_step_(z, g, v, backend="triton", **kw),
        "triton_op": lambda: ops.triton_langevin_step_.default(z, g, v, *scalars),
        "triton_foreach_public": lambda: lpc_fast.langevin_step_foreach_(zs, gs, vs, backend="triton", **kw),
        "triton_foreach_op": lambda: ops.triton_langevin_step_foreach_.default(zs, gs, vs, *scalars),
        "sampler_step": sampler.step,
        "cpu_public": lambda: lpc_fast.langevin_step_(z, g, v, backend="cpu", **kw),
        "cpu_op": lambda: ops.langevin_step_.default(z, g, v, *scalars),
        "cpu_foreach_public": lambda: lpc_fast.langevin_step_foreach_(zs, gs, vs, backend="cpu", **kw),
        "cpu_foreach_op": lambda: ops.langevin_step_foreach_.default(zs, gs, vs, *scalars),
    }
    with torch.no_grad():
        times = _time(providers, args.reps, args.rounds)
    print(f"stubbed Triton launch, n = {n}, foreach shapes {list(FOREACH_SHAPES)}, 1 thread, no_grad")
    med = _report(
        times,
        args.rounds,
        args.reps,
        [
            ("triton_public", "triton_op"),
            ("triton_foreach_public", "triton_foreach_op"),
            ("sampler_step", "triton_foreach_public"),
            ("cpu_public", "cpu_op"),
            ("cpu_foreach_public", "cpu_foreach_op"),
        ],
    )
    ratio = statistics.median(a / b for a, b in zip(times["sampler_step"], times["triton_foreach_public"]))
    checks = [
        ("single op (triton_public)", med["triton_public"], TARGET_SINGLE_US, "us"),
        ("foreach op (triton_foreach_public)", med["triton_foreach_public"], TARGET_FOREACH_US, "us"),
        ("sampler step / foreach op", ratio, TARGET_SAMPLER_RATIO, "x"),
    ]
    for label, value, target, unit in checks:
        verdict = "met" if value <= target else "MISSED"
        print(f"target {label}: {value:.2f} {unit} <= {target} {unit}: {verdict}")


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
    parser.add_argument(
        "--stub-triton",
        action="store_true",
        help="time the Triton host path with the interpreter's kernel run stubbed (TRITON_INTERPRET=1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stub_triton:
        stubbed_triton(args)
        return
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
        times = _time(providers, args.reps, args.rounds)
    _report(times, args.rounds, args.reps, [("public", "raw"), ("foreach_public", "foreach_raw")])


if __name__ == "__main__":
    main()
