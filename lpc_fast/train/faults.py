"""Numerical faults during training: non-finite chains and diverging energies.

:class:`NonFiniteError` and :class:`DivergenceError` are raised *before* the optimizer steps of the
failing training step, and :meth:`lpc_fast.train.Trainer.train_step` then rewinds the few pieces of
state the step had already advanced (data order, warm-start noise, Langevin noise position), so the
trainer is left exactly in its last good state and can be checkpointed as such. Keeping that state
costs nothing: model and optimizer are untouched until the checks pass, and the rest is a handful of
counters and one generator state.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["DivergenceError", "DivergenceGuard", "NonFiniteError", "TrainingFault"]


class TrainingFault(RuntimeError):
    """A numerical fault that stopped training; the trainer is left in its last good state.

    Attributes
    ----------
    step : int or None
        The 1-based training step that failed (the last good state is ``step - 1``).
    checkpoint : str or None
        Where the last good state was written (set by :func:`lpc_fast.train.run_training`).
    """

    def __init__(self, message: str, *, step: int | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint: str | None = None


class NonFiniteError(TrainingFault):
    """A chain's energy or gradient turned non-finite (``nonfinite_policy="raise"``).

    Attributes
    ----------
    inner_step : int or None
        The chain pass ``t`` (``0 .. T``; pass ``t`` evaluates the sample after ``t`` moves); ``None``
        when the fault was on another process.
    chains : list of int
        Indices in the global batch of the chains with non-finite values at that pass (those of
        the process that raised).
    count : int
        Non-finite values (energies plus gradient elements) at that pass.
    """

    def __init__(self, *, step: int | None, inner_step: int | None, chains: list[int], count: int) -> None:
        where = f"training step {step if step is not None else '?'}"
        if inner_step is None:
            text = f"non-finite energy or gradient on another process at {where}"
        else:
            shown = ", ".join(map(str, chains[:16])) + (", ..." if len(chains) > 16 else "")
            text = (
                f"non-finite energy or gradient at {where}, Langevin step {inner_step}: {count} non-finite "
                f"value(s) in {len(chains)} chain(s) (batch indices {shown})"
            )
        super().__init__(
            text + "; try a smaller --langevin-step-size or --precondition, "
            "or --nonfinite-policy skip|reset to carry on without those chains",
            step=step,
        )
        self.inner_step = inner_step
        self.chains = chains
        self.count = count


class DivergenceError(TrainingFault):
    """The batch energy exploded (non-finite, or far above its running median)."""


class DivergenceGuard:
    """Running median of the per-step batch energy, and the explosion test against it.

    Parameters
    ----------
    factor : float or None
        A step diverges when its energy ``E`` is non-finite or ``E - m > factor * max(|m|, 1)`` with
        ``m`` the median of the last ``window`` good steps; ``None`` checks finiteness only.
    window : int
        Steps in the running median.
    min_history : int
        Good steps needed before the median test applies (the first steps of a run are noisy; at most
        ``window``).
    """

    def __init__(self, factor: float | None, window: int, min_history: int = 5) -> None:
        self.factor = factor
        self.min_history = min(min_history, window)
        self.history: deque[float] = deque(maxlen=window)

    def median(self) -> float | None:
        """The running median (``None`` with too little history for the test)."""
        if len(self.history) < self.min_history:
            return None
        values = sorted(self.history)
        n = len(values)
        return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])

    def check(self, energy: float, *, step: int, step_size: float | None = None) -> None:
        """Raise :class:`DivergenceError` if ``energy`` diverged, else record it."""
        hint = (
            f"try a smaller --langevin-step-size (e.g. {step_size / 2:g}) or --precondition"
            if step_size is not None
            else "try a smaller --lr"
        )
        if not math.isfinite(energy):
            raise DivergenceError(
                f"training diverged at step {step}: the batch energy is {energy}; {hint}", step=step
            )
        m = self.median()
        if self.factor is not None and m is not None and energy - m > self.factor * max(abs(m), 1.0):
            raise DivergenceError(
                f"training diverged at step {step}: the batch energy {energy:.6g} exceeds its running "
                f"median {m:.6g} by more than --divergence-factor {self.factor:g} x max(|median|, 1); {hint}",
                step=step,
            )
        self.history.append(float(energy))

    def state_dict(self) -> dict[str, Any]:
        """The recorded energies (so a resumed run makes the same decisions)."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` output (``None``: an older checkpoint without a guard)."""
        self.history.clear()
        if state is not None:
            self.history.extend(float(e) for e in state["history"])
