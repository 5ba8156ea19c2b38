"""``python -m lpc_fast.eval.reproduce``: the same as ``lpc-fast reproduce``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
