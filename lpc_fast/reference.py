"""The Langevin update of LPC.md §2 in plain torch: the maths' single home.

Every kernel (C++ CPU, CUDA, Triton) implements exactly these functions and is
tested against them in float64 with the same noise. Noise is an explicit input
here; the kernels regenerate it from ``(seed, offset)`` with the RNG contract of
:mod:`lpc_fast.rng`.

Forward map, with the drive ``s = grad + weight_decay * z`` (the gradient of a Gaussian prior of
precision ``weight_decay`` added to the energy gradient; ``weight_decay = 0`` leaves ``s = grad``,
``prior_grad=True`` is ``weight_decay = 1``, the N(0, I) prior of LPC):

* preconditioned: ``v' = beta*v + (1-beta)*s**2``; ``v_hat = v' / (1 - beta**step)``
  with bias correction (else ``v'``); ``p = 1 / (eps + sqrt(v_hat))``;
* plain ULA (``precondition=False``): ``p = 1`` and ``v' = v`` (state untouched);
* ``z' = z - step_size*p*s + sqrt(2*step_size*temperature*p) * noise``.

``beta = 1`` with ``bias_correction=False`` freezes the preconditioner
(``v' = v``), the setting a Metropolis-adjusted chain needs.

Backward (the exact derivative of ``(z', v')`` w.r.t. ``z`` and ``grad``; ``v``
is not differentiable): with ``c`` the bias-correction factor,
``q = sqrt(v_hat)``, ``dq/ds = c*(1-beta)*s/q`` (taken as 0 where ``q = 0``, the
subgradient at the kink), ``dp/ds = -p**2 * dq/ds``::

    dz'/ds = -step_size*(p + s*dp/ds) + sqrt(2*step_size*temperature) * noise * dp/ds / (2*sqrt(p))
    dv'/ds = 2*(1-beta)*s
    grad_s = gz' * dz'/ds + gv' * dv'/ds
    grad_grad = grad_s;  grad_z = gz' + weight_decay * grad_s
"""

from __future__ import annotations

import math

import torch

__all__ = ["bias_correction_factor", "langevin_update", "langevin_update_backward", "resolve_weight_decay"]


def bias_correction_factor(beta: float, step: int, bias_correction: bool) -> float:
    """``1 / (1 - beta**step)`` with bias correction, else 1."""
    if not bias_correction:
        return 1.0
    return 1.0 / (1.0 - beta ** int(step))


def resolve_weight_decay(prior_grad: bool | None, weight_decay: float | None) -> float:
    """The prior precision ``lambda`` of ``s = grad + lambda * z`` from ``weight_decay`` or its alias.

    ``prior_grad=True`` is ``weight_decay=1`` (the N(0, I) prior), ``prior_grad=False`` is
    ``weight_decay=0``; ``None`` means not given. Both given must agree.

    Raises
    ------
    TypeError
        When ``prior_grad`` is not a bool (or None).
    ValueError
        When both are given and disagree.
    """
    if prior_grad is None:
        return 0.0 if weight_decay is None else weight_decay
    if type(prior_grad) is not bool:
        raise TypeError(f"prior_grad must be a bool, got {type(prior_grad).__name__}")
    if weight_decay is None:
        return 1.0 if prior_grad else 0.0
    if weight_decay != (1.0 if prior_grad else 0.0):
        raise ValueError(
            f"prior_grad={prior_grad} and weight_decay={weight_decay!r} disagree: prior_grad=True is "
            "weight_decay=1.0 and prior_grad=False is weight_decay=0.0; pass only weight_decay"
        )
    return weight_decay


def _drive(z: torch.Tensor, grad: torch.Tensor, weight_decay: float) -> torch.Tensor:
    return grad + weight_decay * z if weight_decay != 0 else grad


def langevin_update(
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    noise: torch.Tensor,
    *,
    step: int,
    step_size: float,
    beta: float = 0.99,
    eps: float = 1e-3,
    temperature: float = 1.0,
    bias_correction: bool = True,
    precondition: bool = True,
    prior_grad: bool | None = None,
    weight_decay: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Langevin step, out of place, in the dtype of the inputs.

    Parameters
    ----------
    z, grad : Tensor
        Latents and the energy gradient at ``z`` (without the Gaussian prior's ``weight_decay * z``).
    v : Tensor
        Second-moment state (the kernels keep it in float32).
    noise : Tensor
        Standard normal noise, same shape as ``z``.
    step : int
        1-based inner-step index (bias correction).
    step_size, beta, eps, temperature, bias_correction, precondition, weight_decay
        As in :func:`lpc_fast.langevin_step_`.
    prior_grad : bool, optional
        Alias: ``True`` is ``weight_decay=1``, ``False`` is ``weight_decay=0``.

    Returns
    -------
    (z_new, v_new) : tuple of Tensor
    """
    s = _drive(z, grad, resolve_weight_decay(prior_grad, weight_decay))
    if precondition:
        v_new = beta * v + (1.0 - beta) * s * s
        v_hat = v_new * bias_correction_factor(beta, step, bias_correction)
        p = 1.0 / (eps + torch.sqrt(v_hat))
    else:
        v_new = v.clone()
        p = torch.ones_like(s)
    z_new = z - step_size * p * s + torch.sqrt(2.0 * step_size * temperature * p) * noise
    return z_new, v_new


def langevin_update_backward(
    grad_z_new: torch.Tensor | None,
    grad_v_new: torch.Tensor | None,
    z: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    noise: torch.Tensor,
    *,
    step: int,
    step_size: float,
    beta: float = 0.99,
    eps: float = 1e-3,
    temperature: float = 1.0,
    bias_correction: bool = True,
    precondition: bool = True,
    prior_grad: bool | None = None,
    weight_decay: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-Jacobian product of :func:`langevin_update` w.r.t. ``(z, grad)``.

    ``None`` cotangents are treated as zeros. Returns ``(grad_z, grad_grad)``.
    """
    weight_decay = resolve_weight_decay(prior_grad, weight_decay)
    s = _drive(z, grad, weight_decay)
    gz = torch.zeros_like(s) if grad_z_new is None else grad_z_new.to(s.dtype)
    if precondition:
        c = bias_correction_factor(beta, step, bias_correction)
        v_new = beta * v + (1.0 - beta) * s * s
        q = torch.sqrt(v_new * c)
        p = 1.0 / (eps + q)
        safe_q = torch.where(q > 0, q, torch.ones_like(q))
        dq_ds = torch.where(q > 0, c * (1.0 - beta) * s / safe_q, torch.zeros_like(q))
        dp_ds = -p * p * dq_ds
        noise_scale = math.sqrt(2.0 * step_size * temperature)
        dz_ds = -step_size * (p + s * dp_ds) + noise_scale * noise * dp_ds / (2.0 * torch.sqrt(p))
        grad_s = gz * dz_ds
        if grad_v_new is not None:
            grad_s = grad_s + grad_v_new.to(s.dtype) * (2.0 * (1.0 - beta) * s)
    else:
        grad_s = -step_size * gz
    # ds/dz = weight_decay: the prior term is the only path from z to s.
    grad_z = gz + weight_decay * grad_s if weight_decay != 0 else gz.clone()
    return grad_z, grad_s
