"""TrainingPipelines of custom training, the kind the Vertex AI SDK's CustomTrainingJob,
CustomContainerTrainingJob and CustomPythonPackageTrainingJob create: the API (create, get,
list, cancel, delete) and their lifecycle.

As on Vertex, a pipeline whose `training_task_definition` is the custom task schema runs
its `training_task_inputs` (a CustomJobSpec) as a CustomJob of its own — named in
`training_task_metadata.backingCustomJob`, visible to ListCustomJobs, with the job's
environment (`AIP_MODEL_DIR` = `<base_output_directory>/model/`) and log lines — and, when
that job succeeds, uploads `model_to_upload` with `artifact_uri` = the model directory
(unless the request set one), then records the new model's name and version in
`model_to_upload`. Datasets (`input_data_config`) are not emulated."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format

from localcloud.vertex import filters, listing
from localcloud.vertex.jobs import (
    CANCELLED_MESSAGE,
    RPC_ABORTED,
    RPC_CANCELLED,
    RPC_INTERNAL,
    STOPPED_MESSAGE,
    JobService,
    validate_custom_job,
    validate_labels,
)
from localcloud.vertex.models import ModelService
from localcloud.vertex.operations import OperationService
from localcloud.vertex.records import Records
from localcloud.vertex.state import CustomJobPb
from localcloud.vertex.wire import ApiError, invalid, new_id, not_found, now, parse, precondition

LOG = logging.getLogger(__name__)

CUSTOM_TASK = "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml"
STATE_FILE = "vertex-pipelines.json"
BACKING_JOB = "backingCustomJob"  # the key Vertex gives the job in training_task_metadata
POLL_SECONDS = 0.1  # how often a running pipeline looks at its job

TrainingPipelinePb: Any = aiplatform_v1.TrainingPipeline.pb()
P = aiplatform_v1.PipelineState
J = aiplatform_v1.JobState
TERMINAL = frozenset(
    {P.PIPELINE_STATE_SUCCEEDED, P.PIPELINE_STATE_FAILED, P.PIPELINE_STATE_CANCELLED}
)
_JOB_ENDS = frozenset({J.JOB_STATE_SUCCEEDED, J.JOB_STATE_FAILED, J.JOB_STATE_CANCELLED})
FILTER_FIELDS: dict[str, filters.Field] = {
    "display_name": filters.string(":"),
    "state": filters.enum(P.__members__),
    "labels": filters.LABELS,
    "training_task_definition": filters.string(),
    "create_time": filters.TIMESTAMP,
    "update_time": filters.TIMESTAMP,
    "start_time": filters.TIMESTAMP,
    "end_time": filters.TIMESTAMP,
}
SORT_KEYS: listing.SortKeys = {
    "display_name": lambda p: p.display_name,
    "create_time": lambda p: listing.time_key(p.create_time),
    "update_time": lambda p: listing.time_key(p.update_time),
}


def job_spec_of(pipeline: Any) -> dict[str, Any]:
    """The pipeline's CustomJobSpec (as JSON), checked as CreateCustomJob checks a job, with
    errors naming the pipeline's fields."""
    where = "TrainingPipeline"
    if not pipeline.display_name:
        raise invalid(f"{where}.display_name is required")
    validate_labels(pipeline.labels, where)
    if pipeline.training_task_definition != CUSTOM_TASK:
        raise invalid(
            f"{where}.training_task_definition {pipeline.training_task_definition!r} is not "
            f"emulated: localcloud runs custom training ({CUSTOM_TASK})"
        )
    if pipeline.HasField("input_data_config"):
        raise invalid(f"{where}.input_data_config: Vertex AI datasets are not emulated")
    inputs = json_format.MessageToDict(pipeline.training_task_inputs)
    if not isinstance(inputs, dict):
        raise invalid(f"{where}.training_task_inputs must be an object (a CustomJobSpec)")
    job = CustomJobPb(display_name=pipeline.display_name)
    try:
        json_format.ParseDict(inputs, job.job_spec)
    except json_format.ParseError as err:
        first_line = str(err).splitlines()[0].strip()
        raise invalid(f"Invalid {where}.training_task_inputs: {first_line}") from err
    try:
        validate_custom_job(job)
    except ApiError as err:
        raise invalid(
            err.message.replace("CustomJob.job_spec", f"{where}.training_task_inputs")
        ) from err
    if pipeline.HasField("model_to_upload"):
        if not job.job_spec.base_output_directory.output_uri_prefix:
            raise invalid(
                f"{where}.training_task_inputs.base_output_directory.output_uri_prefix is "
                "required with model_to_upload: the model is read from its model/ directory"
            )
        if not pipeline.model_to_upload.container_spec.image_uri:
            raise invalid(f"{where}.model_to_upload.container_spec.image_uri is required")
    spec: dict[str, Any] = json_format.MessageToDict(job.job_spec)
    return spec


class PipelineService:
    def __init__(
        self, state_dir: Path, operations: OperationService, jobs: JobService, models: ModelService
    ) -> None:
        self._records = Records(Path(state_dir) / STATE_FILE, TrainingPipelinePb, "pipelines")
        self._pipelines: dict[str, Any] = self._records.load()
        self._operations, self._jobs, self._models = operations, jobs, models
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._followers: list[threading.Thread] = []

    # -- API -------------------------------------------------------------------------

    def create(self, project: str, location: str, body: Any) -> Any:
        pipeline = parse(body, TrainingPipelinePb(), "TrainingPipeline")
        spec = job_spec_of(pipeline)
        with self._lock:
            pipeline_id = new_id(self._pipelines)
            for output_only in (
                "state",
                "error",
                "start_time",
                "end_time",
                "training_task_metadata",
            ):
                pipeline.ClearField(output_only)
            if pipeline.HasField("model_to_upload"):
                # Output only: the uploaded model's name and version, once there is one.
                pipeline.model_to_upload.ClearField("name")
                pipeline.model_to_upload.ClearField("version_id")
            pipeline.name = (
                f"projects/{project}/locations/{location}/trainingPipelines/{pipeline_id}"
            )
            pipeline.create_time.CopyFrom(now())
            pipeline.update_time.CopyFrom(pipeline.create_time)
            pipeline.state = P.PIPELINE_STATE_PENDING
            self._pipelines[pipeline_id] = pipeline
            self._save()
        job = self._jobs.create(
            project,
            location,
            {
                "displayName": f"{pipeline.display_name}-custom-job",
                "labels": dict(pipeline.labels),
                "jobSpec": spec,
            },
        )

        def started(stored: Any) -> None:
            stored.training_task_metadata.struct_value.fields[BACKING_JOB].string_value = job.name
            _set_state(stored, P.PIPELINE_STATE_RUNNING)

        self._change(pipeline_id, started)
        self._follow(project, pipeline_id)
        return self.get(project, location, pipeline_id)

    def get(self, project: str, location: str, pipeline_id: str) -> Any:
        with self._lock:
            return _copy(self._find(project, location, pipeline_id))

    def list(self, project: str, location: str, query: dict[str, str]) -> Any:
        with self._lock:
            here = [
                _copy(p)
                for p in self._pipelines.values()
                if listing.in_location(p.name, project, location)
            ]
        found = listing.select(here, query, FILTER_FIELDS, _field)
        return listing.respond(
            found,
            query,
            aiplatform_v1.ListTrainingPipelinesResponse,
            "training_pipelines",
            sort_keys=SORT_KEYS,
        )

    def cancel(self, project: str, location: str, pipeline_id: str) -> None:
        with self._lock:
            pipeline = self._find(project, location, pipeline_id)
            if pipeline.state in TERMINAL:
                raise precondition(
                    f"TrainingPipeline {pipeline.name} is already {P(pipeline.state).name} "
                    "and cannot be cancelled"
                )
            _set_state(pipeline, P.PIPELINE_STATE_CANCELLING)
            self._save()
            job_name = _backing_job(pipeline)
        if job_name is None:
            self._end(pipeline_id, P.PIPELINE_STATE_CANCELLED)
            return
        self._cancel_job(job_name)  # the follower ends the pipeline once the job ended

    def delete(self, project: str, location: str, pipeline_id: str) -> operations_pb2.Operation:
        with self._lock:
            pipeline = self._find(project, location, pipeline_id)
            if pipeline.state not in TERMINAL:
                raise precondition(
                    f"TrainingPipeline {pipeline.name} is {P(pipeline.state).name}: cancel it "
                    "before deleting it"
                )
            del self._pipelines[pipeline_id]
            self._save()
        return self._operations.finish(
            pipeline.name, aiplatform_v1.DeleteOperationMetadata.pb()(), empty_pb2.Empty()
        )

    # -- lifecycle -------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: follow the jobs of the pipelines in flight again (the job
        service ran them again, or ended them); a pipeline that never got its job fails."""
        with self._lock:
            in_flight = [
                (pipeline_id, p)
                for pipeline_id, p in self._pipelines.items()
                if p.state not in TERMINAL
            ]
        for pipeline_id, pipeline in in_flight:
            job_name = _backing_job(pipeline)
            if job_name is None:
                self._end(pipeline_id, P.PIPELINE_STATE_FAILED, (RPC_ABORTED, STOPPED_MESSAGE))
                continue
            if pipeline.state == P.PIPELINE_STATE_CANCELLING:
                self._cancel_job(job_name)
            self._follow(pipeline.name.split("/")[1], pipeline_id)

    def stop(self) -> None:
        self._stopping.set()
        for follower in self._followers:
            follower.join(timeout=5)

    # -- following the job -------------------------------------------------------------

    def _follow(self, project: str, pipeline_id: str) -> None:
        follower = threading.Thread(
            target=self._watch,
            args=(project, pipeline_id),
            name=f"pipeline-{pipeline_id}",
            daemon=True,
        )
        self._followers = [f for f in self._followers if f.is_alive()] + [follower]
        follower.start()

    def _watch(self, project: str, pipeline_id: str) -> None:
        while not self._stopping.wait(POLL_SECONDS):
            with self._lock:
                pipeline = self._pipelines.get(pipeline_id)
                if pipeline is None or pipeline.state in TERMINAL:
                    return
                job_name = _backing_job(pipeline)
            try:
                job = self._job(job_name)
            except ApiError as err:
                self._end(pipeline_id, P.PIPELINE_STATE_FAILED, (RPC_INTERNAL, err.message))
                return
            if job.state in _JOB_ENDS:
                try:
                    self._conclude(project, pipeline_id, job)
                except Exception as err:  # a bug must end the pipeline, not leave it RUNNING
                    LOG.exception("training pipeline %s: concluding failed", pipeline_id)
                    self._end(pipeline_id, P.PIPELINE_STATE_FAILED, (RPC_INTERNAL, str(err)))
                return

    def _conclude(self, project: str, pipeline_id: str, job: Any) -> None:
        if job.state == J.JOB_STATE_CANCELLED:
            self._end(pipeline_id, P.PIPELINE_STATE_CANCELLED, (RPC_CANCELLED, CANCELLED_MESSAGE))
            return
        if job.state == J.JOB_STATE_FAILED:
            message = f"The CustomJob {job.name} failed: {job.error.message}"
            self._end(
                pipeline_id, P.PIPELINE_STATE_FAILED, (job.error.code or RPC_INTERNAL, message)
            )
            return
        with self._lock:
            pipeline = _copy(self._pipelines[pipeline_id])
        if not pipeline.HasField("model_to_upload"):
            self._end(pipeline_id, P.PIPELINE_STATE_SUCCEEDED)
            return
        try:
            name, version = self._upload(project, pipeline, job)
        except ApiError as err:
            self._end(
                pipeline_id,
                P.PIPELINE_STATE_FAILED,
                (err.rpc_code, f"Uploading the model failed: {err.message}"),
            )
            return

        def uploaded(stored: Any) -> None:
            stored.model_to_upload.name = name
            stored.model_to_upload.version_id = version

        self._change(pipeline_id, uploaded)
        self._end(pipeline_id, P.PIPELINE_STATE_SUCCEEDED)

    def _upload(self, project: str, pipeline: Any, job: Any) -> tuple[str, str]:
        model = pipeline.model_to_upload
        if not model.artifact_uri:
            base = job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
            model.artifact_uri = f"{base}/model"
        if not model.display_name:
            model.display_name = pipeline.display_name
        request: dict[str, Any] = {"model": json_format.MessageToDict(model)}
        if pipeline.model_id:
            request["modelId"] = pipeline.model_id
        if pipeline.parent_model:
            request["parentModel"] = pipeline.parent_model
        location = pipeline.name.split("/")[3]
        operation = self._models.upload(project, location, request)
        if operation.error.code:
            raise ApiError("INTERNAL", operation.error.message)
        response = aiplatform_v1.UploadModelResponse.pb()()
        operation.response.Unpack(response)
        return response.model, response.model_version_id

    def _job(self, name: str | None) -> Any:
        if name is None:
            raise not_found("the pipeline has no CustomJob")
        _, project, _, location, _, job_id = name.split("/")
        return self._jobs.get(project, location, job_id)

    def _cancel_job(self, job_name: str) -> None:
        _, project, _, location, _, job_id = job_name.split("/")
        try:
            self._jobs.cancel(project, location, job_id)
        except ApiError as err:  # it ended meanwhile: the follower concludes
            LOG.info("cancelling %s: %s", job_name, err.message)

    # -- state -------------------------------------------------------------------------

    def _change(self, pipeline_id: str, change: Any) -> None:
        with self._lock:
            pipeline = self._pipelines.get(pipeline_id)
            if pipeline is None or self._stopping.is_set():
                return
            change(pipeline)
            pipeline.update_time.CopyFrom(now())
            self._save()

    def _end(self, pipeline_id: str, state: int, error: tuple[int, str] | None = None) -> None:
        def ended(pipeline: Any) -> None:
            if pipeline.state in TERMINAL:
                return
            _set_state(pipeline, state)
            if error is not None:
                pipeline.error.code, pipeline.error.message = error

        self._change(pipeline_id, ended)

    def _find(self, project: str, location: str, pipeline_id: str) -> Any:
        pipeline = self._pipelines.get(pipeline_id)
        if pipeline is None or not listing.in_location(pipeline.name, project, location):
            raise not_found(
                f"TrainingPipeline projects/{project}/locations/{location}/trainingPipelines/"
                f"{pipeline_id} not found"
            )
        return pipeline

    def _save(self) -> None:
        self._records.save(self._pipelines)


def _set_state(pipeline: Any, state: int) -> None:
    stamp = now()
    pipeline.state = state
    pipeline.update_time.CopyFrom(stamp)
    if state == P.PIPELINE_STATE_RUNNING and not pipeline.HasField("start_time"):
        pipeline.start_time.CopyFrom(stamp)
    if state in TERMINAL:
        pipeline.end_time.CopyFrom(stamp)


def _backing_job(pipeline: Any) -> str | None:
    fields = pipeline.training_task_metadata.struct_value.fields
    return fields[BACKING_JOB].string_value if BACKING_JOB in fields else None


def _copy(pipeline: Any) -> Any:
    clone = TrainingPipelinePb()
    clone.CopyFrom(pipeline)
    return clone


def _field(pipeline: Any, name: str) -> Any:
    if name == "state":
        return P(pipeline.state).name
    return getattr(pipeline, name)
