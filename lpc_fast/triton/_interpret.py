"""Whether Triton runs under its interpreter (a leaf module: no Triton, no lpc_fast imports)."""

from __future__ import annotations

import os

__all__ = ["interpreter_enabled"]


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` is set (Triton reads it when it is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
