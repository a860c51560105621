"""What the parts of the job-events function share: the job end being handled and what
its handling came to. Values only: each part returns what it did, none keeps state for
another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.config import Config, Pipeline
from retrain.logs import Logger
from retrain.notify import Notification
from retrain.ports import JobInfo, Stored, Trial

SUCCEEDED = "JOB_STATE_SUCCEEDED"
CANCELLED = "JOB_STATE_CANCELLED"
CHAMPION = "champion"


@dataclass(frozen=True)
class Outcome:
    """What one job end (or one tick's piece of work) came to, for logs and tests."""

    action: str  # ignored | duplicate | deployed | rejected | rolled_back | failed | cancelled
    #             | resubmitted | succeeded | promoted | waiting | error
    detail: str = ""
    run_id: str | None = None
    job_name: str | None = None


@dataclass(frozen=True)
class Handled:
    """A job end's outcome, what the run record keeps of it (its lineage) and the
    notification to send once the run record holds the outcome."""

    outcome: Outcome
    run_changes: Mapping[str, Any] = field(default_factory=dict)
    notification: Notification | None = None


@dataclass(frozen=True)
class JobEnd:
    """One terminal job of a run, as one delivery handles it."""

    config: Config
    pipeline: Pipeline
    job: JobInfo
    run_id: str
    record: Stored | None  # the run record, read when the handling began
    log: Logger
    trial: Trial | None = None  # a tuning job's best trial, whose model is judged

    @property
    def data_uri(self) -> str | None:
        return self.record.doc.get("data_uri") if self.record else None

    def outcome(self, action: str, detail: str = "", job_name: str | None = None) -> Outcome:
        return Outcome(action, detail, self.run_id, job_name or self.job.name)


def resource_id(name: str) -> str:
    """A Vertex model or endpoint id from a config name: lower case letters, digits and
    dashes, starting with a letter (fixed ids make `ensure` race-free)."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"r-{cleaned}"
    return cleaned[:63].rstrip("-")
