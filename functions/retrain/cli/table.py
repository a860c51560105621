"""The runs table on the terminal (rich, imported only when a table is drawn)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from retrain.cli.runs import list_runs

COLUMNS = (
    "pipeline",
    "run",
    "trigger",
    "created",
    "job",
    "state",
    "metric",
    "judged",
    "version",
    "outcome",
)


def runs_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="runs")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")  # wrapped, never cut to "…"
    for row in rows:
        table.add_row(*(row[c] for c in COLUMNS))
    return table


def print_runs(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped or captured output has no width to fit: print whole cells on one line.
        console = Console(width=250)
    console.print(runs_table(rows) if rows else "no runs yet")


def watch_runs(env: Mapping[str, str], pipeline: str | None, interval_s: float = 2.0) -> None:
    """The runs table, redrawn in place until Ctrl-C: a live view of runs as they go from
    claimed to submitted, running, and their outcome."""
    from rich.live import Live

    with Live(runs_table(list_runs(env, pipeline)), refresh_per_second=4) as live:
        while True:
            time.sleep(interval_s)  # the refresh period of a live view, not a wait
            live.update(runs_table(list_runs(env, pipeline)))
