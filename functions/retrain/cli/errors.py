"""The one error the command line reports: printed as `error: ...`, exit status 1."""

from __future__ import annotations


class CliError(Exception):
    """A command cannot do what was asked; the message says why, for a person."""
