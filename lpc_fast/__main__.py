"""``python -m lpc_fast``: the ``lpc-fast`` command line."""

from __future__ import annotations

import sys

from lpc_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
