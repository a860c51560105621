"""The whole loop for reliability tests: both functions (trigger and job-events) served by
functions-framework, fake-gcs-server, the Vertex AI emulator running jobs as local
processes, the Cloud Logging emulator, the log sink (the very filter Terraform deploys)
delivering job ends to job-events as Eventarc does (until acked, with duplicates), a
scheduler ticking both functions, and a webhook receiver — with a fault-injecting proxy in
front of Cloud Storage, Vertex AI (gRPC, production's transport) and the webhook."""

from __future__ import annotations

import base64
import itertools
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, storage

from localcloud.functions import FunctionServer
from localcloud.logging_api import LoggingServer
from localcloud.logstore import LogStore
from localcloud.router import SHARED_FILTER_PATH, LogRouter
from localcloud.storage import StorageServer
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime import DeployedServer
from localcloud.vertex.runtime_local import LocalJobRuntime, LocalModelRuntime
from localcloud.vertex.server import VertexServer
from localcloud.webhook import WebhookSink
from retrain.adapters.clients import VertexConnection
from tests.contract.faults import Chaos, FaultProxy, GrpcFaultProxy

PROJECT = "acme-ml"
REGION = "us-central1"
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
_ids = itertools.count(1)
_ON_PURPOSE = ("retrain.errors.TransientError", "retrain.errors.ConfigError")
_NOTICE = re.compile(r"^\[retrain\] (?P<pipeline>\S+): run (?P<run>[0-9a-f]+) (?P<kind>.+)$")


def config_header(*, max_concurrent_jobs: int) -> str:
    """The pipelines config's defaults and guards for a Loop (its placeholders filled by
    the Loop)."""
    return f"""
[defaults]
project = "{{project}}"
region = "{{region}}"
state_uri = "gs://{{state}}/state"
output_uri = "gs://{{artifacts}}/runs"

[guards]
allowed_buckets = ["{{landing}}"]
max_concurrent_jobs = {max_concurrent_jobs}
"""


# A marker pipeline whose jobs write a real model, deployed behind a real model server.
DEPLOYING_PIPELINE = """
[pipelines.churn]
bucket = "{landing}"
prefix = "churn/"
include = ["*.csv"]
trigger = "marker"

[pipelines.churn.training]
image_uri = "local/model:latest"
machine_type = "n1-standard-4"

[pipelines.churn.deploy]
model = "churn"
endpoint = "churn"
serving_image_uri = "local/serving:latest"
metric = "val_accuracy"
min_value = 0.5
must_beat_champion = false

[pipelines.churn.notify]
webhook_env = "RETRAIN_WEBHOOK_URL"
on = ["deployed", "failed", "rejected", "rolled_back"]
"""


class _CountingModels(LocalModelRuntime):
    """The local model runtime, keeping the id of every model it was asked to deploy."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deployed: list[str] = []

    def deploy(self, deployed_model_id: str, model: aiplatform_v1.Model) -> DeployedServer:
        self.deployed.append(deployed_model_id)
        return super().deploy(deployed_model_id, model)


def job_commands(model: Path | None, seconds: float) -> dict[str, list[str]]:
    """Jobs as tiny local commands: `ok` runs for `seconds`; `model` copies a trained
    model directory into AIP_MODEL_DIR (as the trainer writes it); `fail` fails."""
    ok = f"import time; time.sleep({seconds})"
    copy = (
        "import os, pathlib, time; from google.cloud import storage; "
        "from google.auth.credentials import AnonymousCredentials; "
        f"time.sleep({seconds}); d = os.environ['AIP_MODEL_DIR'][5:]; "
        "b, _, p = d.partition('/'); "
        "c = storage.Client(project='x', credentials=AnonymousCredentials(), "
        "client_options={'api_endpoint': os.environ['STORAGE_EMULATOR_HOST']}); "
        f"[c.bucket(b).blob(p.rstrip('/') + '/' + f.name).upload_from_filename(str(f)) "
        f"for f in pathlib.Path({str(model)!r}).iterdir()]"
    )
    fail = "import sys; print('error: data has no column churned', file=sys.stderr); sys.exit(1)"
    commands = {
        "local/ok*": [sys.executable, "-c", ok],
        "local/fail*": [sys.executable, "-c", fail],
    }
    if model is not None:
        commands["local/model*"] = [sys.executable, "-c", copy]
    return commands


class Loop:
    """One isolated world. `chaos` (a rate) puts seeded random faults on the functions'
    calls to Cloud Storage, Vertex AI and the webhook."""

    def __init__(
        self,
        gcs: StorageServer,
        tmp: Path,
        config: str,
        *,
        model: Path | None = None,
        job_seconds: float = 0.2,
        chaos: float = 0.0,
        seed: int = 1,
        tick_s: float = 0.5,
        duplicates: int = 1,
    ):
        n = next(_ids)
        tmp.mkdir(parents=True, exist_ok=True)
        self.landing, self.state, self.artifacts = f"rl-{n}", f"rs-{n}", f"ra-{n}"
        self.gcs = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": gcs.url},
        )
        for bucket in (self.landing, self.state, self.artifacts):
            self.gcs.create_bucket(bucket)
        self.config_path = tmp / "pipelines.toml"
        self.config_path.write_text(
            config.format(
                project=PROJECT,
                region=REGION,
                landing=self.landing,
                state=self.state,
                artifacts=self.artifacts,
            )
        )
        self.logs = LogStore(tmp / "logs.jsonl")
        self.logging = LoggingServer(self.logs).start()
        commands = ImageCommands(extra=job_commands(model, job_seconds))
        runtime_env = {"STORAGE_EMULATOR_HOST": gcs.url}
        self.model_runtime = _CountingModels(self.logs, commands, runtime_env, startup_timeout=60)
        self.vertex = VertexServer(
            tmp / "vertex",
            jobs=LocalJobRuntime(PROJECT, self.logs, tmp / "jobs", commands, runtime_env, gpus=[]),
            models=self.model_runtime,
            logs=self.logs,
        ).start()
        self.webhook = WebhookSink(route="/hook/secret-token").start()
        self.chaos = {
            "gcs": Chaos(chaos, seed),
            "vertex": Chaos(chaos, seed + 1),
            # The webhook sees a few calls only: a higher rate, so that its faults show.
            "webhook": Chaos(min(1.0, 2 * chaos), seed + 2),
        }
        self.gcs_proxy = FaultProxy(gcs.url, chaos=self.chaos["gcs"]).start()
        self.vertex_proxy = GrpcFaultProxy(self.vertex.grpc_host, chaos=self.chaos["vertex"])
        self.vertex_proxy.start()
        hook_base = self.webhook.url.split("/hook/")[0]
        self.webhook_proxy = FaultProxy(hook_base, chaos=self.chaos["webhook"]).start()
        env = {
            "RETRAIN_CONFIG": str(self.config_path),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "STORAGE_EMULATOR_HOST": self.gcs_proxy.url,
            "VERTEX_EMULATOR_HOST": self.vertex_proxy.host_port,
            "LOGGING_EMULATOR_HOST": self.logging.grpc_host,
            "RETRAIN_WEBHOOK_URL": self.webhook_proxy.url + "/hook/secret-token",
        }
        self.trigger = FunctionServer("trigger", env=env, log_path=tmp / "trigger.log").start()
        self.job_events = FunctionServer(
            "on_job_event", env=env, log_path=tmp / "job-events.log"
        ).start()
        connection = VertexConnection(self.vertex.grpc_host, "grpc", emulated=True)
        self.jobs_client = connection.client("JobServiceClient")
        self.models = connection.client("ModelServiceClient")
        self.endpoints = connection.client("EndpointServiceClient")
        self.attempts: Counter[str] = Counter()  # deliveries posted, per function
        self.refused: Counter[str] = Counter()  # of those, answered non-2xx (redelivered)
        self.failures: list[str] = []  # deliveries never acknowledged
        # One pool per subscription, as Eventarc pushes each trigger's messages on its own.
        self._pools = {"trigger": ThreadPoolExecutor(12), "job-events": ThreadPoolExecutor(12)}
        self._pending: list[Future[int]] = []
        self._pending_lock = threading.Lock()
        self._duplicates = duplicates
        self._stop = threading.Event()
        self.router = LogRouter(
            self.logs, SHARED_FILTER_PATH.read_text(), self._route, retry_interval_s=0.2
        )
        self.router.start()
        self._ticks = itertools.count(1)
        self.ticks = 0
        self.ticks_failed = 0
        self._ticker = threading.Thread(target=self._tick_loop, args=(tick_s,), daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self._ticker.join()
        self.router.stop()
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for piece in (self.trigger, self.job_events):
            piece.stop()
        for proxy in (self.gcs_proxy, self.vertex_proxy, self.webhook_proxy):
            proxy.stop()
        self.webhook.stop()
        self.vertex.stop()
        self.logging.stop()

    # deliveries, as Eventarc makes them ------------------------------------------------------
    def _post(self, target: str, headers: dict[str, str], body: Any) -> int:
        url = self.trigger.url if target == "trigger" else self.job_events.url
        self.attempts[target] += 1
        try:
            status = requests.post(url, headers=headers, data=json.dumps(body), timeout=120)
        except requests.RequestException:
            self.refused[target] += 1
            return 599
        if status.status_code >= 300:
            self.refused[target] += 1
        return status.status_code

    def deliver_until_acked(
        self, target: str, headers: dict[str, str], body: Any, timeout: float = 300
    ) -> int:
        """Redeliver on non-2xx with a short backoff, as Eventarc does (faster)."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            status = self._post(target, headers, body)
            if status < 300:
                return status
            if time.monotonic() > deadline:
                self.failures.append(f"{target} {headers.get('ce-id')}: {status}")
                return status
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def send(self, target: str, delivery: tuple[dict[str, str], Any], copies: int = 1) -> None:
        """Deliver in the background (each copy until acked): at-least-once delivery."""
        with self._pending_lock:
            for _ in range(copies):
                pool = self._pools[target]
                self._pending.append(pool.submit(self.deliver_until_acked, target, *delivery))

    def drain(self, timeout: float = 300) -> None:
        """Wait for every delivery sent so far to be acknowledged (or given up)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._pending_lock:
                left = [f for f in self._pending if not f.done()]
                self._pending = left
            if not left:
                return
            assert time.monotonic() < deadline, f"{len(left)} deliveries still in flight"
            time.sleep(0.1)

    def _route(self, data: bytes, _attributes: dict[str, str]) -> None:
        """The log sink's publish: the job end goes to job-events, duplicated."""
        message_id = f"sink-{next(self._ticks)}"
        self.send("job-events", self.message(data, message_id, "job-events"), self._duplicates)

    def _tick_loop(self, interval: float) -> None:
        """Cloud Scheduler: a tick to both functions every `interval`, one at a time. A tick
        that fails is not redelivered here: the next one does the same work."""
        while not self._stop.wait(interval):
            n = next(self._ticks)
            for target in ("trigger", "job-events"):
                self.ticks += 1
                tick = self.message(b'{"tick": true}', f"tick-{n}", "retrain-ticks")
                if self._post(target, *tick) >= 300:
                    self.ticks_failed += 1

    def finalize(self, name: str, size: int = 100, generation: int = 1):
        headers = {
            "ce-id": f"{name}#{generation}",
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

    # observations ------------------------------------------------------------------------------
    def jobs(self) -> list[aiplatform_v1.CustomJob]:
        parent = f"projects/{PROJECT}/locations/{REGION}"
        return list(self.jobs_client.list_custom_jobs(parent=parent))

    def state_objects(self, prefix: str) -> list[str]:
        return [b.name for b in self.gcs.list_blobs(self.state, prefix=f"state/{prefix}")]

    def state_doc(self, name: str) -> dict[str, Any]:
        return json.loads(self.gcs.bucket(self.state).blob(name).download_as_bytes())

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run records by run id."""
        return {
            name.rsplit("/", 1)[-1].removesuffix(".json"): self.state_doc(name)
            for name in self.state_objects("runs/")
        }

    def versions(self, model: str) -> list[aiplatform_v1.Model]:
        name = f"projects/{PROJECT}/locations/{REGION}/models/{model}"
        try:
            return list(self.models.list_model_versions(name=name))
        except Exception as err:  # NotFound: no model yet
            if "not found" in str(err).lower():
                return []
            raise

    def notices(self) -> list[tuple[str, str, str]]:
        """(pipeline, run id, kind) of every webhook message received."""
        found = []
        for text in self.webhook.texts():
            match = _NOTICE.match(text.splitlines()[0])
            if match:
                found.append((match["pipeline"], match["run"], match["kind"]))
        return found

    def function_logs(self, target: str) -> list[dict[str, Any]]:
        piece = self.trigger if target == "trigger" else self.job_events
        assert piece.log_path is not None
        records = []
        for line in Path(piece.log_path).read_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def unhandled(self) -> list[str]:
        """The final lines of exceptions either function did not handle on purpose. A
        delivery retried on purpose raises the product's TransientError or ConfigError
        (HTTP 500, redelivered); anything else escaping is a defect."""
        found = []
        for piece in (self.trigger, self.job_events):
            assert piece.log_path is not None
            text = Path(piece.log_path).read_text()
            for block in text.split("Traceback (most recent call last):")[1:]:
                if "The above exception was the direct cause" in block or (
                    "During handling of the above exception" in block
                ):
                    continue  # the cause of a later exception: judged by that one
                final = next((ln for ln in block.splitlines()[1:] if ln and ln[0] != " "), "")
                if not final.startswith(_ON_PURPOSE):
                    found.append(final)
        return found

    def deployments(self) -> int:
        """Models Vertex deployed to an endpoint, counted where Vertex deploys them: a
        deploy whose answer was lost and that the function found on redelivery counts
        once, a second deploy of the same version counts twice."""
        return len(self.model_runtime.deployed)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not reached within {timeout}s: {what}"
            time.sleep(0.25)
