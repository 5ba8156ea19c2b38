"""pytest-benchmark entry points for the four levels: ``pytest benchmarks/ --benchmark-only``.

The same providers as the scripts (``bench_op.py``, ``bench_loop.py``, ``bench_train.py``,
``bench_sampler.py``), at the paper's
sizes on the CPU (or CUDA with ``LPC_FAST_BENCH_DEVICE=cuda``). pytest-benchmark times each provider
separately, not interleaved: use the scripts for comparisons on a noisy machine, these for regression
tracking (``--benchmark-autosave``, ``--benchmark-compare``). Torch threads: ``LPC_FAST_BENCH_THREADS``
(default 1 on the CPU, for the reason given in ``run_cpu_suite.py``).
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_importable()

import bench_loop  # noqa: E402
import bench_op  # noqa: E402
import bench_sampler  # noqa: E402
import bench_train  # noqa: E402

pytest.importorskip("pytest_benchmark")

DEVICE = os.environ.get("LPC_FAST_BENCH_DEVICE", "cpu")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("LPC_FAST_BENCH_DEVICE=cuda but no CUDA device is visible", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    if DEVICE == "cpu":
        torch.set_num_threads(int(os.environ.get("LPC_FAST_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _extra(benchmark, **info) -> None:
    env = harness.environment(DEVICE)
    benchmark.extra_info.update(
        {k: env[k] for k in ("device_name", "torch", "git", "threads", "simd")}, **info
    )


def _run(benchmark, fn) -> None:
    sync = harness.synchronizer(DEVICE)

    def call():
        fn()
        sync()

    benchmark(call)


# -- op ----------------------------------------------------------------------------------------------

OP_PROVIDERS = ["eager", "cpu"] if DEVICE == "cpu" else ["eager", "cuda", "triton"]


@pytest.mark.parametrize("n", [2560, 2**20], ids=["64x40", "2^20"])
@pytest.mark.parametrize("provider", OP_PROVIDERS)
def test_op(benchmark, provider, n):
    why = bench_op.provider_unavailable(provider, DEVICE)
    if why:
        pytest.skip(why)
    benchmark.group = f"op n={n}"
    _extra(benchmark, level="op", n=n)
    _run(benchmark, bench_op.make_provider(provider, n, torch.float32, DEVICE))


# -- inference loop ----------------------------------------------------------------------------------

LOOP_PROVIDERS = ["floor", "handwritten", "reference", "fused", "fused_loop", "fused_graph", "fused_compile"]


@pytest.fixture(scope="module")
def mlp_setup():
    return bench_loop.make_setup("mlp", 64, DEVICE)


@pytest.mark.parametrize("provider", LOOP_PROVIDERS)
def test_loop_mlp_t20(benchmark, mlp_setup, provider):
    why = bench_loop.provider_unavailable(provider, DEVICE)
    if why:
        pytest.skip(why)
    benchmark.group = "loop mlp T=20 batch 64"
    _extra(benchmark, level="loop", model="mlp", T=20, batch=64)
    fn = bench_loop.make_provider(provider, mlp_setup, 20)
    fn()  # compile / capture outside the timed calls
    _run(benchmark, fn)


# -- training step -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["lpc_fused", "lpc_reference", "lpc_loop", "vae"])
def test_train_step_mlp(benchmark, provider):
    args = argparse.Namespace(model="mlp", quick=False, batch=64, T=20, device=DEVICE)
    data = bench_train.make_data(args)
    trainer = bench_train.make_trainer(provider, args, data)
    trainer.train_step()
    benchmark.group = "train step mlp T=20 batch 64"
    _extra(benchmark, level="train", model="mlp", T=20, batch=64)
    _run(benchmark, trainer.train_step)


# -- sampler update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", bench_sampler.ALL_PROVIDERS)
def test_sampler_update_client_size(benchmark, provider):
    """One ULA update of the client's three latent tensors (70,656 latents), CPU only."""
    if DEVICE != "cpu":
        pytest.skip("bench_sampler.py measures CPU latents")
    why = bench_sampler.provider_unavailable(provider)
    if why:
        pytest.skip(why)
    benchmark.group = "sampler update 3 tensors 70656 latents"
    _extra(benchmark, level="sampler", n=bench_sampler.CLIENT_N, tensors=3)
    _run(
        benchmark, bench_sampler.make_provider(provider, bench_sampler.shapes_for(bench_sampler.CLIENT_N, 3))
    )
