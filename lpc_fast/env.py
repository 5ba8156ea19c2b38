"""``python -m lpc_fast.env``: versions, devices and the backend availability table."""

from __future__ import annotations

import os
import platform
import sys


def report() -> str:
    """A human-readable environment report (versions, devices, backends with reasons)."""
    import torch

    import lpc_fast

    lines = [
        f"lpc_fast   {lpc_fast.__version__}",
        f"python     {sys.version.split()[0]} ({platform.machine()})",
        f"torch      {torch.__version__} (CUDA {torch.version.cuda})",
    ]
    try:
        import triton

        lines.append(f"triton     {triton.__version__}")
    except ImportError:
        lines.append("triton     not installed")
    lines.append(f"threads    {torch.get_num_threads()}")
    if torch.cuda.is_available():
        lines.append(f"gpu        {torch.cuda.get_device_name()}")
    else:
        lines.append("gpu        none visible")
    lines.append(
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!s} "
        f"LPC_FAST_BACKEND={os.environ.get('LPC_FAST_BACKEND', '')!s}"
    )
    lines.append("")
    lines.append(f"{'backend':<10} {'available':<10} reason")
    for row in lpc_fast.backends():
        lines.append(f"{row.name:<10} {'yes' if row.available else 'no':<10} {row.reason}")
    lines.append("")
    lines.append(lpc_fast.describe_selection("cpu"))
    if torch.cuda.is_available():
        lines.append(lpc_fast.describe_selection("cuda"))
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
