"""The plain eager path: calling a Python backend's kernel directly instead of through its op.

A ``torch.library`` op whose kernel is a Python function pays for torch's Python custom-op
machinery on every call (the autograd, ADInplaceOrView and backend layers, each a Python
function): about 150 us of host time per call, ten times a GPU kernel launch. When none of
those layers has anything to do, the op is equivalent to calling its kernel and bumping the
version counters of the tensors it writes, which is what :func:`bypass` does. It has nothing to
do when, at the time of the call ("plain eager"):

* no graph is being captured: ``torch.compile`` is not tracing, nor ``torch.jit.trace``;
* no ``TorchDispatchMode`` is active (``FakeTensorMode``, functionalization, ``make_fx``'s proxy
  mode and user modes all are one) and no ``TorchFunctionMode``;
* no ``torch.func`` transform is active (``grad``, ``vjp``, ``vmap``, ``functionalize``...);
* the autograd profiler is off (profiles keep showing the op);
* every tensor argument is a plain ``torch.Tensor`` (or ``nn.Parameter``), not a meta tensor,
  so no subclass, ``FakeTensor`` or wrapper tensor expects to see the op;
* autograd has nothing to record: grad mode is off or no tensor argument requires grad;
* the tensors are not on a CUDA stream that is capturing a CUDA graph.

Anything else takes the op, so ``torch.compile(fullgraph=True)``, autograd through the functional
op, ``torch.func``, ``FakeTensor`` and dispatch modes see the registered op as before. The checks
cost about a microsecond per tensor argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _schemas

__all__ = ["bypass", "plain_context", "plain_tensors"]

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_transforms = torch._C._functorch.peek_interpreter_stack
_jit_tracing = torch._C._get_tracing_state
_profiling = torch._C._autograd._profiler_enabled
_grad_enabled = torch.is_grad_enabled
_increment_version = torch._C._increment_version


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a CUDA graph (only asked for CUDA tensors)."""
    return torch.cuda.is_current_stream_capturing()


def plain_context() -> bool:
    """Whether nothing global wants to see ops: no tracing, mode, transform or profiler (module docstring)."""
    return not (
        _is_compiling()
        or _dispatch_modes()
        or _function_modes()
        or _transforms() is not None
        or _jit_tracing() is not None
        or _profiling()
    )


def plain_tensors(tensors) -> bool:
    """Whether ``tensors`` (``None`` entries allowed, the first a tensor) may skip the op: plain
    types, nothing for autograd to record, the first not a meta tensor and not on a CUDA stream
    that is capturing. (The kernels require one device for all: the first tensor stands for all.)"""
    if _grad_enabled():
        for t in tensors:
            if t is not None:
                kind = type(t)
                if (kind is not _Tensor and kind is not _Parameter) or t.requires_grad:
                    return False
    else:
        for t in tensors:
            if t is not None:
                kind = type(t)
                if kind is not _Tensor and kind is not _Parameter:
                    return False
    first = tensors[0]
    if first.is_meta:
        return False
    return not (first.is_cuda and capturing())


def bypass(name: str, op: Callable[..., Any], kernel: Callable[..., Any]) -> Callable[..., Any]:
    """A callable with ``op``'s positional arguments: ``kernel(*args)`` on the plain eager path
    (then the version counters of the tensors the op writes are bumped, as the dispatcher does),
    ``op(*args)`` otherwise.

    ``name`` is the op's name in the table (:data:`lpc_fast._schemas.OPS`), which says which
    arguments are tensors or lists of tensors and which of them the op writes.
    """
    args = _schemas._parsed(name).arguments
    single = tuple(i for i, a in enumerate(args) if str(a.type) in ("Tensor", "Optional[Tensor]"))
    lists = tuple(i for i, a in enumerate(args) if str(a.type) == "List[Tensor]")
    written = tuple(i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write)
    written_single = tuple(i for i in written if i in single)
    written_lists = tuple(i for i in written if i in lists)

    if not lists:

        def call(*a: Any, **kw: Any) -> Any:
            if kw or not plain_context() or not plain_tensors([a[i] for i in single]):
                return op(*a, **kw)
            out = kernel(*a)
            if written_single:
                _increment_version([a[i] for i in written_single])
            return out

    else:

        def call(*a: Any, **kw: Any) -> Any:
            if kw or not plain_context():
                return op(*a, **kw)
            tensors = [a[i] for i in single]
            for i in lists:
                tensors += a[i]
            if not tensors or not plain_tensors(tensors):
                return op(*a, **kw)
            out = kernel(*a)
            if written_single:
                _increment_version([a[i] for i in written_single])
            for i in written_lists:
                _increment_version(a[i])
            return out

    call.__name__ = call.__qualname__ = name
    call.dispatcher_op = op  # type: ignore[attr-defined]
    call.kernel = kernel  # type: ignore[attr-defined]
    return call
