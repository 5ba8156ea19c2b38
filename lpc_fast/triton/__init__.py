"""Triton kernels of the fused Langevin step and of the RNG contract.

The backend object is :class:`lpc_fast.dispatch.TritonBackend`
(``lpc_fast.dispatch.get_backend("triton")``); it calls the ``lpc_fast::triton_<op>``
dispatcher ops that :func:`load_ops` registers from the op table
(:mod:`lpc_fast._schemas`) with the launchers of :mod:`lpc_fast.triton.launch`.
Importing this package does not import Triton.

Modules, in import order (none imports :mod:`lpc_fast.dispatch` or a module after it):
``kernels`` (the ``@triton.jit`` code), ``foreach`` (the foreach op's device tables),
``launch`` (every host launcher and the one launch site), ``ops`` (dispatcher registration and
the eager bypass of the dispatcher).

Triton runs on CUDA tensors, and on CPU tensors only through its interpreter,
which needs ``TRITON_INTERPRET=1`` in the environment before Python starts.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["interpreter_enabled", "load_ops"]


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` is set (Triton reads it when it is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def load_ops() -> ModuleType:
    """Import Triton and the kernels, and register the ``lpc_fast::triton_*`` ops (once)."""
    return importlib.import_module(".ops", __name__)
