"""The eventarc bridge end to end: fake-gcs-server or the official publisher → local
Pub/Sub → push → bridge → a real functions-framework CloudEvent function."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from localcloud.eventarc import EventarcBridge, Route, connect, to_cloudevent
from localcloud.procs import free_port, port_is_open, stop_process, wait_until
from localcloud.pubsub import PubSubServer
from localcloud.storage import StorageServer

PROJECT = "local-project"

# Records every CloudEvent it gets; fails the first delivery of events whose data asks for it.
FUNCTION = textwrap.dedent(
    """
    import base64
    import json
    import os
    from pathlib import Path

    import functions_framework

    RECORDS = Path(os.environ["RECORDS_DIR"])


    @functions_framework.cloud_event
    def f(ce):
        record = {
            "type": ce["type"],
            "source": ce["source"],
            "id": ce["id"],
            "subject": ce.get("subject"),
            "time": ce.get("time"),
            "data": ce.data,
        }
        with open(RECORDS / "events.jsonl", "a") as out:
            out.write(json.dumps(record) + "\\n")
        message = ce.data.get("message") or {}
        payload = base64.b64decode(message.get("data") or "") or b"{}"
        marker = RECORDS / f"failed-{ce['id']}"
        if json.loads(payload).get("fail_first") and not marker.exists():
            marker.touch()
            raise RuntimeError("failing the first delivery on purpose")
    """
)


def poll(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Function:
    """A functions-framework process serving FUNCTION; `events()` reads what it recorded."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True)
        source = workdir / "main.py"
        source.write_text(FUNCTION)
        self.records = workdir
        self.port = free_port()
        binary = Path(sys.executable).parent / "functions-framework"
        command = [str(binary), "--target", "f", "--source", str(source), "--port", str(self.port)]
        env = {"RECORDS_DIR": str(workdir), "PATH": str(binary.parent)}
        self._process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(
            lambda: port_is_open("127.0.0.1", self.port),
            what="functions-framework",
            process=self._process,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def events(self) -> list[dict[str, Any]]:
        path = self.records / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def stop(self) -> None:
        stop_process(self._process)


@pytest.fixture(scope="module")
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    running = Function(tmp_path_factory.mktemp("function") / "src")
    yield running
    running.stop()


@pytest.fixture
def pubsub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubServer]:
    with PubSubServer(tmp_path / "pubsub") as running:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", running.host_port)
        yield running


@pytest.fixture
def bridge() -> Iterator[EventarcBridge]:
    with EventarcBridge() as running:
        yield running


def events_with(function: Function, **match: Any) -> list[dict[str, Any]]:
    return [e for e in function.events() if all(e.get(k) == v for k, v in match.items())]


def test_finalized_object_reaches_the_function_as_a_storage_event(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pubsub_server: PubSubServer,
    bridge: EventarcBridge,
    function: Function,
) -> None:
    connect(
        pubsub_server.host_port,
        PROJECT,
        "gcs-notifications",
        "trigger-storage",
        bridge,
        "trigger-storage",
        function.url,
        "storage",
        min_backoff=0.1,
        max_backoff=1,
    )
    with StorageServer(
        root=tmp_path / "gcs",
        pubsub_project=PROJECT,
        pubsub_topic="gcs-notifications",
        pubsub_host=pubsub_server.host_port,
    ) as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        blob = client.create_bucket("landing-e2e").blob("churn/2026/part-0001.csv")
        blob.upload_from_string("a,b\n1,2\n")

        source = "//storage.googleapis.com/projects/_/buckets/landing-e2e"
        poll(lambda: bool(events_with(function, source=source)), "the storage event")

    (event,) = events_with(function, source=source)
    assert event["type"] == "google.cloud.storage.object.v1.finalized"
    assert event["subject"] == "objects/churn/2026/part-0001.csv"
    assert event["data"]["name"] == "churn/2026/part-0001.csv"
    assert event["data"]["bucket"] == "landing-e2e"
    assert event["data"]["generation"] == str(blob.generation)
    assert event["data"]["size"] == "8"
    assert event["time"]


def test_published_message_reaches_the_function_as_message_published(
    pubsub_server: PubSubServer, bridge: EventarcBridge, function: Function
) -> None:
    connect(
        pubsub_server.host_port,
        PROJECT,
        "retrain-ticks",
        "trigger-ticks",
        bridge,
        "trigger-ticks",
        function.url,
        "pubsub",
    )
    publisher = pubsub_v1.PublisherClient()
    message_id = publisher.publish(
        f"projects/{PROJECT}/topics/retrain-ticks", b'{"tick": true}'
    ).result(timeout=10)

    source = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/retrain-ticks"
    poll(lambda: bool(events_with(function, id=message_id, source=source)), "the event")

    (event,) = events_with(function, id=message_id, source=source)
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event["data"]["subscription"] == f"projects/{PROJECT}/subscriptions/trigger-ticks"
    message = event["data"]["message"]
    assert json.loads(base64.b64decode(message["data"])) == {"tick": True}
    assert message["messageId"] == message_id
    assert event["time"] == message["publishTime"]


def test_a_failing_function_gets_the_event_again(
    pubsub_server: PubSubServer, bridge: EventarcBridge, function: Function
) -> None:
    connect(
        pubsub_server.host_port,
        PROJECT,
        "retrain-requests",
        "trigger-requests",
        bridge,
        "trigger-requests",
        function.url,
        "pubsub",
        dead_letter_topic="retrain-requests-dead",
        min_backoff=0.1,
        max_backoff=1,
    )
    publisher = pubsub_v1.PublisherClient()
    message_id = publisher.publish(
        f"projects/{PROJECT}/topics/retrain-requests", b'{"fail_first": true}'
    ).result(timeout=10)

    source = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/retrain-requests"
    poll(lambda: len(events_with(function, id=message_id, source=source)) >= 2, "a redelivery")
    time.sleep(0.5)  # a third delivery would follow within the backoff if the second failed

    assert len(events_with(function, id=message_id, source=source)) == 2


def test_connect_is_idempotent_and_follows_the_bridge(
    pubsub_server: PubSubServer, function: Function
) -> None:
    with EventarcBridge() as first, EventarcBridge() as second:
        for bridge in (first, first, second):
            name = connect(
                pubsub_server.host_port,
                PROJECT,
                "job-events",
                "trigger-jobs",
                bridge,
                "jobs",
                function.url,
                "pubsub",
            )
        subscriber = pubsub_v1.SubscriberClient()
        try:
            subscription = subscriber.get_subscription(subscription=name)
        finally:
            subscriber.close()

    assert subscription.push_config.push_endpoint == second.push_endpoint("jobs")
    assert subscription.topic == f"projects/{PROJECT}/topics/job-events"


def test_notifications_other_than_finalize_are_dropped() -> None:
    route = Route("r", "http://127.0.0.1:1/", "storage")
    push = {
        "message": {
            "data": base64.b64encode(b'{"name": "x"}').decode(),
            "attributes": {"eventType": "OBJECT_DELETE", "bucketId": "b", "objectId": "x"},
            "messageId": "1",
        },
        "subscription": "projects/p/subscriptions/s",
    }

    assert to_cloudevent(route, push) is None


def test_bridge_answers_unknown_routes_and_bad_bodies_with_errors(bridge: EventarcBridge) -> None:
    bridge.add_route("known", "http://127.0.0.1:1/", "storage")

    assert bridge.handle_push("unknown", b"{}")[0] == 404
    assert bridge.handle_push("known", b"not json")[0] == 400
    assert bridge.handle_push("known", b'{"message": {"messageId": "1"}}')[0] == 400
