"""Triton backend of the fused Langevin step and of the RNG contract.

Importing this package registers the ``lpc_fast::triton_*`` dispatcher ops when
Triton is installed, and still succeeds without Triton: :class:`TritonBackend`
then reports why it cannot run (:meth:`TritonBackend.availability`).

Triton runs on CUDA tensors, and on CPU tensors only through its interpreter,
which needs ``TRITON_INTERPRET=1`` in the environment before Python starts.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import torch

from .. import rng

__all__ = ["TritonBackend", "interpreter_enabled", "load_ops"]


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` is set (Triton reads it when it is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def load_ops() -> ModuleType:
    """Import Triton, the kernels, and register the ``lpc_fast::triton_*`` ops (once)."""
    return importlib.import_module(".ops", __name__)


def _as_int64(name: str, value: Any) -> Any:
    """A seed or offset as the int64 with the bits of its uint64 value; SymInts pass through."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    if isinstance(value, int):
        if value < 0:
            if value < -(2**63):
                raise ValueError(f"{name} must be in [-2**63, 2**64), got {value}")
            return value
        return rng.to_int64(value)
    return value


class TritonBackend:
    """The ``triton`` backend: Triton kernels behind ``lpc_fast::triton_*`` dispatcher ops.

    Methods take the op arguments of docs/ARCHITECTURE.md (keyword-only after the
    tensors). Seeds and offsets may be given as unsigned 64-bit values or as the
    int64 with the same bits.
    """

    name = "triton"

    def availability(self) -> tuple[bool, str]:
        """Whether the backend can run here, and why (not).

        Returns
        -------
        (bool, str)
            Availability and a human-readable reason.
        """
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed (pip install 'lpc_fast[triton]')"
        except Exception as exc:  # a broken install must not break backend selection
            return False, f"triton failed to import: {exc!r}"
        if interpreter_enabled():
            return True, "TRITON_INTERPRET=1: Triton interpreter on CPU (and CUDA) tensors"
        if torch.cuda.is_available():
            return True, f"CUDA device {torch.cuda.get_device_name()}"
        return False, (
            "no CUDA device, and TRITON_INTERPRET is not set "
            "(set TRITON_INTERPRET=1 before starting Python to run the kernels on CPU)"
        )

    def supports_device(self, device: torch.device | str) -> bool:
        """Whether tensors on ``device`` can be processed."""
        device = torch.device(device)
        if not self.availability()[0]:
            return False
        if device.type == "cpu":
            return interpreter_enabled()
        if device.type == "cuda":
            return torch.cuda.is_available()
        return False

    # ------------------------------------------------------------------------------------------

    def step_(
        self,
        z: torch.Tensor,
        grad: torch.Tensor,
        v: torch.Tensor,
        *,
        step: int,
        step_size: float,
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        precondition: bool = True,
        prior_grad: bool = False,
        seed: int,
        offset: int,
    ) -> None:
        """In-place Langevin step: updates ``z`` and (if preconditioned) ``v``.

        Parameters
        ----------
        z, grad : Tensor
            Latents and energy gradient (one dtype: float16, bfloat16, float32 or float64).
        v : Tensor
            float32 second-moment state.
        step : int
            1-based step index (bias correction).
        step_size, beta, eps, temperature, bias_correction, precondition, prior_grad
            See :func:`lpc_fast.reference.langevin_update`.
        seed, offset : int
            Noise key and first Philox counter (unsigned 64-bit, or int64 with the same bits).
        """
        load_ops()
        torch.ops.lpc_fast.triton_langevin_step_(
            z,
            grad,
            v,
            step,
            step_size,
            beta,
            eps,
            temperature,
            bias_correction,
            precondition,
            prior_grad,
            _as_int64("seed", seed),
            _as_int64("offset", offset),
        )

    def step_state_(
        self,
        z: torch.Tensor,
        grad: torch.Tensor,
        v: torch.Tensor,
        state: torch.Tensor,
        *,
        step_size: float,
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        precondition: bool = True,
        prior_grad: bool = False,
    ) -> None:
        """Capturable in-place step: ``state = [seed, offset, step]`` (int64, on z's device).

        Reads the state on the device, then advances ``offset`` by ``ceil(numel / 4)``
        and ``step`` by one, so a CUDA graph of the step replays with fresh noise.
        """
        load_ops()
        torch.ops.lpc_fast.triton_langevin_step_state_(
            z, grad, v, state, step_size, beta, eps, temperature, bias_correction, precondition, prior_grad
        )

    def forward(
        self,
        z: torch.Tensor,
        grad: torch.Tensor,
        v: torch.Tensor,
        *,
        step: int,
        step_size: float,
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        precondition: bool = True,
        prior_grad: bool = False,
        seed: int,
        offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Functional step.

        Returns
        -------
        (z_new, v_new) : tuple of Tensor
            ``z_new`` in z's dtype, ``v_new`` float32, both contiguous.
        """
        load_ops()
        return torch.ops.lpc_fast.triton_langevin_fwd(
            z,
            grad,
            v,
            step,
            step_size,
            beta,
            eps,
            temperature,
            bias_correction,
            precondition,
            prior_grad,
            _as_int64("seed", seed),
            _as_int64("offset", offset),
        )

    def backward(
        self,
        grad_z_new: torch.Tensor,
        grad_v_new: torch.Tensor | None,
        z: torch.Tensor,
        grad: torch.Tensor,
        v: torch.Tensor,
        *,
        step: int,
        step_size: float,
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        precondition: bool = True,
        prior_grad: bool = False,
        seed: int,
        offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vector-Jacobian product of :meth:`forward` w.r.t. ``(z, grad)``, noise regenerated.

        Returns
        -------
        (grad_z, grad_grad) : tuple of Tensor
            In z's dtype.
        """
        load_ops()
        return torch.ops.lpc_fast.triton_langevin_bwd(
            grad_z_new,
            grad_v_new,
            z,
            grad,
            v,
            step,
            step_size,
            beta,
            eps,
            temperature,
            bias_correction,
            precondition,
            prior_grad,
            _as_int64("seed", seed),
            _as_int64("offset", offset),
        )

    def normal_(self, out: torch.Tensor, *, seed: int, offset: int) -> None:
        """Fill ``out`` (float32 or float64) with the contract's standard normals."""
        load_ops()
        torch.ops.lpc_fast.triton_philox_normal_(out, _as_int64("seed", seed), _as_int64("offset", offset))

    def uint32_(self, out: torch.Tensor, *, seed: int, offset: int) -> None:
        """Fill the int64 tensor ``out`` with the contract's uint32 words."""
        load_ops()
        torch.ops.lpc_fast.triton_philox_uint32_(out, _as_int64("seed", seed), _as_int64("offset", offset))


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Register the ops on import so that torch.ops.lpc_fast.triton_* exist for the dispatcher.
if _triton_installed():
    load_ops()
