"""Ports: what the core needs from the outside world. Adapters implement them with the
official clients (`adapters/`); unit tests implement them with in-memory fakes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from retrain.errors import PermanentError
from retrain.jobspec import JobSpec

TERMINAL_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)
# The two kinds of training job, told apart by their resource names.
CUSTOM_JOBS = "customJobs"
TUNING_JOBS = "hyperparameterTuningJobs"


class JobNotFound(PermanentError):
    """No job of that name: a job id may name a CustomJob or a HyperparameterTuningJob."""


@dataclass(frozen=True)
class Stored:
    """A state document and the generation it was read at (for compare-and-swap)."""

    doc: dict[str, Any]
    generation: int
    updated: datetime


@dataclass(frozen=True)
class Listed:
    key: str
    generation: int
    updated: datetime


class StateStore(Protocol):
    """Small JSON documents under one prefix, with atomic create and compare-and-swap."""

    def create(self, key: str, doc: Mapping[str, Any]) -> int | None:
        """Create `key` if it does not exist; its generation, or None if it existed."""

    def read(self, key: str) -> Stored | None: ...

    def replace(self, key: str, doc: Mapping[str, Any], *, generation: int) -> int | None:
        """Overwrite `key` only if it is still at `generation`; the new generation or None."""

    def list(self, prefix: str) -> list[Listed]: ...

    def delete(self, key: str, *, generation: int | None = None) -> bool:
        """Delete `key` (only while it is at `generation`, when given); a missing key is
        not an error. False when the precondition failed."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every key, whatever its generation (a missing key is not an error): as
        few round trips as the store allows, for the thousands of records a batch frees."""


class Blobs(Protocol):
    """Whole objects by URI (gs:// or a local path)."""

    def read_text(self, uri: str) -> tuple[str, int]:
        """The object's text and its generation (0 for local files)."""

    def generation(self, uri: str) -> int | None: ...


@dataclass(frozen=True)
class ObjectVersion:
    """One generation of a data object, as listed or looked up."""

    bucket: str
    name: str
    generation: int
    size: int
    created: datetime | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class DataObjects(Protocol):
    """Data objects by generation, and the small text files that pin them (a run's input
    manifest). The trigger uses it on submission only."""

    def list(self, bucket: str, prefix: str) -> list[ObjectVersion]:
        """The live generation of every object whose name starts with `prefix`."""

    def stat(self, bucket: str, name: str, generation: int) -> ObjectVersion | None:
        """That generation of the object, live or noncurrent; None when it is gone."""

    def read_text(self, uri: str) -> str | None:
        """The object's text, or None when it does not exist."""

    def create_text(self, uri: str, text: str) -> bool:
        """Write `uri` only if it does not exist yet; False when it existed."""


@dataclass(frozen=True)
class Trial:
    """One trial of a HyperparameterTuningJob, as Vertex reports it."""

    id: str  # "1", "2", …
    state: str  # aiplatform_v1.Trial.State name: SUCCEEDED, INFEASIBLE, ACTIVE, …
    parameters: Mapping[str, Any] = field(default_factory=dict)
    metric: float | None = None  # the final measurement of the study's metric
    error: str | None = None  # infeasible_reason: why the trial failed


@dataclass(frozen=True)
class Objective:
    """The study's metric and its goal ("maximize" | "minimize")."""

    metric: str
    goal: str


@dataclass(frozen=True)
class JobInfo:
    name: str
    state: str  # aiplatform_v1.JobState name, e.g. "JOB_STATE_RUNNING"
    display_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    error_message: str | None = None
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    base_output_directory: str | None = None
    args: tuple[str, ...] = ()  # the first worker pool's (a tuning job's trial spec's)
    # A HyperparameterTuningJob's study objective and trials (None and () for a CustomJob).
    objective: Objective | None = None
    trials: tuple[Trial, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_tuning(self) -> bool:
        return f"/{TUNING_JOBS}/" in self.name

    @property
    def job_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class TrainingService(Protocol):
    """Vertex AI training jobs: CustomJobs, and HyperparameterTuningJobs for a spec with a
    tuning study. `get` and `cancel` take either kind's resource name."""

    def submit(self, spec: JobSpec) -> JobInfo: ...

    def get(self, name: str) -> JobInfo:
        """Raises JobNotFound when no such job exists."""

    def find(self, labels: Mapping[str, str], *, active_only: bool = False) -> list[JobInfo]:
        """Jobs of both kinds carrying all of `labels`; with `active_only`, only those not
        yet ended."""

    def cancel(self, name: str) -> None: ...


def job_name(project: str, region: str, job_id: str, *, tuning: bool = False) -> str:
    kind = TUNING_JOBS if tuning else CUSTOM_JOBS
    return f"projects/{project}/locations/{region}/{kind}/{job_id}"


# --- the job-events function's ports ---------------------------------------------------


class DeployFailed(PermanentError):
    """The serving container of a new model version could not be deployed (it never
    became healthy): the version is not serving, the endpoint is as it was."""


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model; `metric` is the gate metric stored with it."""

    model: str  # projects/P/locations/L/models/ID
    version_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    metric: float | None = None
    artifact_uri: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}@{self.version_id}"


@dataclass(frozen=True)
class VersionSpec:
    """What a new model version is uploaded with."""

    model_id: str
    display_name: str
    artifact_uri: str
    image_uri: str
    health_route: str
    predict_route: str
    port: int
    labels: Mapping[str, str]
    metric_name: str
    metric_value: float
    description: str = ""


class ModelRegistry(Protocol):
    """Vertex AI Model Registry: models as versions, aliases such as `champion`."""

    def find_version(self, model_id: str, labels: Mapping[str, str]) -> ModelVersion | None:
        """The version of `model_id` carrying all of `labels`, if any."""

    def by_alias(self, model_id: str, alias: str) -> ModelVersion | None: ...

    def upload(self, spec: VersionSpec) -> ModelVersion:
        """A new version of `spec.model_id` (the model itself when it is the first)."""

    def set_alias(self, version: ModelVersion, alias: str) -> None: ...


@dataclass(frozen=True)
class Deployed:
    id: str
    model: str
    version_id: str


@dataclass(frozen=True)
class EndpointState:
    name: str
    deployed: tuple[Deployed, ...] = ()
    traffic: Mapping[str, int] = field(default_factory=dict)

    def deployment_of(self, version: ModelVersion) -> Deployed | None:
        for item in self.deployed:
            if item.model == version.model and item.version_id == version.version_id:
                return item
        return None


@dataclass(frozen=True)
class Prediction:
    deployed_model_id: str
    predictions: tuple[Any, ...]


class Endpoints(Protocol):
    """Vertex AI endpoints: deployments with a traffic split, and predictions."""

    def ensure(self, endpoint_id: str, display_name: str) -> EndpointState: ...

    def get(self, name: str) -> EndpointState: ...

    def deploy(
        self,
        endpoint: str,
        version: ModelVersion,
        machine_type: str,
        traffic: Mapping[str, int],
        service_account: str | None = None,
    ) -> str:
        """The new deployed model's id; `traffic` key "0" is the version being deployed;
        the model runs as `service_account` when given. Raises DeployFailed when the model
        cannot serve."""

    def undeploy(self, endpoint: str, deployed_id: str, traffic: Mapping[str, int]) -> None:
        """`traffic` is the split of the models that remain."""

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> None: ...

    def predict(self, endpoint: str, instances: list[Any]) -> Prediction: ...


class JobLogs(Protocol):
    def tail(self, job_id: str, lines: int) -> list[str]:
        """The last `lines` lines of the job's failing (or last) replica, oldest first."""


class Notifier(Protocol):
    """One notification channel; `channel` names it in the ledger's notification claims."""

    channel: str

    def send(self, document: Mapping[str, Any], text: str) -> None: ...
