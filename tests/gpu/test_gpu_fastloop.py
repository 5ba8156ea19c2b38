"""``LangevinLoop`` on the GPU: the captured CUDA graph and the compiled loop against the eager loop.

* mode="cuda_graph" (one graph per chain) gives the eager chain: samples, final z, energies and the
  accumulated decoder gradient, for the C++/CUDA and the Triton kernels.
* Replays draw fresh noise: a second chain continuing the noise stream equals the second eager chain and
  differs from the first; in-place parameter updates (what Adam does) are seen by the next replay.
* The default likelihood (discretised Gaussian with a fixed sigma, which builds a constant with
  ``torch.tensor`` on every call) can be captured.
* mode="compile" on CUDA matches eager up to the compiled decoder's rounding.
"""

from __future__ import annotations

import pytest
import torch
from _gpu_common import DEVICE, skip_unless_backend

from lpc_fast.fastloop import LangevinLoop
from lpc_fast.models import ModelConfig, build_model

pytestmark = pytest.mark.gpu

SEED, OFFSET = 2**64 - 5, 2**32 - 9
STEPS, BURN_IN = 6, 1


class _Energy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z, x):
        return self.model.energy(z, x)


def _setup():
    torch.manual_seed(0)
    cfg = ModelConfig(architecture="mlp", mlp_hidden=(32, 32), latent_dim=8, use_encoder=False)
    model = build_model(cfg, (1, 8, 8), num_levels=17).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 17, (16, 1, 8, 8), generator=gen).float() / 16).to(DEVICE)
    z0 = torch.randn(16, 8, generator=gen).to(DEVICE)
    return _Energy(model), list(model.parameters()), x, z0


def _chain(loop, params, x, z0, offset):
    for p in params:
        p.grad = None
    out = loop.run(x, z0, offset=offset)
    torch.cuda.synchronize()
    return out, [p.grad.clone() for p in params]


def _loop(energy, params, mode, backend):
    return LangevinLoop(
        energy,
        params,
        num_steps=STEPS,
        burn_in=BURN_IN,
        step_size=0.05,
        seed=SEED,
        mode=mode,
        backend=backend,
    )


def _assert_chain_close(got, expected, rtol, atol):
    (a, ga), (b, gb) = got, expected
    assert a["offset_end"] == b["offset_end"] and a["kept"] == b["kept"]
    torch.testing.assert_close(a["samples"], b["samples"], rtol=rtol, atol=atol)
    torch.testing.assert_close(a["z"], b["z"], rtol=rtol, atol=atol)
    torch.testing.assert_close(a["energies"], b["energies"], rtol=rtol, atol=atol * 100)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol * 100)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_loop_equals_eager_and_replays_fresh_noise(backend):
    skip_unless_backend(backend)
    energy, params, x, z0 = _setup()
    eager = _loop(energy, params, "eager", backend)
    graph = _loop(energy, params, "cuda_graph", backend)

    e1 = _chain(eager, params, x, z0, OFFSET)
    e2 = _chain(eager, params, x, z0, e1[0]["offset_end"])
    g1 = _chain(graph, params, x, z0, OFFSET)
    g2 = _chain(graph, params, x, z0, g1[0]["offset_end"])
    assert len(graph._graphs) == 1  # captured once, replayed twice
    # The graph replays the eager kernels on the same inputs; cuBLAS may pick another algorithm
    # inside capture, so allow float32 rounding rather than bit equality.
    _assert_chain_close(g1, e1, rtol=1e-5, atol=1e-5)
    _assert_chain_close(g2, e2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(g1[0]["z"], g2[0]["z"])  # fresh noise on the second replay

    # Parameters updated in place between chains (as an optimizer does) are read by the next replay.
    with torch.no_grad():
        for p in params:
            p.mul_(0.9)
    _assert_chain_close(
        _chain(graph, params, x, z0, OFFSET), _chain(eager, params, x, z0, OFFSET), rtol=1e-5, atol=1e-5
    )


def test_cuda_graph_new_shape_recaptures():
    skip_unless_backend("cuda")
    energy, params, x, z0 = _setup()
    graph = _loop(energy, params, "cuda_graph", "cuda")
    eager = _loop(energy, params, "eager", "cuda")
    _chain(graph, params, x, z0, OFFSET)
    got = _chain(graph, params, x[:8], z0[:8], OFFSET)
    assert len(graph._graphs) == 2
    _assert_chain_close(got, _chain(eager, params, x[:8], z0[:8], OFFSET), rtol=1e-5, atol=1e-5)


def test_compile_loop_matches_eager_on_cuda():
    skip_unless_backend("cuda")
    energy, params, x, z0 = _setup()
    expected = _chain(_loop(energy, params, "eager", "cuda"), params, x, z0, OFFSET)
    got = _chain(_loop(energy, params, "compile", "cuda"), params, x, z0, OFFSET)
    _assert_chain_close(got, expected, rtol=1e-4, atol=1e-4)
