"""Kernel backends: registry, availability with reasons, and selection rules.

Four implementations of one op contract (docs/ARCHITECTURE.md):

``triton``     fused Triton kernels (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``)
``cuda``       the C++/CUDA kernels in ``lpc_fast._C`` (CUDA tensors)
``cpu``        the C++ CPU kernels in ``lpc_fast._C`` (CPU tensors)
``reference``  plain PyTorch (:mod:`lpc_fast.reference` + :mod:`lpc_fast.rng`), any device

Selection, first match wins: the per-call ``backend=`` argument; the innermost
:func:`use_backend` context; the ``LPC_FAST_BACKEND`` environment variable;
otherwise automatic by the tensor's device. An explicit request that cannot run
raises :class:`BackendUnavailableError` naming the reason; an automatic fallback
to a slower backend warns once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import reference, rng

__all__ = [
    "BACKEND_NAMES",
    "BackendUnavailableError",
    "BackendInfo",
    "backends",
    "get_backend",
    "select_backend",
    "use_backend",
    "describe_selection",
]

BACKEND_NAMES = ("triton", "cuda", "cpu", "reference")
ENV_VAR = "LPC_FAST_BACKEND"

# A plain stack (not a ContextVar) so torch.compile can read it without a graph break.
_context_stack: list[str | None] = []
_warned: set[tuple[str, str]] = set()
_selection_cache: dict[tuple, str] = {}


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run here; the message says why."""


@dataclass(frozen=True)
class BackendInfo:
    """One row of the availability table."""

    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]


def _load_extension() -> tuple[Any | None, str]:
    try:
        module = importlib.import_module("lpc_fast._C")
    except ImportError as exc:  # not built, or built against another torch
        return None, f"lpc_fast._C is not importable ({exc}); build it with `make setup`"
    return module, ""


# --------------------------------------------------------------------------------------------------
# Backend implementations
# --------------------------------------------------------------------------------------------------


class _Backend:
    """Common interface; methods take the op arguments of docs/ARCHITECTURE.md.

    ``seed`` and ``offset`` are the signed-int64 carriers of the uint64 values
    (:func:`lpc_fast.rng.to_int64`).
    """

    name: str = ""
    devices: tuple[str, ...] = ()

    def availability(self) -> tuple[bool, str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def supports_device(self, device: torch.device) -> bool:
        return device.type in self.devices

    def unsupported_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` (None when it can)."""
        ok, reason = self.availability()
        if not ok:
            return reason
        if not self.supports_device(device):
            return f"it runs on {', '.join(self.devices)} tensors, not {device.type}"
        return None


class ReferenceBackend(_Backend):
    """Plain PyTorch: slow, any device, the oracle every kernel is tested against."""

    name = "reference"
    devices = ("cpu", "cuda", "mps", "xpu", "meta")

    def availability(self) -> tuple[bool, str]:
        return True, "pure PyTorch, always available"

    def supports_device(self, device: torch.device) -> bool:
        return True

    @staticmethod
    def _compute_dtype(z: torch.Tensor) -> torch.dtype:
        return torch.float64 if z.dtype == torch.float64 else torch.float32

    def noise_like(self, z: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
        return rng.philox_normal_reference(
            z.numel(),
            seed=rng.to_uint64(seed),
            offset=rng.to_uint64(offset),
            device=z.device,
            dtype=self._compute_dtype(z),
        ).view(z.shape)

    def forward(self, z, grad, v, *, seed, offset, **hyper):
        dt = self._compute_dtype(z)
        noise = self.noise_like(z, seed, offset)
        z_new, v_new = reference.langevin_update(z.to(dt), grad.to(dt), v.to(dt), noise, **hyper)
        return z_new.to(z.dtype), v_new.to(torch.float32)

    def backward(self, grad_z_new, grad_v_new, z, grad, v, *, seed, offset, **hyper):
        dt = self._compute_dtype(z)
        noise = self.noise_like(z, seed, offset)
        gz, gg = reference.langevin_update_backward(
            grad_z_new.to(dt),
            None if grad_v_new is None else grad_v_new.to(dt),
            z.to(dt),
            grad.to(dt),
            v.to(dt),
            noise,
            **hyper,
        )
        return gz.to(z.dtype), gg.to(z.dtype)

    def step_(self, z, grad, v, *, seed, offset, **hyper) -> None:
        z_new, v_new = self.forward(z, grad, v, seed=seed, offset=offset, **hyper)
        z.copy_(z_new)
        v.copy_(v_new)

    def step_state_(self, z, grad, v, state, **hyper) -> None:
        seed, offset, step = (int(x) for x in state.tolist())
        self.step_(z, grad, v, step=step, seed=seed, offset=offset, **hyper)
        advance = torch.tensor(
            [0, rng.offset_increment(z.numel()), 1], dtype=torch.int64, device=state.device
        )
        state.add_(advance)

    def normal_(self, out: torch.Tensor, *, seed: int, offset: int) -> None:
        out.copy_(
            rng.philox_normal_reference(
                out.numel(),
                seed=rng.to_uint64(seed),
                offset=rng.to_uint64(offset),
                device=out.device,
                dtype=torch.float64,
            ).view(out.shape)
        )

    def uint32_(self, out: torch.Tensor, *, seed: int, offset: int) -> None:
        words = rng.philox_uint32(
            out.numel(), seed=rng.to_uint64(seed), offset=rng.to_uint64(offset), device=out.device
        )
        out.copy_(words.view(out.shape))


_HYPER_ORDER = (
    "step_size",
    "beta",
    "eps",
    "temperature",
    "bias_correction",
    "precondition",
    "prior_grad",
)


class _DispatcherBackend(_Backend):
    """A backend whose kernels are ``torch.ops.lpc_fast.<prefix><op>`` dispatcher ops."""

    prefix = ""

    def _op(self, name: str):
        # The overload packet's .default skips a per-call overload resolution.
        op = self._ops.get(name)
        if op is None:
            op = getattr(torch.ops.lpc_fast, self.prefix + name).default
            self._ops[name] = op
        return op

    @property
    def _ops(self) -> dict:
        if "_op_cache" not in self.__dict__:
            self.__dict__["_op_cache"] = {}
        return self.__dict__["_op_cache"]

    @staticmethod
    def _hyper(hyper: dict) -> list:
        return [hyper[k] for k in _HYPER_ORDER]

    def step_(self, z, grad, v, *, step, seed, offset, **hyper) -> None:
        self._op("langevin_step_")(z, grad, v, step, *self._hyper(hyper), seed, offset)

    def step_state_(self, z, grad, v, state, **hyper) -> None:
        self._op("langevin_step_state_")(z, grad, v, state, *self._hyper(hyper))

    def forward(self, z, grad, v, *, step, seed, offset, **hyper):
        return self._op("langevin_fwd")(z, grad, v, step, *self._hyper(hyper), seed, offset)

    def backward(self, grad_z_new, grad_v_new, z, grad, v, *, step, seed, offset, **hyper):
        return self._op("langevin_bwd")(
            grad_z_new, grad_v_new, z, grad, v, step, *self._hyper(hyper), seed, offset
        )

    def normal_(self, out, *, seed, offset) -> None:
        self._op("philox_normal_")(out, seed, offset)

    def uint32_(self, out, *, seed, offset) -> None:
        self._op("philox_uint32_")(out, seed, offset)


class CpuBackend(_DispatcherBackend):
    """The C++ CPU kernels (vectorised, multi-threaded)."""

    name = "cpu"
    devices = ("cpu",)

    def availability(self) -> tuple[bool, str]:
        module, why = _load_extension()
        if module is None:
            return False, why
        level = module.simd_level() if hasattr(module, "simd_level") else "unknown"
        return True, f"C++ extension, SIMD path {level}"


class CudaBackend(_DispatcherBackend):
    """The C++/CUDA kernels."""

    name = "cuda"
    devices = ("cuda",)

    def availability(self) -> tuple[bool, str]:
        module, why = _load_extension()
        if module is None:
            return False, why
        if not (hasattr(module, "with_cuda") and module.with_cuda()):
            return False, "lpc_fast._C was built without CUDA kernels (CPU torch or LPC_FAST_CUDA=0)"
        if not torch.cuda.is_available():
            return False, "lpc_fast._C was built with CUDA kernels, but no CUDA device is visible"
        return True, f"C++/CUDA extension, {torch.cuda.get_device_name()}"


class TritonProxyBackend(_DispatcherBackend):
    """Fused Triton kernels, imported lazily so ``import lpc_fast`` never needs Triton."""

    name = "triton"
    devices = ("cuda", "cpu")
    prefix = "triton_"  # lpc_fast.triton registers its ops, fakes and autograd on import

    def availability(self) -> tuple[bool, str]:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed (pip install triton)"
        try:
            importlib.import_module("lpc_fast.triton")
        except Exception as exc:  # a broken Triton install must not break import of lpc_fast
            return False, f"lpc_fast.triton failed to import: {exc}"
        if torch.cuda.is_available():
            return True, f"triton on {torch.cuda.get_device_name()}"
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, for testing)"
        return True, "triton installed, but there is no GPU and TRITON_INTERPRET is not 1"

    def supports_device(self, device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"

    def unsupported_reason(self, device: torch.device) -> str | None:
        reason = super().unsupported_reason(device)
        if reason is not None and device.type == "cpu":
            return (
                "triton runs on CPU tensors only under the interpreter: "
                "export TRITON_INTERPRET=1 before Python starts"
            )
        return reason


_BACKENDS: dict[str, _Backend] = {
    "triton": TritonProxyBackend(),
    "cuda": CudaBackend(),
    "cpu": CpuBackend(),
    "reference": ReferenceBackend(),
}

# Automatic choice by device, fastest first. On CUDA the C++ kernel is preferred until GPU
# measurements say otherwise (benchmarks/results); Triton follows, then the reference.
_AUTO_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}


def get_backend(name: str) -> _Backend:
    """The backend object called ``name`` (whether or not it can run here)."""
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    return _BACKENDS[name]


def backends() -> list[BackendInfo]:
    """The availability table: one :class:`BackendInfo` per backend, with the reason."""
    rows = []
    for name in BACKEND_NAMES:
        b = _BACKENDS[name]
        ok, reason = b.availability()
        rows.append(BackendInfo(name=name, available=ok, reason=reason, devices=b.devices))
    return rows


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager selecting ``name`` for every op call inside it (``None`` = automatic)."""
    if name is not None:
        get_backend(name)  # validate early
    _context_stack.append(name)
    try:
        yield
    finally:
        _context_stack.pop()


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _requested(backend: str | None, ctx: str | None = None) -> tuple[str | None, str]:
    if backend is not None:
        return backend, "backend= argument"
    if ctx is not None:
        return ctx, "use_backend() context"
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        return env, f"{ENV_VAR}={env}"
    return None, "automatic"


def select_backend(device: torch.device | str, backend: str | None = None) -> _Backend:
    """Resolve which backend runs an op on ``device``.

    Raises
    ------
    BackendUnavailableError
        When an explicitly requested backend cannot run, with the reason.
    ValueError
        When the requested name is not a backend.
    """
    ctx = _context_stack[-1] if _context_stack else None
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if torch.compiler.is_compiling():
        return _BACKENDS[_resolve(device_type, backend, ctx)]
    # Availability does not change within a process: cache the resolution per request (the
    # environment variable is part of the key, so changing it takes effect at once).
    key = (device_type, backend, ctx, os.environ.get(ENV_VAR))
    name = _selection_cache.get(key)
    if name is None:
        name = _resolve(device_type, backend, ctx)
        _selection_cache[key] = name
    return _BACKENDS[name]


@torch.compiler.assume_constant_result
def _resolve(device_type: str, backend: str | None, ctx: str | None) -> str:
    # A pure function of its arguments and the environment: torch.compile evaluates it once
    # while tracing and bakes the name in, so selection costs nothing inside compiled loops.
    device = torch.device(device_type)
    name, source = _requested(backend, ctx)
    if name is not None:
        chosen = get_backend(name)
        reason = chosen.unsupported_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} ({source}) cannot run on {device}: {reason}")
        return chosen.name
    order = _AUTO_ORDER.get(device.type, ("reference",))
    skipped = []
    for candidate in order:
        b = _BACKENDS[candidate]
        reason = b.unsupported_reason(device)
        if reason is None:
            if skipped:
                _warn_once(
                    (device.type, candidate),
                    f"lpc_fast: using the {candidate!r} backend on {device.type}; "
                    + "; ".join(f"{n!r} unavailable: {r}" for n, r in skipped),
                )
            return candidate
        skipped.append((candidate, reason))
    raise BackendUnavailableError(f"no backend can run on {device}")  # pragma: no cover


def describe_selection(device: torch.device | str = "cpu", backend: str | None = None) -> str:
    """One line saying which backend runs on ``device`` and why (for CLIs and logs)."""
    device = torch.device(device)
    ctx = _context_stack[-1] if _context_stack else None
    _, source = _requested(backend, ctx)
    chosen = select_backend(device, backend)
    _, reason = chosen.availability()
    return f"kernel backend: {chosen.name} on {device.type} ({source}; {reason})"
