"""lpc_fast: Langevin Predictive Coding with a fused Langevin update for PyTorch.

Public entry points:

* :func:`langevin_step_` / :func:`langevin_step` - the fused Langevin update (in place / differentiable);
* :func:`langevin_step_foreach_` - the in-place update of a list of tensors in one launch;
* :func:`philox_normal` - the noise a step with ``(seed, offset)`` uses;
* :func:`backends`, :func:`use_backend` - which kernel implementation runs;
* :class:`LangevinSampler` - an Optimizer-shaped sampler over latent tensors.
"""

from __future__ import annotations

from typing import Any

from .dispatch import BackendUnavailableError, backends, describe_selection, use_backend
from .ops import (
    langevin_step,
    langevin_step_,
    langevin_step_foreach_,
    make_rng_state,
    philox_normal,
    philox_uint32,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "LangevinSampler",
    "__version__",
    "backends",
    "describe_selection",
    "langevin_step",
    "langevin_step_",
    "langevin_step_foreach_",
    "make_rng_state",
    "philox_normal",
    "philox_uint32",
    "use_backend",
]


def __getattr__(name: str) -> Any:
    # The sampler pulls in more of the package; import it on first use.
    if name == "LangevinSampler":
        from .sampler import LangevinSampler

        return LangevinSampler
    raise AttributeError(f"module 'lpc_fast' has no attribute {name!r}")
