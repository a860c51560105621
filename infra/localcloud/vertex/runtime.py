"""The interface between the Vertex AI emulator's API server and what really runs jobs
and serves models: the server owns the resources and their states; a runtime runs
processes and reports back."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.cloud import aiplatform_v1


@dataclass(frozen=True)
class JobUpdate:
    state: aiplatform_v1.JobState  # RUNNING, SUCCEEDED, FAILED, CANCELLED
    # For FAILED: the failing replica's last "error: ..." line, or what happened.
    error_message: str | None = None


class JobRuntime(Protocol):
    def submit(
        self, job_id: str, job: aiplatform_v1.CustomJob, on_update: Callable[[JobUpdate], None]
    ) -> None:
        """Start (or queue) the job's replicas; report each state change through on_update
        (from any thread). Never raises for job-level failures: reports FAILED instead."""

    def cancel(self, job_id: str) -> None: ...

    def close(self) -> None:
        """Stop every process (localcloud down)."""


@dataclass(frozen=True)
class DeployedServer:
    url: str  # e.g. http://127.0.0.1:PORT
    predict_route: str
    health_route: str


class ModelRuntime(Protocol):
    def deploy(self, deployed_model_id: str, model: aiplatform_v1.Model) -> DeployedServer:
        """Start the model's serving container locally and return once it is healthy;
        raise LocalCloudError with a clear message if it cannot."""

    def undeploy(self, deployed_model_id: str) -> None: ...

    def close(self) -> None: ...
