"""Triton kernels of the fused Langevin step and of the RNG contract.

The backend object is :class:`lpc_fast.dispatch.TritonBackend`
(``lpc_fast.dispatch.get_backend("triton")``); it calls the ``lpc_fast::triton_<op>``
dispatcher ops that :func:`load_ops` registers from the op table
(:mod:`lpc_fast._schemas`) with the launchers of :mod:`lpc_fast.triton.launch`.
Importing this package does not import Triton.

Modules, in import order (none imports :mod:`lpc_fast.dispatch`, this package or a module after
it): ``_interpret`` (whether the interpreter is on), ``kernels`` (the ``@triton.jit`` code),
``foreach`` (the foreach op's device tables),
``likelihood`` (the fused likelihood kernel and its launcher), ``launch`` (every host launcher
and the one launch site), ``ops`` (dispatcher registration and
the eager bypass of the dispatcher).

Triton runs on CUDA tensors, and on CPU tensors only through its interpreter,
which needs ``TRITON_INTERPRET=1`` in the environment before Python starts.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._interpret import interpreter_enabled

__all__ = ["interpreter_enabled", "load_ops"]


def load_ops() -> ModuleType:
    """Import Triton and the kernels, and register the ``lpc_fast::triton_*`` ops (once)."""
    return importlib.import_module(".ops", __name__)
