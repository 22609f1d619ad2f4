"""``python -m attnlab``: the ``attnlab`` command (what ``torchrun -m attnlab train ...`` runs on each rank)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
