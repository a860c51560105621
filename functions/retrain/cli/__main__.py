"""`python -m retrain.cli`: the `retrain` command without the console script."""

from __future__ import annotations

import sys

from retrain.cli import main

sys.exit(main())
