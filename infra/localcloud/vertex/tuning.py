"""HyperparameterTuningJobs: the API (create, get, list, cancel, delete), the resources
(persisted as JSON under the state dir) and their lifecycle; study.py runs each job's
trials.

Trial states are Vertex's: SUCCEEDED, or INFEASIBLE with `infeasible_reason` for a trial
that failed or reported no metric (Trial.State has no FAILED). Reaching
`max_failed_trial_count` failed trials fails the job (0: only when every trial failed).
The tuning job writes the lifecycle lines a CustomJob writes, plus a line per trial."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format

from localcloud.errors import LocalCloudError
from localcloud.logstore import LogStore, job_log_entry
from localcloud.vertex import listing, suggest
from localcloud.vertex.jobs import (
    FILTER_FIELDS,
    IN_FLIGHT,
    RERUN_MESSAGE,
    RPC_ABORTED,
    STOPPED_MESSAGE,
    TERMINAL,
    set_job_state,
    validate_custom_job,
    validate_labels,
)
from localcloud.vertex.operations import OperationService
from localcloud.vertex.runtime import JobRuntime
from localcloud.vertex.state import CustomJobPb
from localcloud.vertex.study import Study, end_trial
from localcloud.vertex.wire import ApiError, invalid, new_id, not_found, now, parse, precondition

S = aiplatform_v1.JobState
TuningJobPb: Any = aiplatform_v1.HyperparameterTuningJob.pb()
TrialPb: Any = aiplatform_v1.Trial.pb()
T = aiplatform_v1.Trial.State
STATE_FILE = "vertex-tuning.json"
# The texts a CustomJob's service lines carry (jobs.py): a tuning job's end is routed by
# the same log sink filter.
_LIFECYCLE: dict[int, tuple[str, str]] = {
    S.JOB_STATE_PENDING: ("PENDING", "Waiting for job to be provisioned."),
    S.JOB_STATE_RUNNING: ("RUNNING", "Job is running."),
    S.JOB_STATE_SUCCEEDED: ("SUCCEEDED", "Job completed successfully."),
    S.JOB_STATE_FAILED: ("FAILED", "Job failed."),
    S.JOB_STATE_CANCELLED: ("CANCELLED", "Job was cancelled."),
}


def validate_tuning_job(job: Any) -> None:
    if not job.display_name:
        raise invalid("HyperparameterTuningJob.display_name is required")
    validate_labels(job.labels, "HyperparameterTuningJob")
    for field in ("max_trial_count", "parallel_trial_count"):
        if getattr(job, field) < 1:
            raise invalid(f"HyperparameterTuningJob.{field} must be at least 1")
    if job.max_failed_trial_count < 0:
        raise invalid("HyperparameterTuningJob.max_failed_trial_count must not be negative")
    suggest.validate(job.study_spec)
    # The trial job is a CustomJob's spec: the same rules, named as this resource's field.
    trial_job = CustomJobPb(display_name=job.display_name)
    trial_job.job_spec.CopyFrom(job.trial_job_spec)
    try:
        validate_custom_job(trial_job)
    except ApiError as err:
        message = err.message.replace(
            "CustomJob.job_spec", "HyperparameterTuningJob.trial_job_spec"
        )
        raise invalid(message) from err


class TuningService:
    """The resources (persisted as JSON under the state dir) and their studies."""

    def __init__(
        self,
        state_dir: Path,
        operations: OperationService,
        runtime: JobRuntime | None,
        logs: LogStore | None,
    ) -> None:
        self._path = Path(state_dir) / STATE_FILE
        self._work = Path(state_dir) / "tuning"
        self._operations = operations
        self._runtime = runtime
        self._logs = logs
        self._lock = threading.RLock()
        self._jobs: dict[str, Any] = _load(self._path)
        self._studies: dict[str, Study] = {}
        self._accepting_updates = True

    # -- API -------------------------------------------------------------------------

    def create(self, project: str, location: str, body: Any) -> Any:
        job = parse(body, TuningJobPb(), "HyperparameterTuningJob")
        validate_tuning_job(job)
        with self._lock:
            job_id = new_id(self._jobs)
            for output_only in ("state", "error", "start_time", "end_time", "trials"):
                job.ClearField(output_only)
            job.name = f"projects/{project}/locations/{location}/hyperparameterTuningJobs/{job_id}"
            job.create_time.CopyFrom(now())
            job.update_time.CopyFrom(job.create_time)
            job.state = S.JOB_STATE_PENDING
            self._jobs[job_id] = job
            self._save()
            snapshot = _copy(job)
        self._log_transition(project, job_id, S.JOB_STATE_PENDING, None)
        if self._runtime is not None:
            study = Study(self, project, job_id, snapshot, self._runtime)
            with self._lock:
                self._studies[job_id] = study
            study.start()
        return self.get(project, location, job_id)

    def get(self, project: str, location: str, job_id: str) -> Any:
        with self._lock:
            return _copy(self._find(project, location, job_id))

    def list(self, project: str, location: str, query: dict[str, str]) -> Any:
        with self._lock:
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if listing.in_location(job.name, project, location)
            ]
        found = listing.select(jobs, query, FILTER_FIELDS, _job_field)
        return listing.respond(
            found,
            query,
            aiplatform_v1.ListHyperparameterTuningJobsResponse,
            "hyperparameter_tuning_jobs",
        )

    def cancel(self, project: str, location: str, job_id: str) -> None:
        with self._lock:
            job = self._find(project, location, job_id)
            if job.state in TERMINAL:
                raise precondition(
                    f"HyperparameterTuningJob {job.name} is already {S(job.state).name} "
                    "and cannot be cancelled"
                )
            if job.state == S.JOB_STATE_CANCELLING:
                return
            study = self._studies.get(job_id)
            if study is not None:
                set_job_state(job, S.JOB_STATE_CANCELLING, None)
                self._save()
        if study is not None:
            study.cancel()  # the study reports CANCELLED once its trials stopped
            return
        self.finish(project, job_id, S.JOB_STATE_CANCELLED, None)

    def delete(self, project: str, location: str, job_id: str) -> operations_pb2.Operation:
        with self._lock:
            job = self._find(project, location, job_id)
            if job.state not in TERMINAL:
                raise precondition(
                    f"HyperparameterTuningJob {job.name} is {S(job.state).name}: "
                    "cancel it before deleting it"
                )
            del self._jobs[job_id]
            self._save()
        return self._operations.finish(
            job.name, aiplatform_v1.DeleteOperationMetadata.pb()(), empty_pb2.Empty()
        )

    # -- lifecycle -------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart (`down`/`up`, or localcloud killed) no study drives the jobs
        that were in flight. Each runs again from the start under the same name, as a
        CustomJob does (its trials, which the old localcloud's stop ended, start over):
        the job still ends exactly once. A job being cancelled ends CANCELLED; without a
        runtime the jobs fail."""
        ended: list[tuple[str, str, int, str | None]] = []
        rerun: list[tuple[str, str, Any]] = []
        with self._lock:
            for job_id, job in self._jobs.items():
                if job.state not in IN_FLIGHT:
                    continue
                project = job.name.split("/")[1]
                if job.state == S.JOB_STATE_CANCELLING or self._runtime is None:
                    for trial in job.trials:
                        if trial.state in (T.REQUESTED, T.ACTIVE, T.STOPPING):
                            end_trial(trial, T.INFEASIBLE, STOPPED_MESSAGE)
                    if job.state == S.JOB_STATE_CANCELLING:
                        set_job_state(job, S.JOB_STATE_CANCELLED, None)
                        ended.append((project, job_id, S.JOB_STATE_CANCELLED, None))
                    else:
                        set_job_state(job, S.JOB_STATE_FAILED, STOPPED_MESSAGE, RPC_ABORTED)
                        ended.append((project, job_id, S.JOB_STATE_FAILED, STOPPED_MESSAGE))
                    continue
                job.ClearField("trials")
                set_job_state(job, S.JOB_STATE_PENDING, None)
                rerun.append((project, job_id, _copy(job)))
            if ended or rerun:
                self._save()
        for project, job_id, state, message in ended:
            self._log_transition(project, job_id, state, message)
        for project, job_id, snapshot in rerun:
            self.log(project, job_id, RERUN_MESSAGE, "WARNING")
            self._log_transition(project, job_id, S.JOB_STATE_PENDING, None)
            assert self._runtime is not None
            study = Study(self, project, job_id, snapshot, self._runtime)
            with self._lock:
                self._studies[job_id] = study
            study.start()

    def stop_accepting_updates(self) -> None:
        # Once the server stops, its trials' ends (processes killed on close) are not the
        # jobs' real ends: the next start marks the jobs as stopped instead.
        self._accepting_updates = False

    @property
    def accepting_updates(self) -> bool:
        return self._accepting_updates

    # -- the study's side --------------------------------------------------------------

    def work_dir(self, job_id: str, trial_id: str) -> Path:
        path = self._work / job_id / "trials" / trial_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def update(self, job_id: str, change: Callable[[Any], None]) -> None:
        """Apply `change` to the stored job (its trials), unless the server stopped."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not self._accepting_updates:
                return
            change(job)
            job.update_time.CopyFrom(now())
            self._save()

    def finish(self, project: str, job_id: str, state: int, error: str | None) -> None:
        with self._lock:
            self._studies.pop(job_id, None)
            job = self._jobs.get(job_id)
            if job is None or job.state in TERMINAL or not self._accepting_updates:
                return
            set_job_state(job, state, error)
            self._save()
        self._log_transition(project, job_id, state, error)

    def running(self, project: str, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_PENDING or not self._accepting_updates:
                return
            set_job_state(job, S.JOB_STATE_RUNNING, None)
            self._save()
        self._log_transition(project, job_id, S.JOB_STATE_RUNNING, None)

    def log(self, project: str, job_id: str, message: str, severity: str = "INFO") -> None:
        if self._logs is not None and self._accepting_updates:
            self._logs.append(
                job_log_entry(
                    project=project,
                    job_id=job_id,
                    task_name="service",
                    message=message,
                    severity=severity,
                )
            )

    # -- helpers ---------------------------------------------------------------------

    def _log_transition(self, project: str, job_id: str, state: int, error: str | None) -> None:
        if self._logs is None or state not in _LIFECYCLE:
            return
        label, message = _LIFECYCLE[state]
        lines = [(message, "INFO")]
        if state == S.JOB_STATE_FAILED and error:
            lines.insert(0, (f"Job failed with error: {error}", "ERROR"))
        for text, severity in lines:
            self._logs.append(
                job_log_entry(
                    project=project,
                    job_id=job_id,
                    task_name="service",
                    message=text,
                    severity=severity,
                    labels={"ml.googleapis.com/job_state": label},
                )
            )

    def _find(self, project: str, location: str, job_id: str) -> Any:
        job = self._jobs.get(job_id)
        if job is None or not listing.in_location(job.name, project, location):
            raise not_found(
                f"HyperparameterTuningJob projects/{project}/locations/{location}"
                f"/hyperparameterTuningJobs/{job_id} not found"
            )
        return job

    def _save(self) -> None:
        document = {k: json_format.MessageToDict(v) for k, v in self._jobs.items()}
        _write_atomically(self._path, json.dumps(document, indent=1, sort_keys=True))


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: json_format.ParseDict(v, TuningJobPb()) for k, v in data.items()}
    except (OSError, ValueError, json_format.ParseError) as err:
        raise LocalCloudError(
            f"cannot read the tuning jobs {path}: {err}; move it away to start empty"
        ) from err


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or a crash) must never see half a document: write aside, then rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _copy(job: Any) -> Any:
    clone = TuningJobPb()
    clone.CopyFrom(job)
    return clone


def _job_field(job: Any, name: str) -> Any:
    if name == "state":
        return S(job.state).name
    return getattr(job, name)
