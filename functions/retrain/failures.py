"""A job that did not succeed: a failure report with the tail of its log, a cancellation
report, or, when Vertex ran out of machines and the pipeline names a fallback machine not
yet tried, the run resubmitted there (through the trigger's submission path)."""

from __future__ import annotations

from collections.abc import Callable

from retrain import notify
from retrain.errors import PermanentError, TransientError
from retrain.jobend import CANCELLED, SUCCEEDED, Handled, JobEnd
from retrain.jobspec import RUN_LABEL, label_value
from retrain.ledger import plan_from_record
from retrain.notifying import Announcer
from retrain.ports import JobInfo, JobLogs, TrainingService
from retrain.submission import resubmit_run

ATTEMPT_LABEL = "retrain-attempt"  # 1, 2, … on jobs resubmitted with a fallback machine
LOG_TAIL_LINES = 20
# Vertex's words for a zone or region without the requested machines (a stockout).
_STOCKOUT_MARKERS = (
    "resource_exhausted",
    "resources are insufficient",
    "does not have enough resources",
    "zone_resource_pool_exhausted",
    "stockout",
    "insufficient capacity",
)


def is_stockout(error_message: str | None) -> bool:
    text = (error_message or "").lower()
    return any(marker in text for marker in _STOCKOUT_MARKERS)


def fallback_attempt(end: JobEnd) -> int | None:
    """The index of the fallback machine a failed job's run goes on with (out of capacity,
    a fallback machine left), or None."""
    if end.job.state in (SUCCEEDED, CANCELLED):
        return None
    attempt = int(end.job.labels.get(ATTEMPT_LABEL, "0") or 0)
    if is_stockout(end.job.error_message) and attempt < len(end.pipeline.training.fallback):
        return attempt
    return None


class FailureReports:
    def __init__(self, job_logs: Callable[[], JobLogs], announcer: Announcer):
        # Built on use: only a failure report reads the logs.
        self._job_logs = job_logs
        self._announcer = announcer

    def ended_badly(self, end: JobEnd, kind: str, error: str | None = None) -> Handled:
        error = error or end.job.error_message
        tail: list[str] = []
        if kind == notify.FAILED and notify.wanted(end.pipeline.notify, kind):
            tail = self._log_tail(end)
        message = self._announcer.about(end, kind, error=error, log_tail=tuple(tail))
        return Handled(end.outcome(kind, error or end.job.state), notification=message)

    def _log_tail(self, end: JobEnd) -> list[str]:
        # Best effort: a notification without its log tail beats no notification.
        try:
            return self._job_logs().tail(end.job.job_id, LOG_TAIL_LINES)
        except (TransientError, PermanentError) as err:
            end.log.warning("log tail unavailable", error=str(err))
            return [f"(log tail unavailable: {err})"]

    def fall_back(self, end: JobEnd, attempt: int, training: TrainingService) -> Handled:
        """Resubmit the run on fallback machine `attempt` (a takeover finds the job the
        first delivery created, by its labels)."""
        if end.record is None:
            end.log.warning("no run record: cannot resubmit on a fallback machine")
            return self.ended_badly(end, notify.FAILED)
        machine = end.pipeline.training.fallback[attempt]
        labels = {RUN_LABEL: label_value(end.run_id), ATTEMPT_LABEL: str(attempt + 1)}
        plan = plan_from_record(end.record.doc)
        job: JobInfo = resubmit_run(training, end.pipeline, plan,
                                    end.config.defaults.output_uri, machine=machine,
                                    labels=labels)  # fmt: skip
        detail = f"out of capacity; resubmitted on {machine.machine_type}"
        if machine.accelerator_type:
            detail += f" with {machine.accelerator_count} x {machine.accelerator_type}"
        end.log.warning(detail, new_job=job.name, error=end.job.error_message)
        changes = {"job_name": job.name, "fallback_attempt": attempt + 1}
        return Handled(end.outcome("resubmitted", detail, job.name), changes)
