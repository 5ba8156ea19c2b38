"""Small helpers shared by the modules of :mod:`lpc_fast.eval.reproduce`: JSON cleaning and number formats.

This module imports nothing from the rest of the package (it sits at the bottom of the import graph).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite", "fmt", "fmt_p", "json_clean"]


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite int or float (``None``, strings and NaN are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def json_clean(obj: Any) -> Any:
    """Strict-JSON copy of ``obj``: non-finite floats become None, tuples lists, tensors lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # tensors and numpy arrays / scalars
        return json_clean(obj.tolist())
    return obj


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a report: ``n/a`` for missing or non-finite values, ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}g}"


def fmt_p(p: Any) -> str:
    """A p-value for a report (``<1e-4`` below that)."""
    if p is None:
        return "n/a"
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"
