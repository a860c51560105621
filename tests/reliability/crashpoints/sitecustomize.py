"""Loaded at interpreter start when this directory is on PYTHONPATH (the function
processes of the crash-point checks only): installs the crash point named in the
environment (see injector.py)."""

from __future__ import annotations

import injector

injector.install()
