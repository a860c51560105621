"""A tuning job's trials as the demo shows them: one row per trial (id, parameters, final
metric, state) and a mark on the trial the product chose. Pure: reads a
HyperparameterTuningJob already fetched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHOSEN_MARK = "<- chosen"


@dataclass(frozen=True)
class TrialRow:
    id: str
    parameters: dict[str, Any]  # parameter_id -> number or string
    metric: float | None  # the final measurement of the study's metric
    state: str
    reason: str = ""  # why an infeasible trial failed


def trial_rows(job: Any) -> list[TrialRow]:
    """The trials of an `aiplatform_v1.HyperparameterTuningJob`, in trial order."""
    metric_id = job.study_spec.metrics[0].metric_id if job.study_spec.metrics else ""
    rows = []
    for trial in job.trials:
        values = [m.value for m in trial.final_measurement.metrics if m.metric_id == metric_id]
        rows.append(
            TrialRow(
                id=trial.id,
                parameters={p.parameter_id: p.value for p in trial.parameters},
                metric=values[0] if values else None,
                state=trial.state.name,
                reason=trial.infeasible_reason,
            )
        )
    return sorted(rows, key=lambda r: (int(r.id) if r.id.isdigit() else 1 << 62, r.id))


def value_text(value: Any) -> str:
    """A parameter as people read it: whole numbers without a fraction, others to 4
    significant digits, strings as they are."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def table_lines(rows: Sequence[TrialRow], metric: str, chosen: str | None) -> list[str]:
    """An aligned text table, header first; the chosen trial is marked."""
    names = sorted({name for row in rows for name in row.parameters})
    header = ["trial", *names, metric, "state"]
    body = [
        [
            row.id,
            *(value_text(row.parameters.get(name, "-")) for name in names),
            f"{row.metric:.4f}" if row.metric is not None else "-",
            row.state,
        ]
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    lines = []
    for index, cells in enumerate([header, *body]):
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        row = rows[index - 1] if index else None
        if row is not None and row.id == chosen:
            line += f"  {CHOSEN_MARK}"
        elif row is not None and row.reason:
            line += f"  ({row.reason})"
        lines.append(line.rstrip())
    return lines
