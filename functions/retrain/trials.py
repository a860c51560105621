"""A finished HyperparameterTuningJob's trials, judged: which one is best, how many
failed, and how people see them. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from retrain.ports import JobInfo, Objective, Trial

SUCCEEDED = "SUCCEEDED"
BEST_SHOWN = 3  # trials listed in a notification
_UNFINISHED = frozenset({"REQUESTED", "ACTIVE", "STOPPING", "STATE_UNSPECIFIED"})


def usable(trial: Trial) -> bool:
    """A trial that succeeded and reported a finite value of the study's metric."""
    return trial.state == SUCCEEDED and trial.metric is not None and math.isfinite(trial.metric)


def ranked(trials: Sequence[Trial], goal: str) -> list[Trial]:
    """The usable trials, best first; ties go to the earlier trial (lower id)."""
    sign = -1.0 if goal == "maximize" else 1.0
    return sorted(
        (t for t in trials if usable(t)),
        key=lambda t: (sign * (t.metric or 0.0), _id_order(t.id)),
    )


def best(job: JobInfo) -> Trial | None:
    """The best usable trial by the study's metric and goal; None when none succeeded."""
    if job.objective is None:
        return None
    found = ranked(job.trials, job.objective.goal)
    return found[0] if found else None


def failures(trials: Sequence[Trial]) -> list[Trial]:
    """Trials that ended without a usable measurement: failed (Vertex reports those as
    INFEASIBLE, with a reason) or succeeded without reporting the metric."""
    return [t for t in trials if t.state not in _UNFINISHED and not usable(t)]


def model_dir(base_output_directory: str, trial: Trial) -> str:
    """AIP_MODEL_DIR of one trial: `<base_output_directory>/<trial_id>/model/`."""
    return f"{base_output_directory.rstrip('/')}/{trial.id}/model/"


def parameters_text(trial: Trial) -> str:
    return ", ".join(f"{name}={_value(value)}" for name, value in sorted(trial.parameters.items()))


def summary(job: JobInfo, shown: int = BEST_SHOWN) -> tuple[str, ...]:
    """One line per trial people should see: the best few with their parameters and metric,
    then how many failed (with the first failures' reasons)."""
    objective = job.objective or Objective("metric", "maximize")
    lines = [
        f"trial {t.id}: {objective.metric}={t.metric:g} ({parameters_text(t)})"
        for t in ranked(job.trials, objective.goal)[:shown]
    ]
    bad = failures(job.trials)
    if bad:
        lines.append(f"{len(bad)} of {len(job.trials)} trials failed")
        lines += [f"trial {t.id} failed: {t.error or t.state}" for t in bad[:shown]]
    return tuple(lines)


def errors(job: JobInfo, shown: int = BEST_SHOWN) -> str | None:
    """The failed trials' reasons in one message (for a tuning job that failed)."""
    bad = failures(job.trials)
    if not bad:
        return None
    parts = [f"trial {t.id}: {t.error or t.state}" for t in bad[:shown]]
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"{len(bad)} of {len(job.trials)} trials failed: " + "; ".join(parts) + more


def _id_order(trial_id: str) -> tuple[int, str]:
    return (int(trial_id), "") if trial_id.isdigit() else (1 << 62, trial_id)


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)
