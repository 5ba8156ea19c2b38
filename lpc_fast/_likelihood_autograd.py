"""Autograd of the ``log_likelihood_grad`` op (the op table's entry, :mod:`lpc_fast._schemas`).

The op returns its own first derivatives, so its backward is a product: ``d log_prob / d out`` is
``grad_out`` row by row, ``d log_prob / d log_sigma`` the per-point ``grad_log_sigma``. The two
derivative outputs are constants to autograd (non-differentiable outputs). A second derivative
through the value raises (:class:`_FirstOrderOnly`): the kernels do not compute the Hessian.
"""

from __future__ import annotations

import torch

__all__ = ["FusedLikelihood", "backward", "setup_context"]

_SECOND_ORDER = (
    "second derivatives of the fused likelihood op (lpc_fast::log_likelihood_grad) are not implemented; "
    "use the likelihood's reference form (e.g. DiscretisedGaussianLikelihood.log_prob_levels_reference) "
    "where they are needed"
)


class _FirstOrderOnly(torch.autograd.Function):
    """``grad_out * g`` (or the sum of ``grad_log_sigma * g``) as a graph node whose own derivative raises.

    Used when a backward builds a graph (``create_graph=True``), so that a second derivative fails
    loudly instead of silently treating the first derivatives as constants.
    """

    @staticmethod
    def forward(g, slope, out, reduce):
        if reduce:
            return torch.mul(g, slope).sum()
        return torch.mul(slope, g.view((-1,) + (1,) * (slope.dim() - 1)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_SECOND_ORDER)


def setup_context(ctx, inputs, output) -> None:
    x, out, log_sigma = inputs[0], inputs[1], inputs[2]
    _, grad_out, grad_ls = output
    ctx.mark_non_differentiable(grad_out, grad_ls)
    ctx.save_for_backward(grad_out, grad_ls, out)
    ctx.log_sigma_meta = None if log_sigma is None else (log_sigma.dtype, log_sigma.shape)
    ctx.x_requires_grad = x.requires_grad


def backward(ctx, g_log_prob, _g_grad_out, _g_grad_ls):
    if ctx.x_requires_grad and ctx.needs_input_grad[0]:
        raise RuntimeError("lpc_fast::log_likelihood_grad: the data x is not differentiable")
    grad_out, grad_ls, out = ctx.saved_tensors
    build_graph = torch.is_grad_enabled()  # on in a backward only with create_graph=True
    g_out = g_ls = None
    if ctx.needs_input_grad[1]:
        if build_graph:
            g_out = _FirstOrderOnly.apply(g_log_prob, grad_out, out, False)
        else:
            g_out = torch.mul(grad_out, g_log_prob.view((-1,) + (1,) * (grad_out.dim() - 1)))
    if ctx.needs_input_grad[2] and ctx.log_sigma_meta is not None:
        dtype, shape = ctx.log_sigma_meta
        if build_graph:
            g_ls = _FirstOrderOnly.apply(g_log_prob, grad_ls, out, True)
        else:
            g_ls = torch.dot(g_log_prob, grad_ls)
        g_ls = g_ls.to(dtype).reshape(shape)
    return None, g_out, g_ls, None, None, None, None


class FusedLikelihood(torch.autograd.Function):
    """The op as an ``autograd.Function`` (same backward as the op's registered autograd).

    ``FusedLikelihood.apply(op, x, out, log_sigma, log_sigma_value, kind, sigmoid, num_levels)``
    with ``op`` one backend's ``log_likelihood_grad`` overload. The likelihood modules call the op
    through it because ``torch.func`` transforms (``torch.func.grad``) support ``autograd.Function``
    but not the autograd that ``torch.library.register_autograd`` attaches to an op.
    """

    @staticmethod
    def forward(op, x, out, log_sigma, log_sigma_value, kind, sigmoid, num_levels):
        return op(x, out, log_sigma, log_sigma_value, kind, sigmoid, num_levels)

    @staticmethod
    def setup_context(ctx, inputs, output):
        setup_context(ctx, inputs[1:], output)

    @staticmethod
    def backward(ctx, g_log_prob, g_grad_out, g_grad_ls):
        # needs_input_grad is indexed from op: shift by one for the shared backward.
        ctx_view = _Shifted(ctx)
        return (None, *backward(ctx_view, g_log_prob, g_grad_out, g_grad_ls))


class _Shifted:
    """``ctx`` with ``needs_input_grad`` seen without its first entry (the op argument)."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self.needs_input_grad = ctx.needs_input_grad[1:]

    def __getattr__(self, name):
        return getattr(self._ctx, name)
