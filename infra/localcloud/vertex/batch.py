"""BatchPredictionJobs over JSON Lines or CSV in Cloud Storage, for any model with a
serving container: the API (create, get, list, cancel, delete) and the lifecycle.

A job starts the model's serving container with the model runtime (as a deployment
would), then runs localcloud.vertex.batch_worker through the job runtime — a process with
the runtime's environment, log lines and cancellation — which posts the instances in
batches and writes `prediction.results-00000-of-00001` (and the errors file) into
`<output_uri_prefix>/prediction-<model display name>-<time>/`, Vertex's layout, named in
`output_info.gcs_output_directory`. A job in flight when localcloud stops fails on the
next start."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from localcloud.errors import LocalCloudError
from localcloud.vertex import listing
from localcloud.vertex.jobs import (
    CANCELLED_MESSAGE,
    FILTER_FIELDS,
    IN_FLIGHT,
    RPC_ABORTED,
    RPC_CANCELLED,
    RPC_INTERNAL,
    STOPPED_MESSAGE,
    TERMINAL,
    validate_labels,
)
from localcloud.vertex.models import ModelService
from localcloud.vertex.operations import OperationService
from localcloud.vertex.records import Records
from localcloud.vertex.runtime import JobRuntime, JobUpdate, ModelRuntime
from localcloud.vertex.wire import invalid, new_id, not_found, now, parse, precondition

LOG = logging.getLogger(__name__)

STATE_FILE = "vertex-batch.json"
FORMATS = ("jsonl", "csv")
DEFAULT_BATCH_SIZE = 64
WORKER_MODULE = "localcloud.vertex.batch_worker"
# Stands for the worker's "container": its command runs localcloud's own interpreter.
WORKER_IMAGE = "localcloud/batch-prediction-worker"

BatchJobPb: Any = aiplatform_v1.BatchPredictionJob.pb()
S = aiplatform_v1.JobState


def validate_batch_job(job: Any) -> None:
    where = "BatchPredictionJob"
    if not job.display_name:
        raise invalid(f"{where}.display_name is required")
    validate_labels(job.labels, where)
    if not job.model:
        raise invalid(f"{where}.model is required")
    source = job.input_config
    if source.instances_format not in FORMATS:
        raise invalid(
            f"{where}.input_config.instances_format {source.instances_format!r} is not "
            f"supported here: use one of {', '.join(FORMATS)}"
        )
    if not source.gcs_source.uris:
        raise invalid(f"{where}.input_config.gcs_source.uris is required")
    for uri in source.gcs_source.uris:
        if not uri.startswith("gs://") or "/" not in uri.removeprefix("gs://"):
            raise invalid(f"{where}.input_config.gcs_source.uris: {uri!r} is not a gs:// object")
    output = job.output_config
    if output.predictions_format not in ("", "jsonl"):
        raise invalid(
            f"{where}.output_config.predictions_format {output.predictions_format!r} is not "
            "supported here: use jsonl"
        )
    if not output.gcs_destination.output_uri_prefix.startswith("gs://"):
        raise invalid(
            f"{where}.output_config.gcs_destination.output_uri_prefix must be a gs:// URI"
        )


class BatchService:
    def __init__(
        self,
        state_dir: Path,
        operations: OperationService,
        models: ModelService,
        jobs: JobRuntime | None,
        servers: ModelRuntime | None,
    ) -> None:
        self._records = Records(Path(state_dir) / STATE_FILE, BatchJobPb, "batch prediction jobs")
        self._work = Path(state_dir) / "batch"
        self._jobs: dict[str, Any] = self._records.load()
        self._operations, self._models = operations, models
        self._job_runtime, self._model_runtime = jobs, servers
        self._lock = threading.RLock()
        self._cancelled: set[str] = set()
        self._accepting_updates = True

    # -- API -------------------------------------------------------------------------

    def create(self, project: str, location: str, body: Any) -> Any:
        job = parse(body, BatchJobPb(), "BatchPredictionJob")
        validate_batch_job(job)
        model = self._models.get(job.model)  # NOT_FOUND for an unknown model or version
        with self._lock:
            job_id = new_id(self._jobs)
            for output_only in (
                "state", "error", "output_info", "completion_stats", "start_time", "end_time",
                "partial_failures", "resources_consumed",
            ):  # fmt: skip
                job.ClearField(output_only)
            job.name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
            job.model = model.name
            job.model_version_id = model.version_id
            if not job.output_config.predictions_format:
                job.output_config.predictions_format = "jsonl"
            job.create_time.CopyFrom(now())
            job.update_time.CopyFrom(job.create_time)
            job.state = S.JOB_STATE_PENDING
            self._jobs[job_id] = job
            self._save()
        threading.Thread(
            target=self._run, args=(job_id, model), name=f"batch-{job_id}", daemon=True
        ).start()
        return self.get(project, location, job_id)

    def get(self, project: str, location: str, job_id: str) -> Any:
        with self._lock:
            return _copy(self._find(project, location, job_id))

    def list(self, project: str, location: str, query: dict[str, str]) -> Any:
        with self._lock:
            here = [
                _copy(j)
                for j in self._jobs.values()
                if listing.in_location(j.name, project, location)
            ]
        found = listing.select(here, query, FILTER_FIELDS, _field)
        return listing.respond(
            found, query, aiplatform_v1.ListBatchPredictionJobsResponse, "batch_prediction_jobs"
        )

    def cancel(self, project: str, location: str, job_id: str) -> None:
        with self._lock:
            job = self._find(project, location, job_id)
            if job.state in TERMINAL:
                raise precondition(
                    f"BatchPredictionJob {job.name} is already {S(job.state).name} and cannot "
                    "be cancelled"
                )
            _set_state(job, S.JOB_STATE_CANCELLING)
            self._save()
            self._cancelled.add(job_id)
        if self._job_runtime is not None:
            self._job_runtime.cancel(job_id)  # a running worker reports CANCELLED

    def delete(self, project: str, location: str, job_id: str) -> operations_pb2.Operation:
        with self._lock:
            job = self._find(project, location, job_id)
            if job.state not in TERMINAL:
                raise precondition(
                    f"BatchPredictionJob {job.name} is {S(job.state).name}: cancel it before "
                    "deleting it"
                )
            del self._jobs[job_id]
            self._save()
        return self._operations.finish(
            job.name, aiplatform_v1.DeleteOperationMetadata.pb()(), empty_pb2.Empty()
        )

    # -- lifecycle -------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart nothing runs the jobs that were in flight: they fail."""
        with self._lock:
            for job in self._jobs.values():
                if job.state in IN_FLIGHT:
                    _set_state(job, S.JOB_STATE_FAILED, (RPC_ABORTED, STOPPED_MESSAGE))
            self._save()

    def stop_accepting_updates(self) -> None:
        # The workers killed as the server stops did not really end: recover() says so.
        self._accepting_updates = False

    # -- one thread per job ------------------------------------------------------------

    def _run(self, job_id: str, model: Any) -> None:
        if self._job_runtime is None or self._model_runtime is None:
            self._end(
                job_id,
                S.JOB_STATE_FAILED,
                "localcloud runs batch prediction only with its job and model runtimes",
            )
            return
        server_id = f"batch-{job_id}"
        try:
            server = self._model_runtime.deploy(
                server_id, aiplatform_v1.Model.deserialize(model.SerializeToString())
            )
        except LocalCloudError as err:
            self._end(
                job_id, S.JOB_STATE_FAILED, f"the model's serving container did not start: {err}"
            )
            return
        with self._lock:
            job = _copy(self._jobs[job_id])
            if job_id in self._cancelled:
                job = None
        if job is None:
            self._model_runtime.undeploy(server_id)
            self._end(job_id, S.JOB_STATE_CANCELLED)
            return
        output_dir = _output_directory(job, model.display_name)
        stats = self._work / job_id / "stats.json"
        stats.parent.mkdir(parents=True, exist_ok=True)
        worker = _worker_job(job, server.url + server.predict_route, output_dir, stats)

        servers = self._model_runtime

        def on_update(update: JobUpdate) -> None:
            if update.state == S.JOB_STATE_RUNNING:
                self._started(job_id, output_dir)
                return
            servers.undeploy(server_id)
            self._end(job_id, int(update.state), update.error_message, stats)

        try:
            self._job_runtime.submit(job_id, worker, on_update)
        except LocalCloudError as err:
            servers.undeploy(server_id)
            self._end(job_id, S.JOB_STATE_FAILED, str(err))

    def _started(self, job_id: str, output_dir: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_PENDING or not self._accepting_updates:
                return
            job.output_info.gcs_output_directory = output_dir
            _set_state(job, S.JOB_STATE_RUNNING)
            self._save()

    def _end(
        self, job_id: str, state: int, message: str | None = None, stats: Path | None = None
    ) -> None:
        with self._lock:
            self._cancelled.discard(job_id)
            job = self._jobs.get(job_id)
            if job is None or job.state in TERMINAL or not self._accepting_updates:
                return
            error = None
            if state == S.JOB_STATE_FAILED:
                error = (RPC_INTERNAL, message or "The batch prediction job failed.")
            elif state == S.JOB_STATE_CANCELLED:
                error = (RPC_CANCELLED, CANCELLED_MESSAGE)
            if stats is not None and stats.exists():
                counts = json.loads(stats.read_text())
                job.completion_stats.successful_count = counts["successful_count"]
                job.completion_stats.failed_count = counts["failed_count"]
            _set_state(job, state, error)
            self._save()

    def _find(self, project: str, location: str, job_id: str) -> Any:
        job = self._jobs.get(job_id)
        if job is None or not listing.in_location(job.name, project, location):
            raise not_found(
                f"BatchPredictionJob projects/{project}/locations/{location}/"
                f"batchPredictionJobs/{job_id} not found"
            )
        return job

    def _save(self) -> None:
        self._records.save(self._jobs)


def _output_directory(job: Any, model_display_name: str) -> str:
    # Vertex's layout: prediction-<model display name>-<YYYY_MM_DDThh_mm_ss_sssZ>.
    moment = datetime.now(UTC)
    stamp = moment.strftime("%Y_%m_%dT%H_%M_%S_") + f"{moment.microsecond // 1000:03d}Z"
    prefix = job.output_config.gcs_destination.output_uri_prefix.rstrip("/")
    return f"{prefix}/prediction-{model_display_name}-{stamp}"


def _worker_job(job: Any, predict_url: str, output_dir: str, stats: Path) -> Any:
    batch_size = job.manual_batch_tuning_parameters.batch_size or DEFAULT_BATCH_SIZE
    args = [
        f"--predict-url={predict_url}",
        f"--format={job.input_config.instances_format}",
        *(f"--source={uri}" for uri in job.input_config.gcs_source.uris),
        f"--output-dir={output_dir}",
        f"--batch-size={batch_size}",
        f"--stats={stats}",
    ]
    machine = job.dedicated_resources.machine_spec.machine_type or "n1-standard-2"
    pool = aiplatform_v1.WorkerPoolSpec(
        machine_spec=aiplatform_v1.MachineSpec(machine_type=machine),
        replica_count=1,
        container_spec=aiplatform_v1.ContainerSpec(
            image_uri=WORKER_IMAGE, command=["python", "-m", WORKER_MODULE], args=args
        ),
    )
    return aiplatform_v1.CustomJob(
        display_name=job.display_name,
        job_spec=aiplatform_v1.CustomJobSpec(worker_pool_specs=[pool]),
    )


def _set_state(job: Any, state: int, error: tuple[int, str] | None = None) -> None:
    stamp = now()
    job.state = state
    job.update_time.CopyFrom(stamp)
    if state == S.JOB_STATE_RUNNING and not job.HasField("start_time"):
        job.start_time.CopyFrom(stamp)
    if state in TERMINAL:
        job.end_time.CopyFrom(stamp)
    if error is not None:
        job.error.code, job.error.message = error


def _copy(job: Any) -> Any:
    clone = BatchJobPb()
    clone.CopyFrom(job)
    return clone


def _field(job: Any, name: str) -> Any:
    if name == "state":
        return S(job.state).name
    return getattr(job, name)
