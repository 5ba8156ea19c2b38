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

from . import _schemas
from .triton._interpret import interpreter_enabled

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
    # The schemas come from the op table; the extension only attaches kernels to them.
    _schemas.define_extension_ops()
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


class _DispatcherBackend(_Backend):
    """A backend whose kernels are the ``torch.ops.lpc_fast.<prefix><op>`` ops of the op table.

    Every backend is one of these (:mod:`lpc_fast._schemas`): the methods below are the
    backend interface, each calling one op with the arguments in schema order.
    """

    @property
    def prefix(self) -> str:
        return _schemas.PREFIXES[self.name]

    def _register(self) -> None:
        """Make sure this backend's ops exist (imports whatever registers them)."""

    def _op(self, name: str):
        # The overload packet's .default skips a per-call overload resolution.
        op = self._ops.get(name)
        if op is None:
            self._register()
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
        return [hyper[k] for k in _schemas.HYPER_NAMES]

    def step_(self, z, grad, v, *, step, seed, offset, **hyper) -> None:
        """In place: ``z`` and (if preconditioned) ``v`` take the step's values."""
        self._op("langevin_step_")(z, grad, v, step, *self._hyper(hyper), seed, offset)

    def step_state_(self, z, grad, v, state, **hyper) -> None:
        """Capturable in-place step reading and advancing ``state = [seed, offset, step]``."""
        self._op("langevin_step_state_")(z, grad, v, state, *self._hyper(hyper))

    def step_foreach_(self, zs, grads, vs, *, step, seed, offset, **hyper) -> None:
        self._op("langevin_step_foreach_")(zs, grads, vs, step, *self._hyper(hyper), seed, offset)

    def step_foreach_state_(self, zs, grads, vs, state, **hyper) -> None:
        self._op("langevin_step_foreach_state_")(zs, grads, vs, state, *self._hyper(hyper))

    def forward(self, z, grad, v, *, step, seed, offset, **hyper):
        """Functional step: ``(z_new, v_new)``, differentiable w.r.t. ``(z, grad)``."""
        return self._op("langevin_fwd")(z, grad, v, step, *self._hyper(hyper), seed, offset)

    def backward(self, grad_z_new, grad_v_new, z, grad, v, *, step, seed, offset, **hyper):
        """Vector-Jacobian product of :meth:`forward` w.r.t. ``(z, grad)``, noise regenerated."""
        return self._op("langevin_bwd")(
            grad_z_new, grad_v_new, z, grad, v, step, *self._hyper(hyper), seed, offset
        )

    def normal_(self, out, *, seed, offset) -> None:
        """Fill ``out`` (float32 or float64) with the contract's standard normals."""
        self._op("philox_normal_")(out, seed, offset)

    def uint32_(self, out, *, seed, offset) -> None:
        """Fill the int64 tensor ``out`` with the contract's uint32 words."""
        self._op("philox_uint32_")(out, seed, offset)


class ReferenceBackend(_DispatcherBackend):
    """Plain PyTorch: slow, any device, the oracle every kernel is tested against."""

    name = "reference"
    devices = ("cpu", "cuda", "mps", "xpu", "meta")

    def availability(self) -> tuple[bool, str]:
        return True, "pure PyTorch, always available"

    def supports_device(self, device: torch.device) -> bool:
        return True

    def _register(self) -> None:
        importlib.import_module("lpc_fast._reference_kernels")


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


class TritonBackend(_DispatcherBackend):
    """Fused Triton kernels (:mod:`lpc_fast.triton`), loaded lazily: ``import lpc_fast`` never needs Triton.

    Triton runs on CUDA tensors, and on CPU tensors only through its interpreter,
    which needs ``TRITON_INTERPRET=1`` in the environment before Python starts.
    """

    name = "triton"
    devices = ("cuda", "cpu")

    def _register(self) -> None:
        importlib.import_module("lpc_fast.triton").load_ops()

    def _op(self, name: str):
        # The op, or on the plain eager path its launcher without the custom-op machinery
        # (lpc_fast.triton.ops.CALLS, lpc_fast._eager).
        op = self._ops.get(name)
        if op is None:
            op = self._ops[name] = importlib.import_module("lpc_fast.triton").load_ops().CALLS[name]
        return op

    def availability(self) -> tuple[bool, str]:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed (pip install 'lpc_fast[triton]')"
        except Exception as exc:  # a broken install must not break backend selection
            return False, f"triton failed to import: {exc!r}"
        try:
            self._register()
        except Exception as exc:  # a broken Triton install must not break import of lpc_fast
            return False, f"lpc_fast.triton failed to import: {exc}"
        if interpreter_enabled():
            return True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, for testing)"
        if torch.cuda.is_available():
            return True, f"triton on {torch.cuda.get_device_name()}"
        return False, (
            "no CUDA device, and TRITON_INTERPRET is not set "
            "(export TRITON_INTERPRET=1 before Python starts to run the kernels on CPU)"
        )

    def supports_device(self, device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        return device.type == "cpu" and interpreter_enabled()

    def unsupported_reason(self, device: torch.device) -> str | None:
        reason = super().unsupported_reason(device)
        if reason is not None and device.type == "cpu" and not interpreter_enabled():
            return (
                "triton runs on CPU tensors only under the interpreter: "
                "export TRITON_INTERPRET=1 before Python starts"
            )
        return reason


_BACKENDS: dict[str, _Backend] = {
    "triton": TritonBackend(),
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


# os.environ.get encodes the key and decodes the value on every call (about a microsecond, as much
# as a small kernel launch); the hot paths read os.environ's backing mapping, which every write to
# os.environ (monkeypatch.setenv included) updates.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None else None


def env_request() -> Any:
    """The raw ``LPC_FAST_BACKEND`` value, cheaply (a cache key: bytes or str, None when unset)."""
    if _ENV_DATA is not None:
        return _ENV_DATA.get(_ENV_KEY)
    return os.environ.get(ENV_VAR)  # pragma: no cover - an os.environ without its mapping


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
    key = (device_type, backend, ctx, env_request())
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
