"""Contract tests of the local Pub/Sub server through the official google-cloud-pubsub
client, fake-gcs-server and real HTTP push endpoints."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from localcloud.pubsub import PubSubServer
from localcloud.storage import StorageServer

PROJECT = "local-project"
# The leftover checks ask for no waiting; the flag still works, the client only warns.
no_wait_warning = pytest.mark.filterwarnings("ignore:The return_immediately flag")


def poll(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Receiver:
    """A push endpoint that records each request and answers with `status(n)` for the n-th."""

    def __init__(self, status: Callable[[int], int]) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    bodies.append(body)
                    attempt = len(bodies)
                code = status(attempt)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/push"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubServer]:
    with PubSubServer(tmp_path / "pubsub") as running:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", running.host_port)
        yield running


@pytest.fixture
def publisher(server: PubSubServer) -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


@pytest.fixture
def subscriber(server: PubSubServer) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def topic_path(name: str) -> str:
    return f"projects/{PROJECT}/topics/{name}"


def subscription_path(name: str) -> str:
    return f"projects/{PROJECT}/subscriptions/{name}"


def pull_all(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, count: int, ack: bool = True
) -> list[Any]:
    received: list[Any] = []

    def more() -> bool:
        response = subscriber.pull(subscription=subscription, max_messages=50, timeout=10)
        received.extend(response.received_messages)
        if ack and response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
        return len(received) >= count

    poll(more, f"{count} messages on {subscription}")
    return received


def test_topics_can_be_created_once_and_looked_up(
    publisher: pubsub_v1.PublisherClient,
) -> None:
    publisher.create_topic(name=topic_path("orders"))

    with pytest.raises(exceptions.AlreadyExists):
        publisher.create_topic(name=topic_path("orders"))
    assert publisher.get_topic(topic=topic_path("orders")).name == topic_path("orders")
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=topic_path("missing"))
    listed = [t.name for t in publisher.list_topics(project=f"projects/{PROJECT}")]
    assert listed == [topic_path("orders")]


def test_subscription_on_a_missing_topic_is_not_found(
    subscriber: pubsub_v1.SubscriberClient,
) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.create_subscription(name=subscription_path("sub"), topic=topic_path("nope"))


@no_wait_warning
def test_hundred_messages_are_pulled_and_acked_exactly_once(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(name=topic_path("orders"))
    subscriber.create_subscription(name=subscription_path("orders-sub"), topic=topic_path("orders"))
    futures = [
        publisher.publish(topic_path("orders"), f"m{i}".encode(), index=str(i)) for i in range(100)
    ]
    ids = [f.result(timeout=10) for f in futures]

    received = pull_all(subscriber, subscription_path("orders-sub"), 100)

    assert sorted(m.message.message_id for m in received) == sorted(ids)
    assert sorted(m.message.data for m in received) == sorted(f"m{i}".encode() for i in range(100))
    assert all(m.message.attributes["index"] == m.message.data.decode()[1:] for m in received)
    again = subscriber.pull(
        subscription=subscription_path("orders-sub"), max_messages=10, return_immediately=True
    )
    assert list(again.received_messages) == []


def test_unacked_message_is_redelivered_after_its_ack_deadline(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(name=topic_path("jobs"))
    subscriber.create_subscription(
        name=subscription_path("jobs-sub"), topic=topic_path("jobs"), ack_deadline_seconds=1
    )
    message_id = publisher.publish(topic_path("jobs"), b"work").result(timeout=10)

    first = pull_all(subscriber, subscription_path("jobs-sub"), 1, ack=False)
    second = pull_all(subscriber, subscription_path("jobs-sub"), 1, ack=False)

    assert first[0].message.message_id == second[0].message.message_id == message_id
    # Without a dead-letter policy the API does not count deliveries.
    assert (first[0].delivery_attempt, second[0].delivery_attempt) == (0, 0)
    assert first[0].ack_id != second[0].ack_id


@no_wait_warning
def test_streaming_pull_delivers_to_a_subscribe_callback(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(name=topic_path("events"))
    subscriber.create_subscription(name=subscription_path("events-sub"), topic=topic_path("events"))
    seen: list[bytes] = []

    def callback(message: Any) -> None:
        seen.append(message.data)
        message.ack()

    future = subscriber.subscribe(subscription_path("events-sub"), callback)
    try:
        for i in range(20):
            publisher.publish(topic_path("events"), f"e{i}".encode()).result(timeout=10)
        poll(lambda: len(seen) >= 20, "20 streamed messages")
    finally:
        future.cancel()
        future.result(timeout=10)

    assert sorted(seen) == sorted(f"e{i}".encode() for i in range(20))
    leftover = subscriber.pull(
        subscription=subscription_path("events-sub"), max_messages=10, return_immediately=True
    )
    assert list(leftover.received_messages) == []  # the callback's acks reached the server


def create_push_subscription(
    subscriber: pubsub_v1.SubscriberClient, name: str, topic: str, endpoint: str, **extra: Any
) -> None:
    subscriber.create_subscription(
        request={
            "name": subscription_path(name),
            "topic": topic_path(topic),
            "push_config": {"push_endpoint": endpoint},
            "retry_policy": {"minimum_backoff": "0.1s", "maximum_backoff": "0.5s"},
            **extra,
        }
    )


def test_push_is_retried_until_the_endpoint_accepts(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    receiver = Receiver(lambda n: 500 if n <= 2 else 204)
    try:
        publisher.create_topic(name=topic_path("ticks"))
        create_push_subscription(subscriber, "ticks-push", "ticks", receiver.url)
        message_id = publisher.publish(topic_path("ticks"), b'{"tick": true}', k="v").result(10)

        poll(lambda: len(receiver.bodies) >= 3, "three push attempts")
        time.sleep(0.3)  # a fourth attempt would come after the 0.1-0.5 s backoff
    finally:
        receiver.close()

    assert len(receiver.bodies) == 3
    last = receiver.bodies[-1]
    assert "deliveryAttempt" not in last  # counted only under a dead-letter policy
    assert last["subscription"] == subscription_path("ticks-push")
    message = last["message"]
    assert base64.b64decode(message["data"]) == b'{"tick": true}'
    assert message["attributes"] == {"k": "v"}
    assert message["messageId"] == message["message_id"] == message_id
    assert message["publishTime"] == message["publish_time"]
    assert message["publishTime"].endswith("Z")


def test_push_that_always_fails_ends_on_the_dead_letter_topic(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    receiver = Receiver(lambda n: 503)
    try:
        publisher.create_topic(name=topic_path("work"))
        publisher.create_topic(name=topic_path("work-dead"))
        subscriber.create_subscription(
            name=subscription_path("work-dead-sub"), topic=topic_path("work-dead")
        )
        create_push_subscription(
            subscriber,
            "work-push",
            "work",
            receiver.url,
            dead_letter_policy={
                "dead_letter_topic": topic_path("work-dead"),
                "max_delivery_attempts": 3,
            },
        )
        publisher.publish(topic_path("work"), b"poison", origin="test").result(timeout=10)

        dead = pull_all(subscriber, subscription_path("work-dead-sub"), 1)
    finally:
        receiver.close()

    assert [b["deliveryAttempt"] for b in receiver.bodies] == [1, 2, 3]
    message = dead[0].message
    assert message.data == b"poison"
    assert message.attributes["origin"] == "test"
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "3"
    assert message.attributes["CloudPubSubDeadLetterSourceSubscription"] == "work-push"


def test_a_slow_endpoint_does_not_hold_up_other_messages(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    release = threading.Event()

    def status(n: int) -> int:
        if n == 1:
            release.wait(timeout=20)  # the first delivery hangs until the test releases it
        return 200

    receiver = Receiver(status)
    try:
        publisher.create_topic(name=topic_path("mixed"))
        create_push_subscription(subscriber, "mixed-push", "mixed", receiver.url)
        publisher.publish(topic_path("mixed"), b"slow").result(timeout=10)
        poll(lambda: len(receiver.bodies) >= 1, "the slow delivery to start")
        publisher.publish(topic_path("mixed"), b"fast").result(timeout=10)

        poll(lambda: len(receiver.bodies) >= 2, "the second delivery while the first hangs")
    finally:
        release.set()
        receiver.close()

    assert [base64.b64decode(b["message"]["data"]) for b in receiver.bodies] == [b"slow", b"fast"]


def test_push_recovers_when_the_endpoint_drops_an_idle_keep_alive_connection(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    received: list[dict[str, Any]] = []

    class DroppingHandler(BaseHTTPRequestHandler):
        # Claims keep-alive but closes after each answer, as an idle timeout would.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), DroppingHandler)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        publisher.create_topic(name=topic_path("drops"))
        publisher.create_topic(name=topic_path("drops-dead"))
        url = f"http://127.0.0.1:{endpoint.server_address[1]}/"
        # A dead-letter policy makes the server count attempts, so a retry would show.
        create_push_subscription(
            subscriber,
            "drops-push",
            "drops",
            url,
            dead_letter_policy={"dead_letter_topic": topic_path("drops-dead")},
        )
        for count in (1, 2, 3):
            publisher.publish(topic_path("drops"), f"d{count}".encode()).result(timeout=10)
            poll(functools.partial(lambda n: len(received) >= n, count), f"push {count}")
    finally:
        endpoint.shutdown()
        endpoint.server_close()

    assert [b["deliveryAttempt"] for b in received] == [1, 1, 1]


def test_state_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "pubsub"
    first = PubSubServer(state).start()
    port = first.port
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", first.host_port)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        publisher.create_topic(name=topic_path("durable"))
        subscriber.create_subscription(
            name=subscription_path("durable-sub"), topic=topic_path("durable")
        )
        kept = publisher.publish(topic_path("durable"), b"kept").result(timeout=10)
        in_flight = publisher.publish(topic_path("durable"), b"in flight").result(timeout=10)
        leased = subscriber.pull(
            subscription=subscription_path("durable-sub"), max_messages=2, timeout=10
        )
        # Ack "kept"; "in flight" stays leased across the restart.
        by_data = {m.message.data: m for m in leased.received_messages}
        assert set(by_data) == {b"kept", b"in flight"}
        subscriber.acknowledge(
            subscription=subscription_path("durable-sub"), ack_ids=[by_data[b"kept"].ack_id]
        )
        late = publisher.publish(topic_path("durable"), b"late").result(timeout=10)
    finally:
        subscriber.close()
        first.stop()

    with PubSubServer(state, port=port):
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
        try:
            assert publisher.get_topic(topic=topic_path("durable")).name == topic_path("durable")
            received = pull_all(subscriber, subscription_path("durable-sub"), 2)
            next_id = publisher.publish(topic_path("durable"), b"after").result(timeout=10)
        finally:
            subscriber.close()

    assert sorted(m.message.message_id for m in received) == sorted([in_flight, late])
    assert kept not in {m.message.message_id for m in received}
    assert int(next_id) > int(late)  # message ids are never reused


def test_fake_gcs_server_notifications_arrive_on_the_topic(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: PubSubServer,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
) -> None:
    publisher.create_topic(name=topic_path("gcs-notifications"))
    subscriber.create_subscription(
        name=subscription_path("gcs-sub"), topic=topic_path("gcs-notifications")
    )
    gcs = StorageServer(
        root=tmp_path / "gcs",
        pubsub_project=PROJECT,
        pubsub_topic="gcs-notifications",
        pubsub_host=server.host_port,
    ).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        client.create_bucket("landing").blob("churn/part-0001.csv").upload_from_string("a,b\n")

        received = pull_all(subscriber, subscription_path("gcs-sub"), 1)
    finally:
        gcs.stop()

    attributes = received[0].message.attributes
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["bucketId"] == "landing"
    assert attributes["objectId"] == "churn/part-0001.csv"
    resource = json.loads(received[0].message.data)
    assert resource["name"] == "churn/part-0001.csv"
    assert resource["generation"] == attributes["objectGeneration"]
