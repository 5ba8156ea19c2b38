"""Count the kernel ops a piece of eager code dispatches (a proxy for GPU kernel launches).

:class:`KernelOpCounter` is a ``TorchDispatchMode`` that records every ATen or custom op reaching the
dispatcher below autograd, except views (``t``, ``expand``, ``detach``, ``view``, ...) and pure
metadata queries: each remaining op is one kernel launch on a GPU (or one host round trip, for
``_local_scalar_dense``). Eager op counts are deterministic for a given code path and shapes, so
they can be pinned in tests where timings cannot.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["KernelOpCounter"]

# Ops that only read or reinterpret metadata (no kernel), beyond those whose schema marks a view.
_METADATA = {
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
    "aten::sym_storage_offset",
    "aten::is_same_size",
    "aten::is_contiguous",
    "aten::size",
    "aten::stride",
    "aten::dim",
    "aten::numel",
    "aten::is_nonzero",
    "aten::_unsafe_view",  # a view whose schema does not say so (reshape's result after a copy)
}


def _is_view_or_metadata(func: Any) -> bool:
    if getattr(func, "is_view", False):
        return True
    name = func._schema.name if hasattr(func, "_schema") else str(func)
    return name in _METADATA


class KernelOpCounter(TorchDispatchMode):
    """``with KernelOpCounter() as c: ...`` then ``c.total`` and ``c.counts`` (op name -> calls).

    Examples
    --------
    >>> with KernelOpCounter() as c:
    ...     _ = torch.ones(3) + 1
    >>> c.total
    2
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not _is_view_or_metadata(func):
            name = func._schema.name.split("::", 1)[-1] if hasattr(func, "_schema") else str(func)
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Kernel ops counted so far."""
        return sum(self.counts.values())

    def most_common(self, n: int = 12) -> list[tuple[str, int]]:
        """The ``n`` most frequent ops with their counts."""
        return self.counts.most_common(n)
