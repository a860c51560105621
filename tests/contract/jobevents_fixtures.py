"""Contract fixtures for the job-events function: the real `on_job_event` served by
functions-framework, fake-gcs-server, the Vertex AI emulator whose jobs run as local
processes and whose deployed models really serve, the Logging v2 REST emulator, and a
webhook receiver (a real HTTP server) that records what it is sent."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, storage

from localcloud.functions import FunctionServer
from localcloud.logging_api import LoggingServer
from localcloud.logstore import LogStore
from localcloud.storage import StorageServer
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime, LocalModelRuntime
from localcloud.vertex.server import VertexServer
from localcloud.webhook import WebhookSink
from retrain.adapters.clients import VertexConnection
from retrain.adapters.gcs import GcsStateStore
from retrain.adapters.vertex import VertexTraining
from retrain.config import parse_config
from retrain.jobspec import build_job
from retrain.ledger import Ledger
from retrain.planner import RunPlan

PROJECT = "acme-ml"
REGION = "us-central1"
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
_ids = itertools.count(1)

CONFIG = """
[defaults]
project = "{project}"
region = "{region}"
state_uri = "gs://{state}/state"
output_uri = "gs://{artifacts}/runs"

[guards]
allowed_buckets = ["{landing}"]

[pipelines.churn]
bucket = "{landing}"
prefix = "churn/"
trigger = "each"

[pipelines.churn.training]
image_uri = "local/trainer-ok:latest"
machine_type = "n1-standard-4"
fallback = [{{ machine_type = "n1-standard-8" }}]

[pipelines.churn.deploy]
model = "churn"
endpoint = "churn"
serving_image_uri = "local/serving:latest"
metric = "val_accuracy"
min_value = 0.6
must_beat_champion = true

[pipelines.churn.notify]
webhook_env = "CHURN_WEBHOOK_URL"
on = ["failed", "cancelled", "rejected", "rolled_back", "deployed"]
"""

# Jobs run as tiny local commands: the model directory is prepared by the test, so a
# succeeding job only has to succeed; a failing one fails the way the trainer does.
JOB_COMMANDS = {
    "local/trainer-ok*": [sys.executable, "-c", "print('training done')"],
    "local/trainer-stockout*": [
        sys.executable,
        "-c",
        "import sys; print('error: The zone does not have enough resources available "
        "to fulfill the request.', file=sys.stderr); sys.exit(1)",
    ],
    "local/trainer-fail*": [
        sys.executable,
        "-c",
        "import sys; print('reading gs://data/churn.csv'); "
        "print(\"error: data has no column 'churned'\", file=sys.stderr); sys.exit(1)",
    ],
}


def _csv() -> str:
    """A small learnable table: the label is whether x + y > 1."""
    lines = ["x,y,churned"]
    for i in range(200):
        x, y = (i * 37 % 100) / 100, (i * 61 % 100) / 100
        lines.append(f"{x},{y},{int(x + y > 1)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", name="trained_model")
def trained_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real model directory written by the trainer, copied per test."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "churn.csv"
    data.write_text(_csv())
    model = root / "model"
    subprocess.run(
        [sys.executable, "-m", "trainer.task", f"--data-uri={data}", "--label=churned",
         "--epochs=2", f"--model-dir={model}"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (model / "model.onnx").exists() and (model / "metrics.json").exists()
    return model


class JobCloud:
    """One isolated world for the job-events function."""

    def __init__(
        self,
        gcs: StorageServer,
        tmp: Path,
        model: Path,
        min_value: float = 0.6,
        canary_percent: int = 0,
        transport: str = "grpc",
    ):
        n = next(_ids)
        self.transport = transport
        self.landing, self.state, self.artifacts = f"jl-{n}", f"js-{n}", f"ja-{n}"
        self.model = model
        self.gcs = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": gcs.url},
        )
        for bucket in (self.landing, self.state, self.artifacts):
            self.gcs.create_bucket(bucket)
        text = CONFIG.format(project=PROJECT, region=REGION, landing=self.landing,
                             state=self.state, artifacts=self.artifacts)  # fmt: skip
        text = text.replace("min_value = 0.6", f"min_value = {min_value}")
        if canary_percent:
            text = text.replace(
                "must_beat_champion = true",
                f"must_beat_champion = true\ncanary_percent = {canary_percent}\ncanary_seconds = 1",
            )
        self.config_path = tmp / "pipelines.toml"
        self.config_path.write_text(text)
        self.config = parse_config(text, str(self.config_path))
        self.logs = LogStore(tmp / "logs.jsonl")
        self.logging = LoggingServer(self.logs).start()
        commands = ImageCommands(extra=JOB_COMMANDS)
        runtime_env = {"STORAGE_EMULATOR_HOST": gcs.url}
        self.vertex = VertexServer(
            tmp / "vertex",
            jobs=LocalJobRuntime(PROJECT, self.logs, tmp / "jobs", commands, runtime_env, gpus=[]),
            models=LocalModelRuntime(self.logs, commands, runtime_env, startup_timeout=60),
            logs=self.logs,
        ).start()
        # A secret-looking URL path: the test checks that the URL is never logged.
        self.webhook = WebhookSink(route="/hook/secret-token").start()
        self.log_path = tmp / "job-events.log"
        self.function = FunctionServer(
            "on_job_event",
            env={
                "RETRAIN_CONFIG": str(self.config_path),
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "STORAGE_EMULATOR_HOST": gcs.url,
                **self._api_env(),
                "CHURN_WEBHOOK_URL": self.webhook.url,
            },
            log_path=self.log_path,
        ).start()
        if transport == "grpc":
            connection = VertexConnection(self.vertex.grpc_host, "grpc", emulated=True)
        else:
            connection = VertexConnection(self.vertex.url, "rest", emulated=True)
        self.training = VertexTraining(PROJECT, REGION, connection)
        self.models = connection.client("ModelServiceClient")
        self.endpoints = connection.client("EndpointServiceClient")
        self.predictions = connection.client("PredictionServiceClient")
        self.ledger = Ledger(GcsStateStore(self.gcs, f"gs://{self.state}/state"))
        self._runs = itertools.count(1)

    def _api_env(self) -> dict[str, str]:
        """Vertex AI and Cloud Logging over the transport under test."""
        if self.transport == "grpc":
            return {
                "VERTEX_EMULATOR_HOST": self.vertex.grpc_host,
                "LOGGING_EMULATOR_HOST": self.logging.grpc_host,
            }
        return {"VERTEX_API_ENDPOINT": self.vertex.url, "LOGGING_API_ENDPOINT": self.logging.url}

    def stop(self) -> None:
        self.function.stop()
        self.webhook.stop()
        self.vertex.stop()
        self.logging.stop()

    # jobs ------------------------------------------------------------------------------
    def run_job(
        self,
        image: str = "local/trainer-ok:latest",
        metrics: dict[str, float] | None = None,
        broken_model: bool = False,
        wait: bool = True,
    ) -> aiplatform_v1.CustomJob:
        """Claim a run as the trigger does, prepare its model directory, submit its job
        and (by default) wait for the job to end."""
        run_id = f"r{next(self._runs)}-{int(time.time() * 1000) % 100000}"
        pipeline = self.config.pipelines["churn"]
        plan = RunPlan("churn", run_id, "each", f"gs://{self.landing}/churn/day-{run_id}.csv")
        stored = self.ledger.claim_run(plan, _now())
        assert stored is not None
        spec = build_job(pipeline, plan, self.config.defaults.output_uri)
        spec = replace(spec, worker_pools=(replace(spec.worker_pools[0], image_uri=image),))
        self._write_model_dir(f"runs/churn/{run_id}/model/", metrics, broken_model)
        job = self.training.submit(spec)
        self.ledger.update_run(
            "churn", run_id, stored, {"status": "submitted", "job_name": job.name}
        )
        return self.wait_terminal(job.name) if wait else self.job(job.name)

    def _write_model_dir(self, prefix: str, metrics: dict[str, float] | None, broken: bool) -> None:
        bucket = self.gcs.bucket(self.artifacts)
        for path in self.model.iterdir():
            data = path.read_bytes()
            if path.name == "metrics.json" and metrics is not None:
                data = json.dumps(metrics).encode()
            if path.name == "model.onnx" and broken:
                data = b"this is not an onnx graph"
            bucket.blob(prefix + path.name).upload_from_string(data)

    def job(self, name: str) -> aiplatform_v1.CustomJob:
        return self.training.client.get_custom_job(name=name)

    def wait_terminal(self, name: str, timeout: float = 60) -> aiplatform_v1.CustomJob:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(name)
            if job.state.name in TERMINAL:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {name} did not end within {timeout}s")

    # deliveries --------------------------------------------------------------------------
    def _headers(self, message_id: str, topic: str) -> dict[str, str]:
        return {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{topic}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "content-type": "application/json",
        }

    def message(self, payload: Any, message_id: str, topic: str = "job-events"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        body = {"subscription": f"projects/{PROJECT}/subscriptions/{topic}-sub",
                "message": {"data": base64.b64encode(data).decode(), "attributes": {},
                            "messageId": message_id, "publishTime": "2026-11-26T09:20:11.127Z"}}  # fmt: skip
        return self._headers(message_id, topic), body

    def sink_entry(self, job: aiplatform_v1.CustomJob, message_id: str):
        """The job's real lifecycle end line from the log store, as the sink routes it."""
        job_id = job.name.rsplit("/", 1)[-1]
        ends = [
            entry
            for entry in self.logs.entries()
            if entry["resource"]["labels"].get("job_id") == job_id
            and entry["resource"]["labels"].get("task_name") == "service"
            and entry.get("labels", {}).get("ml.googleapis.com/job_state")
            in ("SUCCEEDED", "FAILED", "CANCELLED")
        ]
        assert ends, f"no lifecycle end line for job {job_id}"
        return self.message(ends[-1], message_id)

    def incident(self, job: aiplatform_v1.CustomJob, message_id: str):
        return self.incident_for_id(job.name.rsplit("/", 1)[-1], message_id)

    def incident_for_id(self, job_id: str, message_id: str):
        labels = {"job_id": job_id, "project_id": PROJECT, "task_name": "service"}
        incident = {"incident_id": f"0.{message_id}", "state": "open",
                    "resource": {"type": "ml_job", "labels": labels},
                    "documentation": {"content": f"Job {job_id} failed."}}  # fmt: skip
        return self.message({"incident": incident, "version": "1.2"}, message_id)

    def tick(self, message_id: str):
        return self.message({"tick": True}, message_id, topic="retrain-ticks")

    def post(self, headers: dict[str, str], body: Any) -> int:
        reply = requests.post(
            self.function.url, headers=headers, data=json.dumps(body), timeout=300
        )
        return reply.status_code

    def deliver_until_acked(self, headers: dict[str, str], body: Any, timeout: float = 120) -> int:
        """Redeliver on non-2xx with a short backoff, as Eventarc does (faster)."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            status = self.post(headers, body)
            if status < 300 or time.monotonic() > deadline:
                return status
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # observations ------------------------------------------------------------------------
    def versions(self) -> list[aiplatform_v1.Model]:
        name = f"projects/{PROJECT}/locations/{REGION}/models/churn"
        try:
            return list(self.models.list_model_versions(name=name))
        except Exception as err:  # NotFound: no model yet
            if "not found" in str(err).lower():
                return []
            raise

    def endpoint(self) -> aiplatform_v1.Endpoint | None:
        parent = f"projects/{PROJECT}/locations/{REGION}"
        found = list(self.endpoints.list_endpoints(parent=parent))
        assert len(found) <= 1, f"more than one endpoint: {[e.name for e in found]}"
        return found[0] if found else None

    def serving(self) -> dict[str, tuple[str, int]]:
        """Deployed model id -> (model version, traffic share)."""
        endpoint = self.endpoint()
        if endpoint is None:
            return {}
        return {
            d.id: (d.model_version_id, endpoint.traffic_split.get(d.id, 0))
            for d in endpoint.deployed_models
        }

    def predict(self, instances: list[Any]) -> aiplatform_v1.PredictResponse:
        endpoint = self.endpoint()
        assert endpoint is not None
        return self.predictions.predict(endpoint=endpoint.name, instances=instances)

    def smoke_instances(self) -> list[Any]:
        return json.loads((self.model / "smoke.json").read_text())["instances"]

    def state_objects(self, prefix: str) -> list[str]:
        return [b.name for b in self.gcs.list_blobs(self.state, prefix=f"state/{prefix}")]

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def errors(self) -> list[str]:
        return [r["message"] for r in self.records() if r.get("severity") == "ERROR"]


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


@pytest.fixture(name="job_cloud", params=["grpc", "rest"])
def job_cloud_fixture(
    gcs: StorageServer, tmp_path: Path, trained_model: Path, request: pytest.FixtureRequest
) -> Iterator[JobCloud]:
    world = JobCloud(gcs, tmp_path, trained_model, transport=request.param)
    yield world
    world.stop()
