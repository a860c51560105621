"""`python -m localcloud.cli`: an alias of the `retrain` command (`retrain.cli`)."""

from __future__ import annotations

import sys

from retrain.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
