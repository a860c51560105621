"""The supervisor with real pieces: a function process, fake-gcs-server, the Pub/Sub
server and a model server are killed and come back on the same port, and what they held
(objects, undelivered messages, the endpoint's route) is still there."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, pubsub_v1, storage

from localcloud.functions import FunctionServer
from localcloud.procs import ChildRecords, port_is_open, process_identity
from localcloud.pubsub.server import PubSubServer
from localcloud.storage import StorageServer
from localcloud.supervisor import Supervisor
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalModelRuntime

WAIT = 60.0
PROJECT = "acme-ml"

CONFIG = """
[defaults]
project = "acme-ml"
state_uri = "gs://sup-state/state"
output_uri = "gs://sup-artifacts/runs"

[guards]
allowed_buckets = ["sup-landing"]

[pipelines.churn]
bucket = "sup-landing"
prefix = "churn/"
trigger = "marker"

[pipelines.churn.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"
"""

SERVER = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply({"predictions": [os.getpid()]})

HTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""


def poll(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


# ------------------------------------------------------------------ the supervisor itself


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_restarts_back_off_and_a_crash_loop_is_left_down_and_reported() -> None:
    clock, lines = Clock(), []
    processes: list[subprocess.Popen[bytes]] = []

    def spawn() -> None:  # a piece that dies as soon as it starts
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        process.wait()
        processes.append(process)

    spawn()
    supervisor = Supervisor(lines.append, min_backoff=0.5, max_per_minute=3, clock=clock)
    supervisor.watch("crasher", lambda: processes[-1].poll() is None, spawn)

    supervisor.check()  # the first death: restarted at once
    assert len(processes) == 2
    assert lines == ["localcloud: crasher died; restarting it",
                     "localcloud: crasher restarted (1 in the last minute)"]  # fmt: skip
    supervisor.check()  # dead again: waits 0.5 s
    assert len(processes) == 2
    clock.now = 0.5
    supervisor.check()
    assert len(processes) == 3
    supervisor.check()  # then 1 s
    clock.now = 1.4
    supervisor.check()
    assert len(processes) == 3
    clock.now = 1.5
    supervisor.check()
    assert len(processes) == 4
    supervisor.check()  # a fourth death within the minute: left down, said once
    clock.now = 4.0  # past its 2 s backoff, but 3 restarts in the minute already
    supervisor.check()
    clock.now = 30.0
    supervisor.check()
    assert len(processes) == 4
    looping = [line for line in lines if "crash-looping" in line]
    assert looping == [
        "localcloud: crasher is crash-looping (3 restarts in the last 60s): left down for"
        " 56s; see its log"
    ]
    clock.now = 60.5  # the first restart left the window
    supervisor.check()
    assert len(processes) == 5


# ------------------------------------------------------------------ real pieces


@pytest.fixture
def children(tmp_path: Path) -> ChildRecords:
    return ChildRecords(tmp_path / "children")


@pytest.fixture
def gcs(tmp_path: Path, children: ChildRecords) -> Iterator[StorageServer]:
    server = StorageServer(root=tmp_path / "gcs", children=children).start()
    yield server
    server.stop()


def gcs_client(server: StorageServer) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )


def tick(message_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {
        "ce-id": message_id,
        "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/retrain-ticks",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "content-type": "application/json",
    }
    data = base64.b64encode(b'{"tick": true}').decode()
    body = {
        "subscription": f"projects/{PROJECT}/subscriptions/ticks",
        "message": {"data": data, "messageId": message_id,
                    "publishTime": "2026-12-01T09:20:11.127Z"},
    }  # fmt: skip
    return headers, body


def deliver(url: str, message_id: str) -> int:
    headers, body = tick(message_id)
    try:
        return requests.post(url, headers=headers, data=json.dumps(body), timeout=30).status_code
    except requests.ConnectionError:
        return 503  # nothing listens: Eventarc retries such a delivery too


def test_a_killed_function_and_a_killed_storage_server_come_back_on_their_ports(
    tmp_path: Path, gcs: StorageServer, children: ChildRecords
) -> None:
    client = gcs_client(gcs)
    for bucket in ("sup-state", "sup-artifacts", "sup-landing"):
        client.create_bucket(bucket)
    client.bucket("sup-landing").blob("churn/kept.csv").upload_from_string(b"a,b\n1,2\n")
    config = tmp_path / "pipelines.toml"
    config.write_text(CONFIG)
    function = FunctionServer(
        "trigger",
        env={"RETRAIN_CONFIG": str(config), "GOOGLE_CLOUD_PROJECT": PROJECT,
             "STORAGE_EMULATOR_HOST": gcs.url},
        log_path=tmp_path / "trigger.log",
        children=children,
    ).start()  # fmt: skip
    lines: list[str] = []
    supervisor = Supervisor(lines.append, interval=0.1)
    supervisor.watch("function trigger", function.alive, function.restart)
    supervisor.watch("fake-gcs-server", gcs.alive, gcs.restart)
    supervisor.start()
    try:
        assert deliver(function.url, "before") == 200
        url, old_pid = function.url, function.pid
        os.killpg(old_pid, signal.SIGKILL)  # a lost instance: no cleanup
        poll(lambda: deliver(url, "after") == 200, "a delivery after the function died")
        assert function.url == url and function.pid != old_pid
        assert "localcloud: function trigger died; restarting it" in lines

        old_gcs = gcs.pid
        os.kill(old_gcs, signal.SIGKILL)
        poll(lambda: gcs.pid != old_gcs and gcs.alive(), "fake-gcs-server restarted")
        blob = gcs_client(gcs).bucket("sup-landing").blob("churn/kept.csv")
        assert blob.download_as_bytes() == b"a,b\n1,2\n"  # on disk, kept across the crash
        assert deliver(url, "after-gcs") == 200  # the function reaches the new server
        assert "localcloud: fake-gcs-server died; restarting it" in lines
        records = {json.loads(p.read_text())["what"] for p in children.directory.iterdir()}
        assert records == {"function trigger", "fake-gcs-server"}  # the dead ones are gone
    finally:
        supervisor.stop()
        function.stop()


def test_pubsub_server_restarted_delivers_what_was_published_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PubSubServer(tmp_path / "pubsub").start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.host_port)
    lines: list[str] = []
    supervisor = Supervisor(lines.append, interval=0.1)
    supervisor.watch("Pub/Sub", lambda: server.running, server.restart)
    supervisor.start()
    try:
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(PROJECT, "retrain-requests")
        subscription = subscriber.subscription_path(PROJECT, "requests")
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        published = {
            publisher.publish(topic, f"request {i}".encode()).result(timeout=30) for i in range(3)
        }
        port = server.port
        server.stop()  # the server goes away with three messages nobody has pulled
        poll(lambda: server.running, "the Pub/Sub server restarted")
        assert server.port == port
        received: dict[str, bytes] = {}

        def pulled_all() -> bool:
            try:
                response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
            except exceptions.GoogleAPICallError:
                return False
            received.update(
                {m.message.message_id: m.message.data for m in response.received_messages}
            )
            return set(received) == published

        poll(pulled_all, "the messages published before the restart")
        assert sorted(received.values()) == [b"request 0", b"request 1", b"request 2"]
        assert "localcloud: Pub/Sub died; restarting it" in lines
    finally:
        supervisor.stop()
        server.stop()


def test_a_killed_model_server_comes_back_on_its_port_and_predicts_again(
    tmp_path: Path, children: ChildRecords
) -> None:
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER))
    commands = ImageCommands(extra={"local/server:*": [sys.executable, str(script)]})
    lines: list[str] = []
    models = LocalModelRuntime(
        None, commands, {}, startup_timeout=WAIT, children=children, report=lines.append
    )
    model = aiplatform_v1.Model(
        artifact_uri="gs://sup-artifacts/m/1/model/",
        container_spec=aiplatform_v1.ModelContainerSpec(
            image_uri="local/server:1", health_route="/health", predict_route="/predict"
        ),
    )
    try:
        server = models.deploy("dm-1", model)
        url = server.url + server.predict_route
        first = predict(url)
        assert first is not None
        os.killpg(first, signal.SIGKILL)
        second = poll(lambda: predict(url), "a prediction after the model server died")
        assert second != first
        assert lines[0] == "localcloud: the model server of deployed model dm-1 died; restarting it"
        assert process_identity(first) is None
        models.undeploy("dm-1")
        port = int(server.url.rsplit(":", 1)[1])
        assert not port_is_open("127.0.0.1", port)
        assert list(children.directory.iterdir()) == []
    finally:
        models.close()


def predict(url: str) -> int | None:
    """The serving process's pid, or None while nothing answers."""
    request = urllib.request.Request(
        url, data=b'{"instances": [[1]]}', headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(json.loads(response.read())["predictions"][0])
    except OSError:
        return None


def test_leftovers_of_a_killed_localcloud_are_stopped_and_their_records_dropped(
    tmp_path: Path, children: ChildRecords
) -> None:
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    children.add(stray, "job 42 replica workerpool0-0")
    finished = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    children.add(finished, "function trigger")
    finished.wait()

    stopped = children.stop_leftovers()

    assert stopped == [f"job 42 replica workerpool0-0 (pid {stray.pid})"]
    assert stray.wait(timeout=WAIT) == -signal.SIGKILL
    assert list(children.directory.iterdir()) == []


# ------------------------------------------------------------------ whole-localcloud restarts

RERUNNABLE = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
with (out / "runs").open("a") as runs:
    runs.write(f"{os.getpid()}\\n")
# The first run is stopped with localcloud while it waits; the rerun finds `finish`.
deadline = time.monotonic() + 120
while not (out / "finish").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_job_in_flight_at_down_runs_again_under_its_name_and_ends_once(
    tmp_path: Path, children: ChildRecords
) -> None:
    from localcloud.logstore import LogStore
    from localcloud.vertex.jobs import RERUN_MESSAGE
    from localcloud.vertex.runtime_local import LocalJobRuntime
    from localcloud.vertex.server import VertexServer
    from retrain.adapters.clients import VertexConnection

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "rerunnable.py"
    script.write_text(textwrap.dedent(RERUNNABLE))
    commands = ImageCommands(extra={"local/trainer:*": [sys.executable, str(script), str(out)]})
    logs = LogStore(tmp_path / "logs" / "entries.jsonl")

    def vertex() -> VertexServer:
        runtime = LocalJobRuntime(
            "acme", logs, tmp_path / "jobs", commands, {}, gpus=[], children=children
        )
        return VertexServer(tmp_path / "vertex", jobs=runtime, logs=logs).start()

    def state(server: VertexServer, name: str) -> int:
        client = VertexConnection(server.grpc_host, "grpc", emulated=True).client(
            "JobServiceClient"
        )
        return int(client.get_custom_job(name=name).state)

    S = aiplatform_v1.JobState
    first = vertex()
    client = VertexConnection(first.grpc_host, "grpc", emulated=True).client("JobServiceClient")
    job = client.create_custom_job(
        parent="projects/acme/locations/us-central1",
        custom_job=aiplatform_v1.CustomJob(
            display_name="rerun-me",
            job_spec=aiplatform_v1.CustomJobSpec(
                worker_pool_specs=[
                    aiplatform_v1.WorkerPoolSpec(
                        machine_spec=aiplatform_v1.MachineSpec(machine_type="n1-standard-4"),
                        replica_count=1,
                        container_spec=aiplatform_v1.ContainerSpec(image_uri="local/trainer:1"),
                    )
                ]
            ),
        ),
    )
    poll(lambda: state(first, job.name) == S.JOB_STATE_RUNNING, "the job running")
    poll(lambda: (out / "runs").exists(), "the first run started")
    first.stop()  # `down` in the middle of the job
    (out / "finish").write_text("")

    second = vertex()
    try:
        poll(lambda: state(second, job.name) == S.JOB_STATE_SUCCEEDED, "the rerun succeeding")
    finally:
        second.stop()
    assert len((out / "runs").read_text().split()) == 2  # started twice, under one name
    job_id = job.name.rsplit("/", 1)[1]
    service = [
        e["jsonPayload"]["message"]
        for e in logs.entries()
        if e["resource"]["labels"].get("job_id") == job_id
        and e["resource"]["labels"]["task_name"] == "service"
    ]
    assert service.count(RERUN_MESSAGE) == 1
    assert service.count("Job completed successfully.") == 1
    assert not [line for line in service if line.startswith("Job failed")]
