"""The op table: every ``lpc_fast::`` dispatcher op's schema, fake kernel and autograd, stated once.

Each backend exposes the same ops under its own prefix (:data:`PREFIXES`):
``lpc_fast::<op>`` for the C++ kernels (CPU and CUDA dispatch keys of one op),
``lpc_fast::triton_<op>`` and ``lpc_fast::reference_<op>``. Every one of them is
defined from the schema string in :data:`OPS`:

* the C++ ops by :func:`define_extension_ops` (a ``torch.library`` fragment) before
  ``lpc_fast._C`` is loaded; the extension contains only ``TORCH_LIBRARY_IMPL``
  blocks, so it attaches kernels to these schemas. The dispatcher checks each C++
  kernel's signature against the schema when both are present and refuses a
  mismatch at import, so the C++ side cannot drift from this table unnoticed.
* the Python backends (Triton, reference) by :func:`register_python_kernels`, which
  looks up one function per op (named like the op) in the backend's kernel module
  and wraps it as a ``custom_op`` (or ``triton_op`` on a GPU) with this schema.

Why schemas are defined from Python rather than a header generated at build time:
the Python backends and the fake kernels need the table at run time anyway, a
generated header would add a build step (and a second, generated, copy of each
schema) while the C++ kernel signatures would still be written by hand, and the
dispatcher already verifies those signatures against the schema at registration.

Adding an op
------------
1. Add an :class:`OpSpec` to :data:`OPS`: the schema, a fake kernel (called with the op's
   arguments as keywords), and ``autograd`` if it is differentiable.
2. Write its kernels. C++: a function registered with ``m.impl("<op>", ...)`` in the
   ``TORCH_LIBRARY_IMPL(lpc_fast, CPU, m)`` block of ``csrc/bindings.cpp`` and in the ``CUDA``
   block of ``csrc/cuda/langevin_cuda_ops.cpp`` (no ``m.def``: the schema comes from here).
   Python: a launcher named ``<op>`` in :mod:`lpc_fast.triton.launch` and a function named
   ``<op>`` in :mod:`lpc_fast._reference_kernels`, both called with the op's arguments as
   keywords named as in the schema (the launcher also takes ``wrap=``). Registration is then
   automatic; a Python backend without a kernel for a table op fails at import.
3. Give :class:`lpc_fast.dispatch._DispatcherBackend` a method that calls
   ``self._op("<op>")(...)``: every backend object gets it.
4. Tests: add the op's arguments to ``_opcheck_cases`` in ``tests/test_dispatcher_ops.py`` and
   ``tests/test_triton_backend.py`` (both refuse a table op without a case); a new Triton
   kernel goes into ``VARIANTS`` / ``INT_FLAGS`` of ``tests/test_triton_aot.py``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = [
    "NAMESPACE",
    "HYPER_NAMES",
    "OPS",
    "OpSpec",
    "PREFIXES",
    "arg_names",
    "as_op_function",
    "define_extension_ops",
    "mutated_args",
    "normalised_schema",
    "qualname",
    "register_python_kernels",
    "same_schema",
    "schema",
]

NAMESPACE = "lpc_fast"

#: Op-name prefix of each backend; ``cpu`` and ``cuda`` share the C++ ops (two dispatch keys).
PREFIXES = {"cpu": "", "cuda": "", "triton": "triton_", "reference": "reference_"}

#: The hyper-parameters of an update, in schema order (``**hyper`` of the backend methods).
HYPER_NAMES = ("step_size", "beta", "eps", "temperature", "bias_correction", "precondition", "weight_decay")

_HYPER = (
    "float step_size, float beta, float eps, float temperature, "
    "bool bias_correction, bool precondition, float weight_decay"
)
# Seeds, offsets and steps are SymInt: an int would make torch.compile specialise (and recompile)
# on every new value. Seeds and offsets are int64 carrying the bits of the uint64 values.
_UPDATE = f"SymInt step, {_HYPER}, SymInt seed, SymInt offset"


# --------------------------------------------------------------------------------------------------
# Fake kernels (shapes and dtypes of the outputs; the public ops validate the inputs)
# --------------------------------------------------------------------------------------------------


def _fake_none(**_: Any) -> None:
    return None


def _fake_fwd(*, z: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # Fresh contiguous tensors: z_new in z's dtype, v_new float32.
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(z.shape, dtype=torch.float32, device=z.device),
    )


def _fake_bwd(*, z: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
    )


def _fake_foreach(
    *, zs: list[torch.Tensor], grads: list[torch.Tensor], vs: list[torch.Tensor], **_: Any
) -> None:
    # Meta tensors reach this kernel even mixed with real ones: check what the real kernels check
    # about the lists' lengths and devices, so such a call fails instead of doing nothing.
    for name, xs in (("grads", grads), ("vs", vs)):
        if len(xs) != len(zs):
            raise ValueError(f"{name} must hold one tensor per tensor of zs ({len(zs)}), got {len(xs)}")
    for name, xs in (("zs", zs), ("grads", grads), ("vs", vs)):
        for i, x in enumerate(xs):
            if x.device != zs[0].device:
                raise ValueError(f"{name}[{i}] must be on zs[0]'s device ({zs[0].device}), got {x.device}")


# --------------------------------------------------------------------------------------------------
# Autograd of the functional step: d(z_new) / d(z, grad) by the backend's own backward op
# --------------------------------------------------------------------------------------------------


def _fwd_setup_context(ctx, inputs, output) -> None:
    z, grad, v, *scalars = inputs
    ctx.save_for_backward(z, grad, v)
    ctx.scalars = scalars


def _fwd_backward(prefix: str) -> Callable:
    bwd_name = f"{prefix}langevin_bwd"

    def backward(ctx, grad_z_new, grad_v_new):
        z, grad, v = ctx.saved_tensors
        grad_z_new = torch.zeros_like(z) if grad_z_new is None else grad_z_new.contiguous()
        bwd = getattr(torch.ops.lpc_fast, bwd_name).default
        gz, gg = bwd(grad_z_new, grad_v_new, z, grad, v, *ctx.scalars)
        # v (the preconditioner state) is not differentiable, nor are the scalars.
        return (gz, gg, None) + (None,) * len(ctx.scalars)

    return backward


@dataclass(frozen=True)
class OpSpec:
    """One op: its schema (arguments and returns, without the name), fake kernel and autograd.

    ``fake`` is called with the op's arguments as keywords. ``autograd`` is
    ``(setup_context, make_backward)`` where ``make_backward(prefix)`` returns the
    backward function for the op of that backend prefix.
    """

    schema: str
    fake: Callable[..., Any]
    autograd: tuple[Callable, Callable[[str], Callable]] | None = None
    #: Registered as an opaque ``custom_op`` even where the others are ``triton_op``: its Triton
    #: kernel reads tensor addresses (a pointer table), which ``torch.compile`` cannot trace.
    opaque: bool = False


#: The op table (docs/ARCHITECTURE.md): op name -> :class:`OpSpec`.
OPS: dict[str, OpSpec] = {
    "langevin_step_": OpSpec(
        f"(Tensor(a!) z, Tensor grad, Tensor(b!) v, {_UPDATE}) -> ()",
        _fake_none,
    ),
    "langevin_step_state_": OpSpec(
        f"(Tensor(a!) z, Tensor grad, Tensor(b!) v, Tensor(c!) state, {_HYPER}) -> ()",
        _fake_none,
    ),
    "langevin_fwd": OpSpec(
        f"(Tensor z, Tensor grad, Tensor v, {_UPDATE}) -> (Tensor z_new, Tensor v_new)",
        _fake_fwd,
        autograd=(_fwd_setup_context, _fwd_backward),
    ),
    "langevin_bwd": OpSpec(
        f"(Tensor grad_z_new, Tensor? grad_v_new, Tensor z, Tensor grad, Tensor v, {_UPDATE}) "
        "-> (Tensor grad_z, Tensor grad_grad)",
        _fake_bwd,
    ),
    # One launch for a list of tensors; tensor i draws its noise at
    # offset + sum_{j<i} offset_increment(zs[j].numel()) (lpc_fast.rng.foreach_offsets).
    "langevin_step_foreach_": OpSpec(
        f"(Tensor(a!)[] zs, Tensor[] grads, Tensor(b!)[] vs, {_UPDATE}) -> ()",
        _fake_foreach,
        opaque=True,
    ),
    "langevin_step_foreach_state_": OpSpec(
        f"(Tensor(a!)[] zs, Tensor[] grads, Tensor(b!)[] vs, Tensor(c!) state, {_HYPER}) -> ()",
        _fake_foreach,
        opaque=True,
    ),
    "philox_normal_": OpSpec("(Tensor(a!) out, SymInt seed, SymInt offset) -> ()", _fake_none),
    "philox_uint32_": OpSpec("(Tensor(a!) out, SymInt seed, SymInt offset) -> ()", _fake_none),
}


# --------------------------------------------------------------------------------------------------
# The fused pixel likelihood: value, d/d(decoder output) and d/d(log sigma) in one pass
# --------------------------------------------------------------------------------------------------


def _fake_likelihood(*, out: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = out.shape[0]
    return (
        out.new_empty((rows,)),
        torch.empty(out.shape, dtype=out.dtype, device=out.device),
        out.new_empty((rows,)),
    )


def _likelihood_setup_context(ctx, inputs, output) -> None:
    from ._likelihood_autograd import setup_context

    setup_context(ctx, inputs, output)


def _likelihood_backward(prefix: str) -> Callable:
    from ._likelihood_autograd import backward

    return backward


# kind: 0 discretised Gaussian, 1 Gaussian, 2 Bernoulli (lpc_fast.models.likelihoods.LIKELIHOOD_KINDS).
# The ints are SymInt: a triton_op infers its schema from the launcher's signature, and infers SymInt.
# log_sigma: the learned parameter (read on the device), or None for the fixed log_sigma_value.
# Returns per data point (dim 0) the log-likelihood summed over the other dims, the derivative with
# respect to every element of out, and the per-point sum of the derivative with respect to log sigma.
OPS["log_likelihood_grad"] = OpSpec(
    "(Tensor x, Tensor out, Tensor? log_sigma, float log_sigma_value, SymInt kind, bool sigmoid, "
    "SymInt num_levels) -> (Tensor log_prob, Tensor grad_out, Tensor grad_log_sigma)",
    _fake_likelihood,
    autograd=(_likelihood_setup_context, _likelihood_backward),
)


# --------------------------------------------------------------------------------------------------
# Helpers derived from the table
# --------------------------------------------------------------------------------------------------


def qualname(prefix: str, name: str) -> str:
    """``lpc_fast::<prefix><name>``."""
    return f"{NAMESPACE}::{prefix}{name}"


def schema(name: str) -> str:
    """The schema of op ``name`` (arguments and returns, without the name)."""
    return OPS[name].schema


@functools.cache
def _parsed(name: str) -> torch._C.FunctionSchema:
    return torch._C.parse_schema(f"{NAMESPACE}::{name}{OPS[name].schema}")


@functools.cache
def arg_names(name: str) -> tuple[str, ...]:
    """The argument names of op ``name``, in order."""
    return tuple(a.name for a in _parsed(name).arguments)


def mutated_args(name: str) -> tuple[str, ...]:
    """The arguments op ``name`` writes to (``Tensor(a!)`` in its schema)."""
    return tuple(
        a.name for a in _parsed(name).arguments if a.alias_info is not None and a.alias_info.is_write
    )


_PY_TYPES = {
    "Tensor": torch.Tensor,
    "Optional[Tensor]": Optional[torch.Tensor],  # noqa: UP045 - the dispatcher's type name, verbatim
    "List[Tensor]": list[torch.Tensor],
    "List[Optional[Tensor]]": list[Optional[torch.Tensor]],  # noqa: UP045
    "int": int,
    "List[int]": list[int],
    "float": float,
    "List[float]": list[float],
    "bool": bool,
}


def _signature(name: str) -> inspect.Signature:
    """A Python signature whose annotations ``torch.library.infer_schema`` maps back to the schema."""
    parsed = _parsed(name)
    params = []
    for a in parsed.arguments:
        key = str(a.type)
        if key not in _PY_TYPES:
            raise TypeError(f"op {name}: argument {a.name} has a type ({key}) the table cannot annotate")
        params.append(
            inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_PY_TYPES[key])
        )
    returns = [_PY_TYPES[str(r.type)] for r in parsed.returns]
    ret: Any = None if not returns else returns[0] if len(returns) == 1 else tuple[tuple(returns)]
    return inspect.Signature(params, return_annotation=ret)


def as_op_function(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (taking the op's arguments as keywords) as a positional function with the op's signature."""
    names = arg_names(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(zip(names, args))
        return fn(**kwargs)

    call.__name__ = call.__qualname__ = name
    call.__signature__ = _signature(name)  # type: ignore[attr-defined]
    return call


def normalised_schema(full_schema: str) -> str:
    """Arguments and returns of a schema without its name, alias-set letters and return names."""
    args_and_returns = full_schema[full_schema.index("(") :]
    args_and_returns = re.sub(r"\((?:[a-z]\d*)!\)", "(!)", args_and_returns)
    args, returns = args_and_returns.split(" -> ")
    returns = re.sub(r"(Tensor\??) \w+", r"\1", returns)
    return f"{args} -> {returns}"


def same_schema(name: str, op: torch._ops.OpOverload) -> bool:
    """Whether a registered op has the table's schema for ``name`` (up to alias letters and return names)."""
    return normalised_schema(str(op._schema)) == normalised_schema(OPS[name].schema)


def _register_fake_and_autograd(prefix: str, name: str) -> None:
    spec = OPS[name]
    qn = qualname(prefix, name)
    torch.library.register_fake(qn)(as_op_function(name, spec.fake))
    if spec.autograd is not None:
        setup_context, make_backward = spec.autograd
        torch.library.register_autograd(qn, make_backward(prefix), setup_context=setup_context)


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------

_extension_defined = False


def define_extension_ops() -> None:
    """Define the C++ backend's ops ``lpc_fast::<op>`` (schemas, fakes, autograd), once.

    ``lpc_fast._C`` registers only kernels (``TORCH_LIBRARY_IMPL``); call this before
    loading it so its kernels attach to these schemas.
    """
    global _extension_defined
    if _extension_defined:
        return
    for name, spec in OPS.items():
        torch.library.define(qualname(PREFIXES["cpu"], name), spec.schema)
        _register_fake_and_autograd(PREFIXES["cpu"], name)
    _extension_defined = True


def register_python_kernels(
    backend: str,
    kernels: Any,
    *,
    triton_op: bool = False,
    wrap: Callable[[Any], Any] | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Define every table op for ``backend`` with the kernels ``kernels.<op>``.

    Parameters
    ----------
    backend : str
        ``"triton"`` or ``"reference"`` (:data:`PREFIXES`).
    kernels : module or object
        Has one callable per table op, named like the op, taking the op's arguments as keywords.
    triton_op : bool
        Register with ``torch.library.triton_op`` (the kernels take ``wrap=``, applied to every
        Triton kernel they launch) so inductor sees the kernels; else an opaque ``custom_op``.
    wrap : callable, optional
        Passed to the kernels as ``wrap=`` (``torch.library.wrap_triton`` with ``triton_op``).
    prefix : str, optional
        Op-name prefix (default: the backend's, :data:`PREFIXES`; tests register other flavours).

    Returns
    -------
    dict
        Op name -> the registered ``CustomOpDef``.

    Raises
    ------
    NotImplementedError
        When ``kernels`` lacks a table op.
    RuntimeError
        When a registered schema differs from the table (a ``triton_op`` infers it).
    """
    prefix = PREFIXES[backend] if prefix is None else prefix
    missing = [name for name in OPS if not callable(getattr(kernels, name, None))]
    if missing:
        raise NotImplementedError(
            f"the {backend} backend has no kernel for op(s) {', '.join(missing)} "
            f"(expected functions of these names in {getattr(kernels, '__name__', kernels)!r})"
        )
    registered = {}
    for name, spec in OPS.items():
        kernel = getattr(kernels, name)
        if wrap is not None and not spec.opaque:
            kernel = functools.partial(kernel, wrap=wrap)
        fn = as_op_function(name, kernel)
        qn = qualname(prefix, name)
        mutates = mutated_args(name)
        if triton_op and not spec.opaque:
            # triton_op infers the schema from fn's signature (built from the table) and uses fn as
            # its own fake; verify the inference reproduced the table.
            op = torch.library.triton_op(qn, fn, mutates_args=mutates)
            if not same_schema(name, op._opoverload):
                raise RuntimeError(f"{qn}: registered schema {op._opoverload._schema} != table {spec.schema}")
            if spec.autograd is not None:
                setup_context, make_backward = spec.autograd
                torch.library.register_autograd(qn, make_backward(prefix), setup_context=setup_context)
        else:
            op = torch.library.custom_op(qn, fn, mutates_args=mutates, schema=spec.schema)
            _register_fake_and_autograd(prefix, name)
        registered[name] = op
    return registered
