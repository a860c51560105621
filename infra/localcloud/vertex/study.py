"""One tuning job's study: suggest parameters, run each trial through the job runtime
with Vertex's per-trial contract, read the trial's hypertune metrics, and end the job.

Each trial is the job's `trial_job_spec` with the trial's parameters appended to every
container's args as `--<parameter_id>=<value>`, `base_output_directory` `<base>/<trial_id>`
(so AIP_MODEL_DIR is `<base>/<trial_id>/model/`), CLOUD_ML_TRIAL_ID, and
CLOUD_ML_HP_METRIC_FILE naming a file in the trial's local work dir."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.cloud import aiplatform_v1

from localcloud.errors import LocalCloudError
from localcloud.vertex import suggest
from localcloud.vertex.runtime import JobRuntime, JobUpdate
from localcloud.vertex.state import CustomJobPb
from localcloud.vertex.wire import new_id, now

if TYPE_CHECKING:
    from localcloud.vertex.tuning import TuningService

S = aiplatform_v1.JobState
T = aiplatform_v1.Trial.State
TrialPb: Any = aiplatform_v1.Trial.pb()
METRIC_FILE = "hypertune-metrics.jsonl"
MAX_MEASUREMENTS = 1000  # kept per trial; the final one is what counts
_POLL_SECONDS = 0.2


class Study:
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
            # The pool's own task, container or Python package: touching container_spec on
            # a package pool would set the oneof and drop its python_package_spec.
            task = getattr(pool, pool.WhichOneof("task") or "container_spec")
            task.args.extend(args)
            task.env.add(name="CLOUD_ML_TRIAL_ID", value=trial_id)
            task.env.add(name="CLOUD_ML_HP_METRIC_FILE", value=str(metric_file))
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
                    end_trial(trial, state, reason)

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


def end_trial(trial: Any, state: int, reason: str | None) -> None:
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
