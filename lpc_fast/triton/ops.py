"""Dispatcher registration of the Triton launchers as ``lpc_fast::triton_<op>``, and their eager bypass.

Every op of the table (:data:`lpc_fast._schemas.OPS`) is registered with the
launcher of the same name in :mod:`lpc_fast.triton.launch`. On a CUDA machine
(without the interpreter) the ops are ``torch.library.triton_op`` whose bodies
launch the kernels through ``wrap_triton``, so inductor sees and can schedule the
kernels. Under ``TRITON_INTERPRET=1`` (or without CUDA) that path fails inside
``torch.compile``; the ops are then opaque ``custom_op`` wrappers of the same
launchers with the table's fake kernels. The choice is made once, when this
module is imported.

:data:`CALLS` is what the backend object calls (:class:`lpc_fast.dispatch.TritonBackend`): per op,
the launcher itself on the plain eager path and the registered op otherwise
(:func:`lpc_fast._eager.bypass`), so an eager call costs a launch, not the custom-op machinery.
"""

import torch

from .. import _eager, _schemas
from . import launch

__all__ = ["USES_TRITON_OP", "REGISTERED", "CALLS"]

#: Whether the ops are ``triton_op`` (real GPU) rather than opaque ``custom_op`` (interpreter).
USES_TRITON_OP = torch.cuda.is_available() and not launch.interpreter_enabled()

#: Op name -> the registered ``CustomOpDef``.
REGISTERED = _schemas.register_python_kernels(
    "triton",
    launch,
    triton_op=USES_TRITON_OP,
    wrap=torch.library.wrap_triton if USES_TRITON_OP else None,
)

#: Op name -> a callable with the op's positional arguments: the launcher on the plain eager path,
#: the dispatcher op ``torch.ops.lpc_fast.triton_<op>.default`` otherwise.
CALLS = {
    name: _eager.bypass(
        name, getattr(torch.ops.lpc_fast, _schemas.PREFIXES["triton"] + name).default, getattr(launch, name)
    )
    for name in _schemas.OPS
}
