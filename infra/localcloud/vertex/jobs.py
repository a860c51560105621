"""CustomJobs: validation, the job state machine, the runtime hand-off and the
lifecycle log lines Vertex writes (a log router matches their exact text)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from localcloud.errors import LocalCloudError
from localcloud.logstore import LogEntry, LogStore, job_log_entry
from localcloud.vertex import filters, listing
from localcloud.vertex.operations import OperationService
from localcloud.vertex.runtime import JobRuntime, JobUpdate
from localcloud.vertex.state import CustomJobPb, State
from localcloud.vertex.wire import invalid, new_id, not_found, now, parse, precondition

S = aiplatform_v1.JobState
TERMINAL = frozenset(
    {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED, S.JOB_STATE_EXPIRED}
)
# States a job can only be in while a runtime drives it: lost when the server stops.
IN_FLIGHT = frozenset(
    {S.JOB_STATE_PENDING, S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLING}
)
STOPPED_MESSAGE = "localcloud was stopped while the job was running; submit it again"
RERUN_MESSAGE = "localcloud restarted while the job was in flight: running it again from the start"
RPC_CANCELLED = 1
RPC_INTERNAL = 13
RPC_ABORTED = 10
# What Vertex puts in a cancelled job's `error` (google.rpc.Code.CANCELLED).
CANCELLED_MESSAGE = "CANCELED"
# ListCustomJobs' documented filter fields (display_name, state, labels, create_time),
# plus the job's other times.
FILTER_FIELDS: dict[str, filters.Field] = {
    "display_name": filters.string(":"),
    "state": filters.enum(S.__members__),
    "labels": filters.LABELS,
    "create_time": filters.TIMESTAMP,
    "update_time": filters.TIMESTAMP,
    "start_time": filters.TIMESTAMP,
    "end_time": filters.TIMESTAMP,
}

_LABEL = re.compile(r"[a-z0-9_-]{0,63}")
_LIFECYCLE: dict[int, tuple[str, str]] = {
    S.JOB_STATE_PENDING: ("PENDING", "Waiting for job to be provisioned."),
    S.JOB_STATE_RUNNING: ("RUNNING", "Job is running."),
    S.JOB_STATE_SUCCEEDED: ("SUCCEEDED", "Job completed successfully."),
    S.JOB_STATE_FAILED: ("FAILED", "Job failed."),
    S.JOB_STATE_CANCELLED: ("CANCELLED", "Job was cancelled."),
}


def validate_labels(labels: Any, what: str) -> None:
    for key, value in labels.items():
        if not key or not _LABEL.fullmatch(key):
            raise invalid(
                f"{what}.labels: invalid key {key!r}: use 1-63 lowercase letters, digits, _ or -"
            )
        if not _LABEL.fullmatch(value):
            raise invalid(
                f"{what}.labels[{key!r}]: invalid value {value!r}: use at most 63 lowercase "
                "letters, digits, _ or -"
            )


def validate_custom_job(job: Any) -> None:
    if not job.display_name:
        raise invalid("CustomJob.display_name is required")
    validate_labels(job.labels, "CustomJob")
    pools = job.job_spec.worker_pool_specs
    if not pools:
        raise invalid("CustomJob.job_spec.worker_pool_specs must hold at least one worker pool")
    for index, pool in enumerate(pools):
        # Vertex accepts empty placeholder pools after the chief's (pool 0).
        if index > 0 and pool.ByteSize() == 0:
            continue
        where = f"CustomJob.job_spec.worker_pool_specs[{index}]"
        if not pool.machine_spec.machine_type:
            raise invalid(f"{where}.machine_spec.machine_type is required")
        if pool.replica_count < 1:
            raise invalid(f"{where}.replica_count must be at least 1, got {pool.replica_count}")
        package = pool.python_package_spec
        if package.executor_image_uri or package.package_uris or package.python_module:
            _validate_package(package, f"{where}.python_package_spec")
        elif not pool.container_spec.image_uri:
            raise invalid(
                f"{where}.container_spec.image_uri is required "
                "(or a python_package_spec with executor_image_uri)"
            )
    if pools[0].replica_count != 1:
        raise invalid(
            "CustomJob.job_spec.worker_pool_specs[0] is the chief and must have "
            f"replica_count 1, got {pools[0].replica_count}"
        )


def _validate_package(package: Any, where: str) -> None:
    if not package.executor_image_uri:
        raise invalid(f"{where}.executor_image_uri is required")
    if not package.package_uris:
        raise invalid(f"{where}.package_uris must name at least one package")
    for uri in package.package_uris:
        if not uri.startswith("gs://") or "/" not in uri.removeprefix("gs://").strip("/"):
            raise invalid(f"{where}.package_uris: {uri!r} is not a gs://bucket/object URI")
    if not package.python_module:
        raise invalid(f"{where}.python_module is required")


class JobService:
    def __init__(
        self,
        state: State,
        operations: OperationService,
        runtime: JobRuntime | None,
        logs: LogStore | None,
    ) -> None:
        self._state = state
        self._operations = operations
        self._runtime = runtime
        self._logs = logs
        self._accepting_updates = True

    # -- API -------------------------------------------------------------------------

    def create(self, project: str, location: str, body: Any) -> Any:
        job = parse(body, CustomJobPb(), "CustomJob")
        validate_custom_job(job)
        with self._state.lock:
            job_id = new_id(self._state.jobs)
            # Output-only fields are the server's, whatever the request held.
            for output_only in ("state", "error", "start_time", "end_time", "web_access_uris"):
                job.ClearField(output_only)
            job.name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
            stamp = now()
            job.create_time.CopyFrom(stamp)
            job.update_time.CopyFrom(stamp)
            job.state = S.JOB_STATE_PENDING
            self._state.jobs[job_id] = job
            self._state.save()
            snapshot = _copy(job)
        self._log_transition(project, job_id, S.JOB_STATE_PENDING, None)
        self._submit(project, job_id, snapshot)
        return self.get(project, location, job_id)

    def _submit(self, project: str, job_id: str, snapshot: Any) -> None:
        if self._runtime is None:
            return
        try:
            self._runtime.submit(
                job_id,
                aiplatform_v1.CustomJob.deserialize(snapshot.SerializeToString()),
                self._updater(project, job_id),
            )
        except LocalCloudError as err:  # the runtime itself is unusable (e.g. closed)
            self._apply(project, job_id, JobUpdate(S(S.JOB_STATE_FAILED), str(err)))

    def get(self, project: str, location: str, job_id: str) -> Any:
        with self._state.lock:
            return _copy(self._find(project, location, job_id))

    def list(self, project: str, location: str, query: dict[str, str]) -> Any:
        with self._state.lock:
            jobs = [
                _copy(job)
                for job in self._state.jobs.values()
                if listing.in_location(job.name, project, location)
            ]
        found = listing.select(jobs, query, FILTER_FIELDS, _job_field)
        # ListCustomJobsRequest has no order_by: the SDK orders jobs on the client.
        return listing.respond(found, query, aiplatform_v1.ListCustomJobsResponse, "custom_jobs")

    def cancel(self, project: str, location: str, job_id: str) -> None:
        with self._state.lock:
            job = self._find(project, location, job_id)
            if job.state in TERMINAL:
                raise precondition(
                    f"CustomJob {job.name} is already {S(job.state).name} and cannot be cancelled"
                )
            if job.state == S.JOB_STATE_CANCELLING:
                return
            if self._runtime is not None:
                set_job_state(job, S.JOB_STATE_CANCELLING, None)
                self._state.save()
        if self._runtime is not None:
            # The runtime reports CANCELLED (or an earlier end) through on_update.
            self._runtime.cancel(job_id)
            return
        self._apply(project, job_id, JobUpdate(state=S(S.JOB_STATE_CANCELLED)))

    def delete(self, project: str, location: str, job_id: str) -> operations_pb2.Operation:
        with self._state.lock:
            job = self._find(project, location, job_id)
            if job.state not in TERMINAL:
                raise precondition(
                    f"CustomJob {job.name} is {S(job.state).name}: cancel it before deleting it"
                )
            del self._state.jobs[job_id]
            self._state.save()
        return self._operations.finish(
            job.name, aiplatform_v1.DeleteOperationMetadata.pb()(), empty_pb2.Empty()
        )

    # -- runtime side ----------------------------------------------------------------

    def recover(self) -> None:
        """After a restart (`down`/`up`, or localcloud killed) no runtime drives the jobs
        that were in flight. Each is run again from the start under the same name, as
        Vertex restarts a job whose VM was lost: the job still ends exactly once. A job
        being cancelled ends CANCELLED; without a runtime the jobs fail."""
        ended: list[tuple[str, str, int, str | None]] = []
        rerun: list[tuple[str, str, Any]] = []
        with self._state.lock:
            for job_id, job in self._state.jobs.items():
                if job.state not in IN_FLIGHT:
                    continue
                project = _project_of(job.name)
                if job.state == S.JOB_STATE_CANCELLING:
                    set_job_state(job, S.JOB_STATE_CANCELLED, None)
                    ended.append((project, job_id, S.JOB_STATE_CANCELLED, None))
                elif self._runtime is None:
                    set_job_state(job, S.JOB_STATE_FAILED, STOPPED_MESSAGE, code=RPC_ABORTED)
                    ended.append((project, job_id, S.JOB_STATE_FAILED, STOPPED_MESSAGE))
                else:
                    set_job_state(job, S.JOB_STATE_PENDING, None)
                    rerun.append((project, job_id, _copy(job)))
            if ended or rerun:
                self._state.save()
        for project, job_id, state, message in ended:
            self._log_transition(project, job_id, state, message)
        for project, job_id, snapshot in rerun:
            if self._logs is not None:
                self._logs.append(
                    _service_line(project, job_id, RERUN_MESSAGE, "WARNING", "PENDING")
                )
            self._log_transition(project, job_id, S.JOB_STATE_PENDING, None)
            self._submit(project, job_id, snapshot)

    def stop_accepting_updates(self) -> None:
        # Once the server stops, the runtime's reports (processes killed on close) are
        # not the jobs' real ends: the next start marks them as stopped instead.
        self._accepting_updates = False

    def _updater(self, project: str, job_id: str) -> Callable[[JobUpdate], None]:
        def on_update(update: JobUpdate) -> None:
            if self._accepting_updates:
                self._apply(project, job_id, update)

        return on_update

    def _apply(self, project: str, job_id: str, update: JobUpdate) -> None:
        with self._state.lock:
            job = self._state.jobs.get(job_id)
            if job is None or job.state in TERMINAL or job.state == update.state:
                return
            set_job_state(job, update.state, update.error_message)
            self._state.save()
        # Logged outside the lock: a log listener may call back into this server.
        self._log_transition(project, job_id, update.state, update.error_message)

    def _log_transition(
        self, project: str, job_id: str, state: int, error_message: str | None
    ) -> None:
        if self._logs is None or state not in _LIFECYCLE:
            return
        label, message = _LIFECYCLE[state]
        if state == S.JOB_STATE_FAILED and error_message:
            self._logs.append(
                _service_line(
                    project, job_id, f"Job failed with error: {error_message}", "ERROR", label
                )
            )
        self._logs.append(_service_line(project, job_id, message, "INFO", label))

    def _find(self, project: str, location: str, job_id: str) -> Any:
        job = self._state.jobs.get(job_id)
        if job is None or not listing.in_location(job.name, project, location):
            raise not_found(
                f"CustomJob projects/{project}/locations/{location}/customJobs/{job_id} not found"
            )
        return job


def set_job_state(
    job: Any, state: int, error_message: str | None, code: int = RPC_INTERNAL
) -> None:
    """Move a CustomJob or HyperparameterTuningJob to `state`, with the times and the
    `error` Vertex sets on the way."""
    stamp = now()
    job.state = state
    job.update_time.CopyFrom(stamp)
    if state == S.JOB_STATE_RUNNING and not job.HasField("start_time"):
        job.start_time.CopyFrom(stamp)
    if state in TERMINAL:
        job.end_time.CopyFrom(stamp)
    if state == S.JOB_STATE_FAILED:
        job.error.code = code
        job.error.message = error_message or "The job failed."
    if state == S.JOB_STATE_CANCELLED:
        # As documented for CancelCustomJob: the job keeps an `error` whose code is
        # google.rpc.Code.CANCELLED.
        job.error.code = RPC_CANCELLED
        job.error.message = CANCELLED_MESSAGE


def _service_line(
    project: str, job_id: str, message: str, severity: str, job_state: str
) -> LogEntry:
    return job_log_entry(
        project=project,
        job_id=job_id,
        task_name="service",
        message=message,
        severity=severity,
        labels={"ml.googleapis.com/job_state": job_state},
    )


def _copy(job: Any) -> Any:
    clone = CustomJobPb()
    clone.CopyFrom(job)
    return clone


def _job_field(job: Any, name: str) -> Any:
    if name == "state":
        return S(job.state).name
    return getattr(job, name)


def _project_of(name: str) -> str:
    return name.split("/")[1]
