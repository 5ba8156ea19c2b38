"""Public API: bad input gets one clear error naming the argument; dispatch rules; env report."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import lpc_fast
from lpc_fast.dispatch import BackendUnavailableError, get_backend, select_backend

OK = dict(step=1, step_size=0.1, seed=0, offset=0)


def _zgv(n=8, dtype=torch.float32):
    return torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype), torch.zeros(n)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(step=0), ValueError, r"step must be >= 1"),
        (dict(step=1.5), TypeError, r"step must be an int"),
        (dict(step=True), TypeError, r"step must be an int"),
        (dict(step_size=0.0), ValueError, r"step_size must be > 0"),
        (dict(step_size=-1.0), ValueError, r"step_size must be > 0"),
        (dict(step_size=float("nan")), ValueError, r"step_size must be finite"),
        (dict(beta=1.0), ValueError, r"beta must be in \[0, 1\)"),
        (dict(beta=-0.1), ValueError, r"beta must be in \[0, 1\)"),
        (dict(beta=1.5, bias_correction=False), ValueError, r"beta must be in"),
        (dict(eps=0.0), ValueError, r"eps must be > 0"),
        (dict(temperature=-1.0), ValueError, r"temperature must be >= 0"),
        (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"),
        (dict(seed=2**64), ValueError, r"seed must be in \[0, 2\*\*64\)"),
        (dict(offset=-3), ValueError, r"offset must be in \[0, 2\*\*64\)"),
        (dict(seed=1.0), TypeError, r"seed must be an int"),
        (dict(precondition=1), TypeError, r"precondition must be a bool"),
        (dict(prior_grad=1), TypeError, r"prior_grad must be a bool"),
        (dict(weight_decay=-0.5), ValueError, r"weight_decay \(.*precision\) must be >= 0"),
        (dict(weight_decay=float("inf")), ValueError, r"weight_decay must be finite"),
        (dict(prior_grad=True, weight_decay=2.0), ValueError, r"prior_grad=True and weight_decay=2.0 dis"),
        (dict(backend="gpu"), ValueError, r"backend must be one of triton, cuda, cpu, reference"),
    ],
)
def test_bad_scalars_are_named(change, exc, match):
    z, g, v = _zgv()
    with pytest.raises(exc, match=match):
        lpc_fast.langevin_step_(z, g, v, **{**OK, **change})
    with pytest.raises(exc, match=match):
        lpc_fast.langevin_step(z, g, v, **{**OK, **change})


def test_bad_tensors_are_named():
    z, g, v = _zgv()
    with pytest.raises(ValueError, match=r"grad must have the shape of z \(8,\), got \(9,\)"):
        lpc_fast.langevin_step_(z, torch.zeros(9), v, **OK)
    with pytest.raises(ValueError, match=r"v must have the shape of z"):
        lpc_fast.langevin_step_(z, g, torch.zeros(4, 2), **OK)
    with pytest.raises(TypeError, match=r"v \(the preconditioner state\) must be float32"):
        lpc_fast.langevin_step_(z, g, v.double(), **OK)
    with pytest.raises(TypeError, match=r"grad must have the dtype of z"):
        lpc_fast.langevin_step_(z, g.double(), v, **OK)
    with pytest.raises(TypeError, match=r"z must have dtype float16, bfloat16, float32 or float64"):
        lpc_fast.langevin_step_(z.int(), g.int(), v, **OK)
    with pytest.raises(TypeError, match=r"z must be a torch.Tensor"):
        lpc_fast.langevin_step_([0.0], g, v, **OK)
    with pytest.raises(ValueError, match=r"grad must be on z's device"):
        lpc_fast.langevin_step_(z, g.to("meta"), v, **OK)
    with pytest.raises(TypeError, match=r"needs step, seed"):
        lpc_fast.langevin_step_(z, g, v, step_size=0.1, offset=0)
    with pytest.raises(ValueError, match=r"rng_state must be an int64 tensor of shape \(3,\)"):
        lpc_fast.langevin_step_(z, g, v, step_size=0.1, rng_state=torch.zeros(3))
    with pytest.raises(ValueError, match=r"either rng_state or"):
        lpc_fast.langevin_step_(z, g, v, step_size=0.1, rng_state=lpc_fast.make_rng_state(1), seed=1)
    with pytest.raises(ValueError, match=r"n must be an int >= 0"):
        lpc_fast.philox_normal(-1, seed=0, offset=0)
    with pytest.raises(TypeError, match=r"dtype must be torch.float32 or torch.float64"):
        lpc_fast.philox_normal(4, seed=0, offset=0, dtype=torch.float16)


def test_beta_one_freezes_the_state_only_without_bias_correction():
    z, g, v = _zgv()
    g.fill_(1.0)
    v.fill_(0.25)
    lpc_fast.langevin_step_(z, g, v, step=3, step_size=0.1, beta=1.0, bias_correction=False, seed=0, offset=0)
    assert torch.all(v == 0.25)


def test_explicit_backend_that_cannot_run_raises_with_reason(monkeypatch):
    monkeypatch.delenv("LPC_FAST_BACKEND", raising=False)
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'cuda' \(backend= argument\) cannot run on cpu"
    ):
        select_backend("cpu", "cuda")
    z, g, v = _zgv()
    with pytest.raises(BackendUnavailableError, match="cuda"):
        lpc_fast.langevin_step_(z, g, v, backend="cuda", **OK)


def test_selection_precedence_argument_context_environment(monkeypatch):
    monkeypatch.setenv("LPC_FAST_BACKEND", "reference")
    assert select_backend("cpu").name == "reference"
    with lpc_fast.use_backend("reference"):
        assert select_backend("cpu").name == "reference"
        with lpc_fast.use_backend(None):  # None restores automatic choice... unless the env says otherwise
            assert select_backend("cpu").name == "reference"
    monkeypatch.setenv("LPC_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match=r"LPC_FAST_BACKEND=cuda"):
        select_backend("cpu")
    with lpc_fast.use_backend("reference"):  # the context beats the environment
        assert select_backend("cpu").name == "reference"
    assert select_backend("cpu", "reference").name == "reference"  # the argument beats both
    with pytest.raises(ValueError, match="backend must be one of"):
        with lpc_fast.use_backend("nope"):
            pass


def test_automatic_choice_on_cpu_prefers_the_cpp_kernel(monkeypatch):
    monkeypatch.delenv("LPC_FAST_BACKEND", raising=False)
    cpu_ok = get_backend("cpu").unsupported_reason(torch.device("cpu")) is None
    assert select_backend("cpu").name == ("cpu" if cpu_ok else "reference")


def test_automatic_fallback_warns_once(monkeypatch):
    from lpc_fast import dispatch as mod

    monkeypatch.delenv("LPC_FAST_BACKEND", raising=False)
    monkeypatch.setattr(mod._BACKENDS["cpu"], "unsupported_reason", lambda device: "pretend it is missing")
    monkeypatch.setattr(mod, "_warned", set())
    with pytest.warns(RuntimeWarning, match="pretend it is missing"):
        mod._resolve("cpu", None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mod._resolve("cpu", None, None) == "reference"


def test_availability_table_lists_every_backend_with_a_reason():
    rows = lpc_fast.backends()
    assert [r.name for r in rows] == ["triton", "cuda", "cpu", "reference"]
    assert all(isinstance(r.reason, str) and r.reason for r in rows)
    assert rows[-1].available


def test_env_module_prints_versions_and_table():
    out = subprocess.run(
        [sys.executable, "-m", "lpc_fast.env"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    assert "torch" in out and "reference" in out and "kernel backend:" in out


def test_import_does_not_need_triton():
    code = "import sys; sys.modules['triton'] = None; import lpc_fast; print(lpc_fast.backends()[0].reason)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "triton is not installed" in out


def test_fast_path_keeps_the_named_errors_and_the_selection_rules(monkeypatch):
    # A successful call caches its backend and hyper-parameters; later calls take the fast path,
    # which leaves tensor checks to the kernel and must still name the argument it refuses.
    monkeypatch.delenv("LPC_FAST_BACKEND", raising=False)
    z, g, v = _zgv()
    for _ in range(3):  # checked path, then the key cache, then the memo of the last call
        lpc_fast.langevin_step_(z, g, v, **OK)
    with pytest.raises(ValueError, match=r"grad must have the shape of z \(8,\), got \(9,\)"):
        lpc_fast.langevin_step_(z, torch.zeros(9), v, **OK)
    with pytest.raises(TypeError, match=r"grad must have the dtype of z"):
        lpc_fast.langevin_step_(z, g.double(), v, **OK)
    with pytest.raises(TypeError, match=r"v \(the preconditioner state\) must be float32"):
        lpc_fast.langevin_step_(z, g, v.double(), **OK)
    with pytest.raises(ValueError, match=r"grad must be on z's device"):
        lpc_fast.langevin_step_(z, g.to("meta"), v, **OK)
    with pytest.raises(ValueError, match=r"offset must be in \[0, 2\*\*64\)"):
        lpc_fast.langevin_step_(z, g, v, **{**OK, "offset": 2**64})
    with pytest.raises(TypeError, match=r"precondition must be a bool"):
        lpc_fast.langevin_step_(z, g, v, precondition=1, **OK)
    # A latent that requires grad (nn.Parameter) is updated under grad mode without a graph.
    p = torch.nn.Parameter(torch.zeros(8))
    for _ in range(2):
        lpc_fast.langevin_step_(p, g, v, **OK)
    assert p.grad_fn is None and p.requires_grad and not torch.equal(p.detach(), torch.zeros(8))
    # The environment variable and the context still take effect at once.
    monkeypatch.setenv("LPC_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match=r"LPC_FAST_BACKEND=cuda"):
        lpc_fast.langevin_step_(z, g, v, **OK)
    with lpc_fast.use_backend("reference"):
        lpc_fast.langevin_step_(z, g, v, **OK)
