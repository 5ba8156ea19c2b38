"""lpc_fast: Langevin Predictive Coding with a fused Langevin update for PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
