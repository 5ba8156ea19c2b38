"""Dispatcher registration of the Triton kernels as ``lpc_fast::triton_<op>``.

On a CUDA machine (without the interpreter) the ops are ``torch.library.triton_op``
whose bodies launch the kernels through ``wrap_triton``, so inductor sees and can
schedule the kernels. Under ``TRITON_INTERPRET=1`` (or without CUDA) that path
fails inside ``torch.compile``; the ops are then opaque ``custom_op`` wrappers of
the same launchers with ``register_fake`` kernels. The choice is made once, when
this module is imported.

Seeds, offsets and steps are ``SymInt``: an ``int`` argument would make
``torch.compile`` specialise (and recompile) on every new value.
"""

import torch

from . import launch

__all__ = [
    "USES_TRITON_OP",
    "SCHEMAS",
    "triton_langevin_step_",
    "triton_langevin_step_state_",
    "triton_langevin_fwd",
    "triton_langevin_bwd",
    "triton_philox_normal_",
    "triton_philox_uint32_",
]

#: Whether the ops are ``triton_op`` (real GPU) rather than opaque ``custom_op`` (interpreter).
USES_TRITON_OP = torch.cuda.is_available() and not launch.interpreter_enabled()

_UPDATE_ARGS = (
    "SymInt step, float step_size, float beta, float eps, float temperature, "
    "bool bias_correction, bool precondition, bool prior_grad, SymInt seed, SymInt offset"
)
_STATE_ARGS = (
    "float step_size, float beta, float eps, float temperature, "
    "bool bias_correction, bool precondition, bool prior_grad"
)
#: Schemas of docs/ARCHITECTURE.md (op name -> schema without the name).
SCHEMAS = {
    "triton_langevin_step_": f"(Tensor(a!) z, Tensor grad, Tensor(b!) v, {_UPDATE_ARGS}) -> ()",
    "triton_langevin_step_state_": (
        f"(Tensor(a!) z, Tensor grad, Tensor(b!) v, Tensor(c!) state, {_STATE_ARGS}) -> ()"
    ),
    "triton_langevin_fwd": (
        f"(Tensor z, Tensor grad, Tensor v, {_UPDATE_ARGS}) -> (Tensor z_new, Tensor v_new)"
    ),
    "triton_langevin_bwd": (
        "(Tensor grad_z_new, Tensor? grad_v_new, Tensor z, Tensor grad, Tensor v, "
        f"{_UPDATE_ARGS}) -> (Tensor grad_z, Tensor grad_grad)"
    ),
    "triton_philox_normal_": "(Tensor(a!) out, SymInt seed, SymInt offset) -> ()",
    "triton_philox_uint32_": "(Tensor(a!) out, SymInt seed, SymInt offset) -> ()",
}

if USES_TRITON_OP:
    from torch.library import wrap_triton as _wrap
else:
    _wrap = None


def _register(name, fn, mutates_args, fake):
    """Register ``fn`` as ``lpc_fast::<name>`` (triton_op on GPUs, custom_op + fake otherwise)."""
    qualname = f"lpc_fast::{name}"
    if USES_TRITON_OP:
        # triton_op infers the schema from the annotations (same argument names and types as
        # SCHEMAS; only the return names are lost) and uses fn itself as the fake kernel.
        return torch.library.triton_op(qualname, fn, mutates_args=mutates_args)
    op = torch.library.custom_op(qualname, fn, mutates_args=mutates_args, schema=SCHEMAS[name])
    op.register_fake(fake)
    return op


# ---------------------------------------------------------------------------------------------------
# in-place step
# ---------------------------------------------------------------------------------------------------


def _step_(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
    seed: int,
    offset: int,
) -> None:
    launch.langevin_step_(
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
        seed,
        offset,
        wrap=_wrap,
    )


def _step_fake(
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
    seed,
    offset,
):
    launch._check_update_args(z, grad, v)


triton_langevin_step_ = _register("triton_langevin_step_", _step_, ("z", "v"), _step_fake)


# ---------------------------------------------------------------------------------------------------
# capturable in-place step
# ---------------------------------------------------------------------------------------------------


def _step_state_(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
) -> None:
    launch.langevin_step_state_(
        z,
        grad,
        v,
        state,
        step_size,
        beta,
        eps,
        temperature,
        bias_correction,
        precondition,
        prior_grad,
        wrap=_wrap,
    )


def _step_state_fake(
    z, grad, v, state, step_size, beta, eps, temperature, bias_correction, precondition, prior_grad
):
    launch._check_update_args(z, grad, v)
    launch._check_state(state, z)


triton_langevin_step_state_ = _register(
    "triton_langevin_step_state_", _step_state_, ("z", "v", "state"), _step_state_fake
)


# ---------------------------------------------------------------------------------------------------
# functional step and its backward
# ---------------------------------------------------------------------------------------------------


def _fwd(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch.langevin_fwd(
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
        seed,
        offset,
        wrap=_wrap,
    )


def _fwd_fake(
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
    seed,
    offset,
):
    launch._check_update_args(z, grad, v)
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(v.shape, dtype=torch.float32, device=v.device),
    )


triton_langevin_fwd = _register("triton_langevin_fwd", _fwd, (), _fwd_fake)


def _bwd(
    grad_z_new: torch.Tensor,
    grad_v_new: torch.Tensor | None,
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    step: int,
    step_size: float,
    beta: float,
    eps: float,
    temperature: float,
    bias_correction: bool,
    precondition: bool,
    prior_grad: bool,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch.langevin_bwd(
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
        seed,
        offset,
        wrap=_wrap,
    )


def _bwd_fake(
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
    seed,
    offset,
):
    launch._check_update_args(z, grad, v)
    return (
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
        torch.empty(z.shape, dtype=z.dtype, device=z.device),
    )


triton_langevin_bwd = _register("triton_langevin_bwd", _bwd, (), _bwd_fake)

_SCALAR_NAMES = (
    "step",
    "step_size",
    "beta",
    "eps",
    "temperature",
    "bias_correction",
    "precondition",
    "prior_grad",
    "seed",
    "offset",
)


def _fwd_setup_context(ctx, inputs, output):
    z, grad, v, *scalars = inputs
    ctx.save_for_backward(z, grad, v)
    ctx.scalars = scalars


def _fwd_backward(ctx, grad_z_new, grad_v_new):
    z, grad, v = ctx.saved_tensors
    if grad_z_new is None:
        grad_z_new = torch.zeros_like(z)
    grad_z, grad_grad = triton_langevin_bwd(grad_z_new, grad_v_new, z, grad, v, *ctx.scalars)
    # v (the preconditioner state) is not differentiable, nor are the scalars.
    return (grad_z, grad_grad, None) + (None,) * len(_SCALAR_NAMES)


triton_langevin_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------------


def _normal_(out: torch.Tensor, seed: int, offset: int) -> None:
    launch.philox_normal_(out, seed, offset, wrap=_wrap)


def _uint32_(out: torch.Tensor, seed: int, offset: int) -> None:
    launch.philox_uint32_(out, seed, offset, wrap=_wrap)


def _noop_fake(out, seed, offset):
    return None


triton_philox_normal_ = _register("triton_philox_normal_", _normal_, ("out",), _noop_fake)
triton_philox_uint32_ = _register("triton_philox_uint32_", _uint32_, ("out",), _noop_fake)

# The multi-tensor step registers lpc_fast::triton_langevin_step_foreach_(state_) on import.
from . import foreach  # noqa: E402, F401
