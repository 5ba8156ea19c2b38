"""Op benchmark: one fused Langevin step (preconditioned, bias-corrected) per provider and size.

Usage::

    python benchmarks/bench_op.py --device cpu|cuda [--sizes 1024 1048576 ...] [--dtype float32]
                                  [--json PATH] [--providers eager compile cpu copy ...]

Providers:

``eager``    the reference update written in place with ``torch.randn_like`` noise (below)
``compile``  ``torch.compile`` of that same function
``cpu``      lpc_fast's C++ CPU kernel            (CPU tensors)
``triton``   lpc_fast's Triton kernel             (CUDA tensors)
``cuda``     lpc_fast's CUDA kernel               (CUDA tensors)
``copy``     a device copy moving the same 20 bytes/element as the update: the bandwidth ceiling

Every provider is first checked against ``lpc_fast.reference`` (a wrong kernel is never timed):
the deterministic part with ``temperature=0``, and the noise, for lpc_fast's kernels, through
the RNG contract (same ``seed, offset`` -> the reference's noise); ``eager``/``compile`` draw
torch's own noise, checked by its moments. Providers are then timed interleaved (round-robin
repetitions), because eager timings drift by tens of percent between runs on a shared machine.
Bandwidth counts 20 bytes/element: z read+write, grad read, v read+write (float32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lpc_fast import reference, rng  # noqa: E402

BYTES_PER_ELEMENT = 20
ALL_PROVIDERS = ("eager", "compile", "cpu", "triton", "cuda", "copy")
DEFAULT_SIZES = [2**k for k in range(10, 25, 2)]
HP = dict(step=10, step_size=1e-2, beta=0.99, eps=1e-3, temperature=1.0)


# ----------------------------------------------------------------------------------------------
# The baseline: the reference update written in place (two temporaries: p and the noise).


def eager_step_(z, grad, v, step: int, step_size: float, beta: float, eps: float, temperature: float):
    v.mul_(beta).addcmul_(grad, grad, value=1.0 - beta)
    p = torch.sqrt(v * reference.bias_correction_factor(beta, step, True)).add_(eps).reciprocal_()
    z.addcmul_(p, grad, value=-step_size)
    z.add_(torch.randn_like(z).mul_(p.mul_(2.0 * step_size * temperature).sqrt_()))


# ----------------------------------------------------------------------------------------------
# Providers: each is make(n, dtype, device) -> (step_fn(z, g, v, seed, offset), reason or None)


def _public_wrapper():
    """lpc_fast.langevin_step_ when the public API is importable and routes backends."""
    try:
        import lpc_fast.ops as lops

        return lops.langevin_step_
    except Exception:  # noqa: BLE001 - any failure means: call the dispatcher op directly
        return None


def _kernel_step(backend: str):
    wrapper = _public_wrapper()
    if wrapper is not None:

        def step(z, g, v, seed, offset, temperature=HP["temperature"]):
            wrapper(
                z,
                g,
                v,
                step=HP["step"],
                step_size=HP["step_size"],
                beta=HP["beta"],
                eps=HP["eps"],
                temperature=temperature,
                seed=seed,
                offset=offset,
                backend=backend,
            )

        return step

    op = torch.ops.lpc_fast.langevin_step_

    def step(z, g, v, seed, offset, temperature=HP["temperature"]):
        op(
            z,
            g,
            v,
            HP["step"],
            HP["step_size"],
            HP["beta"],
            HP["eps"],
            temperature,
            True,
            True,
            0.0,  # weight_decay
            rng.to_int64(seed),
            rng.to_int64(offset),
        )

    return step


def provider_unavailable(name: str, device: str) -> str | None:
    """Why provider ``name`` cannot run on ``device`` (None when it can)."""
    if name in ("eager", "copy"):
        return None
    if name == "compile":
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return "torch.compile cannot run under TRITON_INTERPRET=1"
        return None
    try:
        import lpc_fast._C  # noqa: F401
    except ImportError as exc:
        return f"lpc_fast._C is not importable ({exc})"
    try:
        from lpc_fast.dispatch import get_backend

        return get_backend(name).unsupported_reason(torch.device(device))
    except ImportError:
        pass
    if name == "cpu":
        return None if device == "cpu" else "the cpu kernel runs on CPU tensors"
    if name == "cuda":
        import lpc_fast._C as C

        if device != "cuda":
            return "the cuda kernel runs on CUDA tensors"
        return None if C.with_cuda() else "lpc_fast._C was built without CUDA kernels"
    return f"{name}: lpc_fast.dispatch is not available to route it"


# ----------------------------------------------------------------------------------------------
# Correctness gate


def _inputs(n, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g).to(dtype)
    grad = torch.randn(n, generator=g).to(dtype)
    v = torch.rand(n, generator=g).float()
    return z.to(device), grad.to(device), v.to(device)


def _tol(dtype):
    return {
        torch.float64: 1e-10,
        torch.float32: 2e-5,
        torch.float16: 2e-3,
        torch.bfloat16: 1.6e-2,
    }[dtype]


def check_provider(name: str, step_fn, dtype, device) -> str | None:
    """None when the provider computes the reference update; else what is wrong."""
    if name == "copy":
        return None
    n = 4099
    z, grad, v = _inputs(n, dtype, device)
    hp = dict(HP)
    tol = _tol(dtype)

    def ref(temperature, noise):
        return reference.langevin_update(
            z.double().cpu(),
            grad.double().cpu(),
            v.double().cpu(),
            noise,
            **{**hp, "temperature": temperature},
        )

    zero = torch.zeros(n, dtype=torch.float64)
    z_det, v_det = ref(0.0, zero)
    if name in ("eager", "compile"):
        zc, vc = z.clone(), v.clone()
        step_fn(zc, grad, vc, 0, 0, temperature=0.0)
        if not torch.allclose(zc.double().cpu(), z_det, rtol=tol, atol=tol):
            return "deterministic part (temperature=0) differs from the reference"
        if not torch.allclose(vc.double().cpu(), v_det, rtol=1e-5, atol=1e-7):
            return "v update differs from the reference"
        # Noise: (z' - z_det) / sqrt(2 eta T p) must be standard normal (6-sigma moment bounds).
        zc, vc = z.clone(), v.clone()
        step_fn(zc, grad, vc, 0, 0)
        p = 1.0 / (hp["eps"] + torch.sqrt(v_det / (1 - hp["beta"] ** hp["step"])))
        xi = (zc.double().cpu() - z_det) / torch.sqrt(2 * hp["step_size"] * hp["temperature"] * p)
        if (
            abs(xi.mean().item()) > 6 / math.sqrt(n) + tol
            or abs(xi.std().item() - 1) > 6 * math.sqrt(2 / n) + 10 * tol
        ):
            return f"noise is not N(0, 1): mean {xi.mean().item():.3g}, std {xi.std().item():.3g}"
        return None
    # lpc_fast kernels: deterministic part, then the full step with the contract's noise.
    seed, offset = 2**63 + 5, 2**32 - 7
    zc, vc = z.clone(), v.clone()
    step_fn(zc, grad, vc, seed, offset, temperature=0.0)
    if not torch.allclose(zc.double().cpu(), z_det, rtol=tol, atol=tol):
        return "deterministic part (temperature=0) differs from the reference"
    if not torch.allclose(vc.double().cpu(), v_det, rtol=1e-5, atol=1e-7):
        return "v update differs from the reference"
    noise = rng.philox_normal_reference(n, seed=seed, offset=offset)
    z_ref, _ = ref(hp["temperature"], noise)
    zc, vc = z.clone(), v.clone()
    step_fn(zc, grad, vc, seed, offset)
    if not torch.allclose(zc.double().cpu(), z_ref, rtol=tol, atol=tol):
        return "noisy step differs from the reference with the contract's noise"
    return None


# ----------------------------------------------------------------------------------------------
# Timing


def make_provider(name, n, dtype, device):
    """(callable running one step on the provider's own buffers) for size n."""
    if name == "copy":
        src = torch.empty(n * BYTES_PER_ELEMENT // 2, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    z, grad, v = _inputs(n, dtype, device, seed=1)
    if name == "eager":
        return lambda: eager_step_(z, grad, v, **HP)
    if name == "compile":
        import torch._dynamo as dynamo

        dynamo.reset()  # one fresh static-shape graph per size, never the recompile limit
        fn = torch.compile(eager_step_, dynamic=False)
        return lambda: fn(z, grad, v, **HP)
    step = _kernel_step(name)
    state = {"offset": 0}
    inc = rng.offset_increment(n)

    def run():
        step(z, grad, v, 12345, state["offset"])
        state["offset"] = (state["offset"] + inc) % 2**64

    return run


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict, device: str, reps: int, budget_s: float) -> dict:
    """Per-call seconds of each provider, sampled round-robin (one sample each per round)."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(3):  # warm-up (compile, caches, thread pool)
            fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        est = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, min(1000, int(2e-3 / est)))  # samples of >= ~2 ms
    samples: dict[str, list[float]] = {name: [] for name in fns}

    def one_round():
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t) / inner[name])

    t0 = time.perf_counter()
    one_round()
    rounds = max(5, min(reps, int(budget_s / max(time.perf_counter() - t0, 1e-9))))
    for _ in range(rounds - 1):
        one_round()
    return samples


def _quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _parse_size(text: str) -> int:
    text = text.strip()
    if text.startswith("2^") or text.startswith("2**"):
        return 2 ** int(text.split("^")[-1].split("**")[-1])
    return int(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", nargs="+", type=_parse_size, default=DEFAULT_SIZES, help="e.g. 1024 2^20")
    ap.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"])
    ap.add_argument("--providers", nargs="+", default=None, choices=ALL_PROVIDERS)
    ap.add_argument("--json", default=None, help="write the result rows to this JSON file")
    ap.add_argument("--reps", type=int, default=30, help="round-robin repetitions (at most)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing per size (soft)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: nothing to benchmark on cuda")
        return 1
    dtype = getattr(torch, args.dtype)
    if args.providers is None:
        providers = (
            ["eager", "compile", "cpu", "copy"]
            if device == "cpu"
            else ["eager", "compile", "triton", "cuda", "copy"]
        )
    else:
        providers = list(args.providers)

    runnable = []
    for name in providers:
        why = provider_unavailable(name, device)
        if why is None:
            fn = _step_fn(name)
            try:
                why = check_provider(name, fn, dtype, device)
            except Exception as exc:  # noqa: BLE001 - a crashing provider is reported, not timed
                why = f"check raised {type(exc).__name__}: {exc}"
            if why is not None:
                why = f"FAILED its correctness check: {why}"
        if why is not None:
            print(f"skipping {name}: {why}")
        else:
            runnable.append(name)
    if not runnable:
        print("no provider can run")
        return 1

    meta = dict(device=device, torch=torch.__version__, git=_git())
    threads = torch.get_num_threads() if device == "cpu" else None
    header = f"lpc_fast op benchmark: {device}, {args.dtype}, torch {meta['torch']}, git {meta['git']}"
    if threads is not None:
        # Other processes on the cores inflate every provider: the load average says how much.
        header += f", {threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    try:
        import lpc_fast._C as C

        header += f", SIMD {C.simd_level()}"
    except ImportError:
        pass
    kernels = [k for k in runnable if k in ("cpu", "cuda", "triton")]
    if kernels:
        via = "lpc_fast.langevin_step_(backend=...)" if _public_wrapper() else "torch.ops.lpc_fast"
        header += f"; kernels called through {via}"
    print(header)
    rows = []
    for n in args.sizes:
        fns = {name: make_provider(name, n, dtype, device) for name in runnable}
        samples = time_interleaved(fns, device, args.reps, args.budget)
        for name in runnable:
            xs = samples[name]
            med = statistics.median(xs)
            rows.append(
                dict(
                    provider=name,
                    n=n,
                    dtype=args.dtype,
                    median_s=med,
                    p20_s=_quantile(xs, 0.2),
                    p80_s=_quantile(xs, 0.8),
                    gbps=BYTES_PER_ELEMENT * n / med / 1e9,
                    device=device,
                    torch=meta["torch"],
                    git=meta["git"],
                )
            )
        _print_size(rows, n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def _step_fn(name):
    """The provider's step as fn(z, grad, v, seed, offset, temperature=...), for the check."""
    if name == "copy":
        return None
    if name in ("eager", "compile"):
        base = eager_step_ if name == "eager" else torch.compile(eager_step_, dynamic=False)

        def fn(z, grad, v, seed, offset, temperature=HP["temperature"]):
            base(z, grad, v, **{**HP, "temperature": temperature})  # torch's RNG: seed unused

        return fn
    return _kernel_step(name)


def _print_size(rows, n):
    cur = {r["provider"]: r for r in rows if r["n"] == n}
    kernels = [k for k in ("cpu", "cuda", "triton") if k in cur]
    print(f"\nn = {n} (2^{math.log2(n):.4g})")
    print(f"  {'provider':<9}{'median':>11}{'p20':>11}{'p80':>11}{'GB/s':>9}")
    for name, r in cur.items():
        print(
            f"  {name:<9}{_fmt(r['median_s']):>11}{_fmt(r['p20_s']):>11}{_fmt(r['p80_s']):>11}"
            f"{r['gbps']:>9.2f}"
        )
    for k in kernels:
        for base in ("eager", "compile"):
            if base in cur:
                print(f"  {k} vs {base}: {cur[base]['median_s'] / cur[k]['median_s']:.2f}x faster")


def _fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    sys.exit(main())
