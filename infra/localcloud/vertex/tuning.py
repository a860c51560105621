"""HyperparameterTuningJobs: the API (create, get, list, cancel, delete) and the study that
runs each job's trials as real processes through the job runtime.

Each trial is the job's `trial_job_spec` with Vertex's per-trial contract: the trial's
parameters appended to every container's args as `--<parameter_id>=<value>`,
`base_output_directory` `<base>/<trial_id>` (so AIP_MODEL_DIR is `<base>/<trial_id>/model/`),
CLOUD_ML_TRIAL_ID, and CLOUD_ML_HP_METRIC_FILE naming a file in the trial's local work dir
where the trainer (cloudml-hypertune) appends JSON lines; the last line with the study's
metric is the trial's final measurement. At most `parallel_trial_count` trials run at once.

Trial states are Vertex's: SUCCEEDED, or INFEASIBLE with `infeasible_reason` for a trial
that failed or reported no metric (Trial.State has no FAILED). Reaching
`max_failed_trial_count` failed trials fails the job (0: only when every trial failed).
The tuning job writes the lifecycle lines a CustomJob writes, plus a line per trial."""

from __future__ import annotations

import json
import os
import queue
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
    CANCELLED_MESSAGE,
    FILTER_FIELDS,
    IN_FLIGHT,
    RPC_ABORTED,
    RPC_CANCELLED,
    RPC_INTERNAL,
    STOPPED_MESSAGE,
    TERMINAL,
    validate_custom_job,
    validate_labels,
)
from localcloud.vertex.operations import OperationService
from localcloud.vertex.runtime import JobRuntime, JobUpdate
from localcloud.vertex.state import CustomJobPb
from localcloud.vertex.wire import ApiError, invalid, new_id, not_found, now, parse, precondition

S = aiplatform_v1.JobState
TuningJobPb: Any = aiplatform_v1.HyperparameterTuningJob.pb()
TrialPb: Any = aiplatform_v1.Trial.pb()
T = aiplatform_v1.Trial.State
STATE_FILE = "vertex-tuning.json"
METRIC_FILE = "hypertune-metrics.jsonl"
MAX_MEASUREMENTS = 1000  # kept per trial; the final one is what counts
_POLL_SECONDS = 0.2
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
        self._studies: dict[str, _Study] = {}
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
            study = _Study(self, project, job_id, snapshot, self._runtime)
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
                self._set_state(job, S.JOB_STATE_CANCELLING, None)
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
        """After a restart no study drives the jobs that were in flight: fail them."""
        failed = []
        with self._lock:
            for job_id, job in self._jobs.items():
                if job.state in IN_FLIGHT:
                    for trial in job.trials:
                        if trial.state in (T.REQUESTED, T.ACTIVE, T.STOPPING):
                            _end_trial(trial, T.INFEASIBLE, STOPPED_MESSAGE)
                    self._set_state(job, S.JOB_STATE_FAILED, STOPPED_MESSAGE, RPC_ABORTED)
                    failed.append((job.name.split("/")[1], job_id))
            if failed:
                self._save()
        for project, job_id in failed:
            self._log_transition(project, job_id, S.JOB_STATE_FAILED, STOPPED_MESSAGE)

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
            self._set_state(job, state, error)
            self._save()
        self._log_transition(project, job_id, state, error)

    def running(self, project: str, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_PENDING or not self._accepting_updates:
                return
            self._set_state(job, S.JOB_STATE_RUNNING, None)
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

    def _set_state(self, job: Any, state: int, error: str | None, code: int = RPC_INTERNAL) -> None:
        stamp = now()
        job.state = state
        job.update_time.CopyFrom(stamp)
        if state == S.JOB_STATE_RUNNING and not job.HasField("start_time"):
            job.start_time.CopyFrom(stamp)
        if state in TERMINAL:
            job.end_time.CopyFrom(stamp)
        if state == S.JOB_STATE_FAILED:
            job.error.code = code
            job.error.message = error or "The job failed."
        if state == S.JOB_STATE_CANCELLED:
            job.error.code = RPC_CANCELLED
            job.error.message = CANCELLED_MESSAGE

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


class _Study:
    """One tuning job's search: suggests parameters, runs trials through the runtime,
    reads their metrics, and ends the job. One thread per job."""

    def __init__(
        self, service: TuningService, project: str, job_id: str, job: Any, runtime: JobRuntime
    ) -> None:
        self._service, self._project, self._job_id = service, project, job_id
        self._job, self._runtime = job, runtime
        self._ended: queue.Queue[tuple[str, JobUpdate]] = queue.Queue()
        self._active: dict[str, str] = {}  # trial id -> the runtime's job id
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"tuning-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()
        self._stop_active()

    def _stop_active(self) -> None:
        with self._lock:
            running = list(self._active.values())
        for runtime_id in running:
            self._runtime.cancel(runtime_id)

    # -- the search, on the study's thread

    def _run(self) -> None:
        try:
            state, error = self._search()
        except Exception as err:  # a bug must end the job, not leave it RUNNING
            self._stop_active()
            state, error = S.JOB_STATE_FAILED, f"localcloud could not run the study: {err}"
        self._service.finish(self._project, self._job_id, state, error)

    def _search(self) -> tuple[int, str | None]:
        job = self._job
        metric = job.study_spec.metrics[0].metric_id
        suggester, warning = suggest.make(job.study_spec, seed=int(self._job_id) % 2**32)
        self._service.running(self._project, self._job_id)
        if warning:
            self._service.log(self._project, self._job_id, warning, "WARNING")
        self._service.log(
            self._project,
            self._job_id,
            f"Searching with {suggester.name}: up to {job.max_trial_count} trials, "
            f"{job.parallel_trial_count} at a time, optimising {metric}.",
        )
        limit = job.max_failed_trial_count
        started = failed = succeeded = 0
        exhausted = False
        stop_reason: str | None = None
        while True:
            while (
                not exhausted
                and stop_reason is None
                and not self._cancelled.is_set()
                and len(self._active) < job.parallel_trial_count
                and started < job.max_trial_count
            ):
                trial_id = str(started + 1)
                values = suggester.suggest(trial_id)
                if values is None:
                    exhausted = True
                    break
                started += 1
                self._start_trial(trial_id, values)
            if not self._active:
                break
            trial_id, update = self._next_end()
            if update.state == S.JOB_STATE_RUNNING:
                continue
            value, reason = self._finish_trial(trial_id, update, metric, stop_reason)
            suggester.tell(trial_id, value)
            if value is not None:
                succeeded += 1
            elif reason is not None:
                failed += 1
                if limit and failed >= limit and stop_reason is None:
                    stop_reason = (
                        f"{failed} trials failed, reaching max_failed_trial_count {limit}; "
                        f"the last: trial {trial_id}: {reason}"
                    )
                    self._stop_active()
        if self._cancelled.is_set():
            return S.JOB_STATE_CANCELLED, None
        if stop_reason is not None:
            return S.JOB_STATE_FAILED, stop_reason
        if succeeded == 0:
            return S.JOB_STATE_FAILED, f"all {started} trials failed"
        return S.JOB_STATE_SUCCEEDED, None

    def _next_end(self) -> tuple[str, JobUpdate]:
        """The next trial update (a stopped server's study gives up waiting)."""
        while True:
            try:
                return self._ended.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._service.accepting_updates:
                    raise LocalCloudError("localcloud stopped while the study ran") from None

    def _start_trial(self, trial_id: str, values: suggest.Values) -> None:
        work = self._service.work_dir(self._job_id, trial_id)
        metric_file = work / METRIC_FILE
        metric_file.unlink(missing_ok=True)
        runtime_id = new_id()
        trial = TrialPb(id=trial_id, state=T.ACTIVE)
        trial.start_time.CopyFrom(now())
        for name, value in values.items():
            parameter = trial.parameters.add(parameter_id=name)
            if isinstance(value, str):
                parameter.value.string_value = value
            else:
                parameter.value.number_value = float(value)
        self._service.update(self._job_id, lambda job: job.trials.append(trial))
        shown = ", ".join(f"{k}={_arg(self._job, k, v)}" for k, v in values.items())
        self._service.log(
            self._project,
            self._job_id,
            f"Trial {trial_id} started with {shown} (its replicas log as job {runtime_id}).",
        )
        with self._lock:
            self._active[trial_id] = runtime_id
        try:
            self._runtime.submit(
                runtime_id,
                self._trial_job(trial_id, values, metric_file),
                lambda update: self._ended.put((trial_id, update)),
            )
        except LocalCloudError as err:  # the runtime itself is unusable (e.g. closed)
            self._ended.put((trial_id, JobUpdate(S(S.JOB_STATE_FAILED), str(err))))

    def _trial_job(
        self, trial_id: str, values: suggest.Values, metric_file: Path
    ) -> aiplatform_v1.CustomJob:
        spec = aiplatform_v1.CustomJobSpec.pb()()
        spec.CopyFrom(self._job.trial_job_spec)
        base = spec.base_output_directory.output_uri_prefix.rstrip("/")
        if base:
            spec.base_output_directory.output_uri_prefix = f"{base}/{trial_id}"
        args = [f"--{name}={_arg(self._job, name, value)}" for name, value in values.items()]
        for pool in spec.worker_pool_specs:
            if not pool.replica_count:
                continue
            pool.container_spec.args.extend(args)
            pool.container_spec.env.add(name="CLOUD_ML_TRIAL_ID", value=trial_id)
            pool.container_spec.env.add(name="CLOUD_ML_HP_METRIC_FILE", value=str(metric_file))
        job = CustomJobPb(display_name=f"{self._job.display_name}-trial-{trial_id}")
        job.job_spec.CopyFrom(spec)
        return aiplatform_v1.CustomJob.deserialize(job.SerializeToString())

    def _finish_trial(
        self, trial_id: str, update: JobUpdate, metric: str, stop_reason: str | None
    ) -> tuple[float | None, str | None]:
        """Record a trial's end: (its metric, None) when it succeeded, (None, why) when it
        failed, (None, None) when it was stopped (cancel, or the job failing)."""
        with self._lock:
            self._active.pop(trial_id, None)
        work = self._service.work_dir(self._job_id, trial_id)
        measurements: list[Any] = []
        reason: str | None
        if update.state == S.JOB_STATE_SUCCEEDED:
            measurements, reason = read_measurements(work / METRIC_FILE, metric)
        elif update.state == S.JOB_STATE_CANCELLED:
            why = "the job was cancelled" if self._cancelled.is_set() else stop_reason
            self._end(trial_id, T.INFEASIBLE, f"stopped: {why}", [])
            self._service.log(self._project, self._job_id, f"Trial {trial_id} stopped.")
            return None, None
        else:
            reason = update.error_message or "the trial's job failed"
        if reason is not None:
            self._end(trial_id, T.INFEASIBLE, reason, measurements)
            self._service.log(
                self._project, self._job_id, f"Trial {trial_id} failed: {reason}", "ERROR"
            )
            return None, reason
        value = measurements[-1].metrics[0].value
        self._end(trial_id, T.SUCCEEDED, None, measurements)
        self._service.log(
            self._project, self._job_id, f"Trial {trial_id} completed: {metric}={value:g}"
        )
        return value, None

    def _end(self, trial_id: str, state: int, reason: str | None, measurements: list[Any]) -> None:
        def change(job: Any) -> None:
            for trial in job.trials:
                if trial.id == trial_id:
                    trial.measurements.extend(measurements[-MAX_MEASUREMENTS:])
                    if measurements:
                        trial.final_measurement.CopyFrom(measurements[-1])
                    _end_trial(trial, state, reason)

        self._service.update(self._job_id, change)


def read_measurements(path: Path, metric: str) -> tuple[list[Any], str | None]:
    """The measurements of `metric` a trial wrote to its hypertune metric file (JSON lines
    `{"timestamp": …, "trial": "1", "<metric>": value, "global_step": n}`; cloudml-hypertune
    writes the numbers as text), oldest first; or why there are none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as err:
        return [], f"cannot read its metric file {path}: {err}"
    found = []
    for line in lines:
        try:
            record = json.loads(line)
            value = float(record[metric])
            step = int(float(record.get("global_step") or 0))
        except (ValueError, KeyError, TypeError):
            continue  # another metric's line, or a torn one
        measurement = aiplatform_v1.Measurement.pb()(step_count=step)
        measurement.metrics.add(metric_id=metric, value=value)
        found.append(measurement)
    if not found:
        return [], f"the trial reported no value of {metric} (CLOUD_ML_HP_METRIC_FILE)"
    return found, None


def _end_trial(trial: Any, state: int, reason: str | None) -> None:
    trial.state = state
    trial.end_time.CopyFrom(now())
    if reason:
        trial.infeasible_reason = reason


def _arg(job: Any, name: str, value: Any) -> str:
    """A parameter value as the trainer's argument: integers without a fraction."""
    if isinstance(value, str):
        return value
    spec = next((p for p in job.study_spec.parameters if p.parameter_id == name), None)
    whole = spec is not None and suggest.kind(spec) in ("integer_value_spec", "discrete_value_spec")
    if whole and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


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
