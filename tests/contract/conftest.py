"""Contract fixtures: the real trigger function served by functions-framework, against
fake-gcs-server and the localcloud Vertex AI emulator, through fault-injecting proxies."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, storage

from localcloud.functions import FunctionServer
from localcloud.storage import StorageServer
from localcloud.vertex.server import VertexServer
from retrain.adapters.clients import VertexConnection
from tests.contract.faults import FaultProxy, GrpcFaultProxy

PROJECT = "acme-ml"
_ids = itertools.count(1)

CONFIG_TEMPLATE = """
[defaults]
project = "{project}"
region = "us-central1"
state_uri = "gs://{state}/state"
output_uri = "gs://{artifacts}/runs"

[guards]
allowed_buckets = ["{landing}"]
allowed_machine_types = ["g2-standard-8", "n1-standard-8"]
allowed_accelerators = ["NVIDIA_L4", "NVIDIA_TESLA_T4"]
max_accelerator_count = 4
max_replica_count = 4
max_concurrent_jobs = 50

[pipelines.churn]
bucket = "{landing}"
prefix = "churn/"
include = ["*.csv"]
trigger = "marker"

[pipelines.churn.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
args = ["--label=churned", "--epochs=20"]
machine_type = "g2-standard-8"
accelerator_type = "NVIDIA_L4"
accelerator_count = 2
replica_count = 3
strategy = "spot"
timeout_seconds = 14400
service_account = "trainer@acme-ml.iam.gserviceaccount.com"

[pipelines.churn.training.hyperparameters]
lr = 0.001
batch_size = 256

[pipelines.events]
bucket = "{landing}"
prefix = "events/"
include = ["*.csv"]
trigger = "each"

[pipelines.events.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"

[pipelines.clicks]
bucket = "{landing}"
prefix = "clicks/"
include = ["*.csv"]
trigger = "quiet"
quiet_seconds = {quiet_seconds}

[pipelines.clicks.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"
"""


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with StorageServer(root=tmp_path_factory.mktemp("gcs")) as server:
        yield server


class Cloud:
    """One isolated world: fresh buckets, a Vertex emulator, the served trigger function."""

    def __init__(
        self,
        gcs: StorageServer,
        tmp: Path,
        quiet_seconds: int = 300,
        faults: bool = True,
        transport: str = "grpc",
    ):
        n = next(_ids)
        self.transport = transport
        tmp.mkdir(parents=True, exist_ok=True)
        self.landing, self.state, self.artifacts = f"landing-{n}", f"state-{n}", f"artifacts-{n}"
        self.gcs_client = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": gcs.url},
        )
        for bucket in (self.landing, self.state, self.artifacts):
            self.gcs_client.create_bucket(bucket)
        self.config_path = tmp / "pipelines.toml"
        self.config_path.write_text(
            CONFIG_TEMPLATE.format(
                project=PROJECT,
                landing=self.landing,
                state=self.state,
                artifacts=self.artifacts,
                quiet_seconds=quiet_seconds,
            )
        )
        self.vertex = VertexServer(tmp / "vertex").start()
        self.gcs_faults = FaultProxy(gcs.url).start()
        storage_url = self.gcs_faults.url if faults else gcs.url
        vertex_env: dict[str, str]
        if transport == "grpc":
            self.vertex_faults: FaultProxy | GrpcFaultProxy = GrpcFaultProxy(
                self.vertex.grpc_host
            ).start()
            host = self.vertex_faults.host_port if faults else self.vertex.grpc_host
            vertex_env = {"VERTEX_EMULATOR_HOST": host}
        else:
            self.vertex_faults = FaultProxy(self.vertex.url).start()
            url = self.vertex_faults.url if faults else self.vertex.url
            vertex_env = {"VERTEX_API_ENDPOINT": url}
        self.log_path = tmp / "trigger.log"
        self.function = FunctionServer(
            "trigger",
            env={
                "RETRAIN_CONFIG": str(self.config_path),
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "STORAGE_EMULATOR_HOST": storage_url,
                **vertex_env,
            },
            log_path=self.log_path,
        ).start()
        self.jobs_client = vertex_client(self.vertex, transport, "JobServiceClient")

    def creates_job(self, method: str, path: str, _body: bytes) -> bool:
        """A fault rule's match: the call that creates a CustomJob, on this transport."""
        if self.transport == "grpc":
            return path.endswith("/CreateCustomJob")
        return method == "POST" and "/customJobs" in path and ":cancel" not in path

    def stop(self) -> None:
        self.function.stop()
        self.gcs_faults.stop()
        self.vertex_faults.stop()
        self.vertex.stop()

    # deliveries --------------------------------------------------------------------------
    def post(self, headers: dict[str, str], body: Any) -> int:
        response = requests.post(
            self.function.url, headers=headers, data=json.dumps(body), timeout=120
        )
        return response.status_code

    def deliver_until_acked(self, headers: dict[str, str], body: Any, attempts: int = 20) -> int:
        """Redeliver on non-2xx, as Eventarc does (without its backoff)."""
        for _ in range(attempts):
            status = self.post(headers, body)
            if status < 300:
                return status
        return status

    def deliver_concurrently(
        self, deliveries: list[tuple[dict[str, str], Any]], workers: int = 16
    ) -> list[int]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda d: self.deliver_until_acked(*d), deliveries))

    def finalize(
        self, name: str, size: int = 100, generation: int = 1, event_id: str | None = None
    ):
        headers = {
            "ce-id": event_id or f"{name}#{generation}",
            "ce-source": f"//storage.googleapis.com/projects/_/buckets/{self.landing}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.storage.object.v1.finalized",
            "ce-subject": f"objects/{name}",
            "ce-time": "2026-11-26T09:14:03.512Z",
            "content-type": "application/json",
        }
        body = {"kind": "storage#object", "bucket": self.landing, "name": name,
                "generation": str(generation), "metageneration": "1", "size": str(size),
                "contentType": "text/csv"}  # fmt: skip
        return headers, body

    def message(self, payload: Any, message_id: str, topic: str = "retrain-requests"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "ce-id": message_id,
            "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{topic}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "content-type": "application/json",
        }
        body = {"subscription": f"projects/{PROJECT}/subscriptions/{topic}-sub",
                "message": {"data": base64.b64encode(data).decode(), "attributes": {},
                            "messageId": message_id, "publishTime": "2026-11-26T09:20:11.127Z"}}  # fmt: skip
        return headers, body

    def tick(self, message_id: str):
        return self.message({"tick": True}, message_id, topic="retrain-ticks")

    # observations ------------------------------------------------------------------------
    def jobs(self) -> list[aiplatform_v1.CustomJob]:
        parent = f"projects/{PROJECT}/locations/us-central1"
        return list(self.jobs_client.list_custom_jobs(parent=parent))

    def state_objects(self, prefix: str) -> list[str]:
        return [b.name for b in self.gcs_client.list_blobs(self.state, prefix=f"state/{prefix}")]

    def run_record(self, pipeline: str) -> dict[str, Any]:
        (name,) = self.state_objects(f"runs/{pipeline}/")
        return json.loads(self.gcs_client.bucket(self.state).blob(name).download_as_bytes())

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def errors(self) -> list[str]:
        return [r["message"] for r in self.logs() if r.get("severity") == "ERROR"]


def vertex_client(server: VertexServer, transport: str, name: str) -> Any:
    """An official `aiplatform_v1` client on one of the emulator's two fronts."""
    if transport == "grpc":
        return VertexConnection(server.grpc_host, "grpc", emulated=True).client(name)
    return VertexConnection(server.url, "rest", emulated=True).client(name)


# The functions talk to Vertex AI over the transport production uses (gRPC) and over REST:
# each contract test runs on both.
TRANSPORTS = ["grpc", "rest"]


@pytest.fixture(params=TRANSPORTS)
def cloud(gcs: StorageServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    world = Cloud(gcs, tmp_path, transport=request.param)
    yield world
    world.stop()


@pytest.fixture(params=TRANSPORTS)
def quiet_cloud(
    gcs: StorageServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cloud]:
    world = Cloud(gcs, tmp_path, quiet_seconds=2, transport=request.param)
    yield world
    world.stop()
