"""Contract tests of the rest of the Pub/Sub API the official client and Google's samples use:
subscription filters, snapshots and seek, unwrapped push, delivery attempts, exactly-once
delivery and UpdateTopic/UpdateSubscription — each call made the way Google's Python samples
make it, through google-cloud-pubsub against the local server."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber import exceptions as sub_exceptions
from google.protobuf import field_mask_pb2

from localcloud.pubsub import PubSubServer
from tests.localcloud.test_pubsub import PROJECT, poll, subscription_path, topic_path

no_wait_warning = pytest.mark.filterwarnings("ignore:The return_immediately flag")


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


def snapshot_path(name: str) -> str:
    return f"projects/{PROJECT}/snapshots/{name}"


def pull_now(subscriber: pubsub_v1.SubscriberClient, subscription: str) -> list[Any]:
    """What is deliverable right now (the server answers at once)."""
    response = subscriber.pull(
        request={"subscription": subscription, "max_messages": 100, "return_immediately": True}
    )
    return list(response.received_messages)


def pull_until(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, count: int, ack: bool = True
) -> list[Any]:
    """Pull (acking unless told not to) until `count` messages came."""
    received: list[Any] = []

    def more() -> bool:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 100}, timeout=10
        )
        received.extend(response.received_messages)
        if ack and response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        return len(received) >= count

    poll(more, f"{count} messages on {subscription}")
    return received


def data_of(received: list[Any]) -> list[bytes]:
    return sorted(m.message.data for m in received)


class RawReceiver:
    """A push endpoint recording each request's headers and raw body, answering 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                requests.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/push"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[RawReceiver]:
    endpoint = RawReceiver()
    yield endpoint
    endpoint.close()


# -- filters ------------------------------------------------------------------------------

MESSAGES = {
    b"eu-prod": {"region": "eu-west", "env": "prod"},
    b"eu-test": {"region": "eu-north", "env": "test"},
    b"us-prod": {"region": "us-east", "env": "prod"},
    b"bare": {"plain": "x"},
    b"dotted": {"iana.org/language_tag": "en", "region": "ap"},
}

FILTERS = {
    'attributes.env = "prod"': [b"eu-prod", b"us-prod"],
    'attributes.env != "prod"': [b"bare", b"dotted", b"eu-test"],  # absent counts as "not"
    'hasPrefix(attributes.region, "eu-")': [b"eu-prod", b"eu-test"],
    "attributes:env": [b"eu-prod", b"eu-test", b"us-prod"],
    "NOT attributes:env": [b"bare", b"dotted"],
    "-attributes:region": [b"bare"],
    'attributes:region AND attributes.env = "prod"': [b"eu-prod", b"us-prod"],
    'attributes.env = "test" OR attributes:plain': [b"bare", b"eu-test"],
    'hasPrefix(attributes.region, "eu") AND (attributes.env = "test" OR attributes:plain)': [
        b"eu-test"
    ],
    'NOT (attributes.env = "prod" OR attributes:plain)': [b"dotted", b"eu-test"],
    'attributes."iana.org/language_tag" = "en"': [b"dotted"],
}


@no_wait_warning
def test_filtered_subscriptions_receive_only_matching_messages(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(request={"name": topic_path("news")})
    subscriptions = {}
    for i, message_filter in enumerate(FILTERS):
        name = subscription_path(f"news-{i}")
        created = subscriber.create_subscription(
            request={"name": name, "topic": topic_path("news"), "filter": message_filter}
        )
        assert created.filter == message_filter
        subscriptions[message_filter] = name
    for data, attributes in MESSAGES.items():
        publisher.publish(topic_path("news"), data, **attributes).result(timeout=10)

    for message_filter, expected in FILTERS.items():
        name = subscriptions[message_filter]
        received = pull_until(subscriber, name, len(expected))
        assert data_of(received) == expected, message_filter
        # Messages the filter rejected were acknowledged on arrival: nothing is left.
        assert pull_now(subscriber, name) == [], message_filter


@pytest.mark.parametrize(
    ("message_filter", "problem"),
    [
        ("attributes.env = prod", "expected a string literal"),
        ("attributes:a AND attributes:b OR attributes:c", "without parentheses"),
        ('hasSuffix(attributes.env, "x")', "expected 'attributes'"),
        ('data = "x"', "expected 'attributes'"),
        ('attributes.env = "prod" AND', "the end of the filter"),
        ("(attributes:env", "expected ')'"),
        ('attributes.env = "unterminated', "unterminated string"),
        ("attributes:env and attributes:region", "expected the end of the filter"),
        ("attributes:" + "k" * 260, "at most 256"),
    ],
)
def test_an_invalid_filter_is_refused_at_creation(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    message_filter: str,
    problem: str,
) -> None:
    publisher.create_topic(request={"name": topic_path("news")})

    with pytest.raises(exceptions.InvalidArgument) as refused:
        subscriber.create_subscription(
            request={
                "name": subscription_path("news-bad"),
                "topic": topic_path("news"),
                "filter": message_filter,
            }
        )

    assert "Invalid filter" in refused.value.message
    assert problem in refused.value.message
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(request={"subscription": subscription_path("news-bad")})


def test_a_filter_applies_to_streaming_pull(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(request={"name": topic_path("orders")})
    subscriber.create_subscription(
        request={
            "name": subscription_path("orders-paid"),
            "topic": topic_path("orders"),
            "filter": 'attributes.event = "paid"',
        }
    )
    seen: list[bytes] = []

    def callback(message: Any) -> None:
        seen.append(message.data)
        message.ack()

    future = subscriber.subscribe(subscription_path("orders-paid"), callback)
    try:
        for i, event in enumerate(["created", "paid", "shipped", "paid"]):
            publisher.publish(topic_path("orders"), f"o{i}".encode(), event=event).result(10)
        poll(lambda: len(seen) >= 2, "the paid orders")
        publisher.publish(topic_path("orders"), b"last", event="paid").result(timeout=10)
        poll(lambda: len(seen) >= 3, "the last paid order")
    finally:
        future.cancel()
        future.result(timeout=10)

    # The unmatched messages came before the last one and never reached the callback.
    assert seen == [b"o1", b"o3", b"last"]


def test_a_filter_applies_to_push(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    receiver: RawReceiver,
) -> None:
    publisher.create_topic(request={"name": topic_path("alerts")})
    subscriber.create_subscription(
        request={
            "name": subscription_path("alerts-push"),
            "topic": topic_path("alerts"),
            "push_config": {"push_endpoint": receiver.url},
            "filter": 'NOT attributes.severity = "debug"',
        }
    )
    for severity in ["debug", "error", "debug", "warning"]:
        publisher.publish(topic_path("alerts"), severity.encode(), severity=severity).result(10)
    publisher.publish(topic_path("alerts"), b"untagged").result(timeout=10)

    poll(lambda: len(receiver.requests) >= 3, "three pushes")
    pushed = sorted(
        base64.b64decode(json.loads(b)["message"]["data"]) for _, b in receiver.requests
    )
    assert pushed == [b"error", b"untagged", b"warning"]


# -- snapshots and seek -------------------------------------------------------------------


def test_snapshots_are_created_listed_and_deleted(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(request={"name": topic_path("ledger")})
    subscriber.create_subscription(
        request={"name": subscription_path("ledger-sub"), "topic": topic_path("ledger")}
    )
    before = datetime.now(UTC)

    snapshot = subscriber.create_snapshot(
        request={
            "name": snapshot_path("before-migration"),
            "subscription": subscription_path("ledger-sub"),
            "labels": {"purpose": "migration"},
        }
    )

    assert snapshot.name == snapshot_path("before-migration")
    assert snapshot.topic == topic_path("ledger")
    assert snapshot.labels == {"purpose": "migration"}
    # An empty backlog: the snapshot lives the full 7 days.
    lifetime = snapshot.expire_time - before
    assert timedelta(days=7) - timedelta(minutes=1) < lifetime <= timedelta(days=7, minutes=1)
    got = subscriber.get_snapshot(request={"snapshot": snapshot_path("before-migration")})
    assert got.name == snapshot.name
    listed = subscriber.list_snapshots(request={"project": f"projects/{PROJECT}"})
    assert [s.name for s in listed] == [snapshot_path("before-migration")]
    on_topic = publisher.list_topic_snapshots(request={"topic": topic_path("ledger")})
    assert list(on_topic) == [snapshot_path("before-migration")]
    with pytest.raises(exceptions.AlreadyExists):
        subscriber.create_snapshot(
            request={
                "name": snapshot_path("before-migration"),
                "subscription": subscription_path("ledger-sub"),
            }
        )
    with pytest.raises(exceptions.NotFound):
        subscriber.create_snapshot(
            request={"name": snapshot_path("other"), "subscription": subscription_path("nope")}
        )
    with pytest.raises(exceptions.InvalidArgument, match="snapshots"):
        subscriber.create_snapshot(
            request={"name": "snapshots/bad", "subscription": subscription_path("ledger-sub")}
        )

    subscriber.delete_snapshot(request={"snapshot": snapshot_path("before-migration")})

    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(request={"snapshot": snapshot_path("before-migration")})
    assert list(publisher.list_topic_snapshots(request={"topic": topic_path("ledger")})) == []


@no_wait_warning
def test_seek_to_a_snapshot_restores_its_backlog_and_what_came_after(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("ledger"), subscription_path("ledger-sub")
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    publisher.publish(topic, b"done").result(timeout=10)
    pull_until(subscriber, sub, 1)  # acknowledged before the snapshot: not in it
    for data in (b"backlog-1", b"backlog-2"):
        publisher.publish(topic, data).result(timeout=10)
    subscriber.create_snapshot(request={"name": snapshot_path("snap-1"), "subscription": sub})
    publisher.publish(topic, b"after").result(timeout=10)
    assert data_of(pull_until(subscriber, sub, 3)) == [b"after", b"backlog-1", b"backlog-2"]
    assert pull_now(subscriber, sub) == []

    subscriber.seek(request={"subscription": sub, "snapshot": snapshot_path("snap-1")})

    assert data_of(pull_until(subscriber, sub, 3)) == [b"after", b"backlog-1", b"backlog-2"]
    assert pull_now(subscriber, sub) == []


@no_wait_warning
def test_a_snapshot_seeds_another_subscription_of_the_topic(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic = topic_path("ledger")
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": subscription_path("reader-a"), "topic": topic})
    publisher.publish(topic, b"one").result(timeout=10)
    subscriber.create_snapshot(
        request={"name": snapshot_path("snap-1"), "subscription": subscription_path("reader-a")}
    )
    subscriber.create_subscription(request={"name": subscription_path("reader-b"), "topic": topic})
    publisher.publish(topic, b"two").result(timeout=10)
    assert data_of(pull_until(subscriber, subscription_path("reader-b"), 1)) == [b"two"]

    subscriber.seek(
        request={"subscription": subscription_path("reader-b"), "snapshot": snapshot_path("snap-1")}
    )

    assert data_of(pull_until(subscriber, subscription_path("reader-b"), 2)) == [b"one", b"two"]


def test_seek_to_a_snapshot_of_another_topic_is_refused(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    for name in ("left", "right"):
        publisher.create_topic(request={"name": topic_path(name)})
        subscriber.create_subscription(
            request={"name": subscription_path(name), "topic": topic_path(name)}
        )
    subscriber.create_snapshot(
        request={"name": snapshot_path("left-snap"), "subscription": subscription_path("left")}
    )

    with pytest.raises(exceptions.FailedPrecondition, match="topic"):
        subscriber.seek(
            request={
                "subscription": subscription_path("right"),
                "snapshot": snapshot_path("left-snap"),
            }
        )
    with pytest.raises(exceptions.NotFound):
        subscriber.seek(
            request={"subscription": subscription_path("right"), "snapshot": snapshot_path("none")}
        )
    with pytest.raises(exceptions.InvalidArgument, match="target"):
        subscriber.seek(request={"subscription": subscription_path("right")})


@no_wait_warning
def test_seek_to_a_time_replays_acknowledged_messages_when_they_are_retained(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("audit"), subscription_path("audit-sub")
    publisher.create_topic(request={"name": topic})
    publisher.publish(topic, b"before-the-subscription").result(timeout=10)
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "retain_acked_messages": True}
    )
    publisher.publish(topic, b"old").result(timeout=10)
    old = pull_until(subscriber, sub, 1)[0]
    boundary = old.message.publish_time + timedelta(microseconds=1)
    publisher.publish(topic, b"new").result(timeout=10)
    assert data_of(pull_until(subscriber, sub, 1)) == [b"new"]

    subscriber.seek(request={"subscription": sub, "time": boundary})

    assert data_of(pull_until(subscriber, sub, 1)) == [b"new"]
    assert pull_now(subscriber, sub) == []

    subscriber.seek(request={"subscription": sub, "time": boundary - timedelta(days=1)})

    # Only what the subscription itself received: the topic keeps nothing older.
    assert data_of(pull_until(subscriber, sub, 2)) == [b"new", b"old"]
    assert pull_now(subscriber, sub) == []


@no_wait_warning
def test_seek_to_a_time_without_retention_only_acknowledges(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("jobs"), subscription_path("jobs-sub")
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    publisher.publish(topic, b"acked").result(timeout=10)
    pull_until(subscriber, sub, 1)
    publisher.publish(topic, b"pending").result(timeout=10)
    leased = pull_until(subscriber, sub, 1, ack=False)

    subscriber.seek(request={"subscription": sub, "time": datetime.now(UTC) - timedelta(hours=1)})

    # The pending message is deliverable again at once (its lease ended); the acked one is gone.
    again = pull_until(subscriber, sub, 1)
    assert data_of(again) == [b"pending"]
    assert again[0].ack_id != leased[0].ack_id
    publisher.publish(topic, b"pending-2").result(timeout=10)

    subscriber.seek(request={"subscription": sub, "time": datetime.now(UTC) + timedelta(hours=1)})

    # A time in the future acknowledges everything published before it.
    assert pull_now(subscriber, sub) == []


@no_wait_warning
def test_topic_retention_lets_a_new_subscription_seek_back(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("events"), subscription_path("late-reader")
    publisher.create_topic(request={"name": topic, "message_retention_duration": "3600s"})
    publisher.publish(topic, b"history", kind="a").result(timeout=10)
    publisher.publish(topic, b"history-b", kind="b").result(timeout=10)
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "filter": 'attributes.kind = "a"'}
    )
    assert pull_now(subscriber, sub) == []

    subscriber.seek(request={"subscription": sub, "time": datetime.now(UTC) - timedelta(minutes=5)})

    # Replayed through the subscription's filter.
    assert data_of(pull_until(subscriber, sub, 1)) == [b"history"]
    assert pull_now(subscriber, sub) == []


@no_wait_warning
def test_snapshots_and_retained_messages_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "pubsub"
    topic, sub = topic_path("durable"), subscription_path("durable-sub")
    with PubSubServer(state) as first:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", first.host_port)
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        publisher.create_topic(request={"name": topic})
        subscriber.create_subscription(request={"name": sub, "topic": topic})
        publisher.publish(topic, b"kept").result(timeout=10)
        subscriber.create_snapshot(request={"name": snapshot_path("keep"), "subscription": sub})
        publisher.publish(topic, b"later").result(timeout=10)
        pull_until(subscriber, sub, 2)
        subscriber.close()
        port = first.port

    with PubSubServer(state, port=port):
        subscriber = pubsub_v1.SubscriberClient()
        try:
            assert (
                subscriber.get_snapshot(request={"snapshot": snapshot_path("keep")}).topic == topic
            )
            subscriber.seek(request={"subscription": sub, "snapshot": snapshot_path("keep")})
            assert data_of(pull_until(subscriber, sub, 2)) == [b"kept", b"later"]
        finally:
            subscriber.close()


# -- unwrapped push -----------------------------------------------------------------------


def test_unwrapped_push_with_metadata_sends_the_raw_data_and_headers(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    receiver: RawReceiver,
) -> None:
    publisher.create_topic(request={"name": topic_path("raw")})
    subscriber.create_subscription(
        request={
            "name": subscription_path("raw-push"),
            "topic": topic_path("raw"),
            "push_config": {
                "push_endpoint": receiver.url,
                "no_wrapper": {"write_metadata": True},
            },
        }
    )
    data = b'{"status": "Hello there"}'
    message_id = publisher.publish(
        topic_path("raw"), data, **{"Content-Type": "application/json", "team": "ml"}
    ).result(timeout=10)

    poll(lambda: len(receiver.requests) >= 1, "the unwrapped push")

    headers, body = receiver.requests[0]
    lower = {k.lower(): v for k, v in headers.items()}
    assert body == data
    assert lower["x-goog-pubsub-subscription-name"] == subscription_path("raw-push")
    assert lower["x-goog-pubsub-message-id"] == message_id
    published = datetime.fromisoformat(lower["x-goog-pubsub-publish-time"])
    assert abs(datetime.now(UTC) - published) < timedelta(minutes=1)
    assert lower["content-type"] == "application/json"
    assert lower["team"] == "ml"


def test_unwrapped_push_without_metadata_sends_only_the_data(
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    receiver: RawReceiver,
) -> None:
    publisher.create_topic(request={"name": topic_path("raw")})
    subscriber.create_subscription(
        request={
            "name": subscription_path("raw-push"),
            "topic": topic_path("raw"),
            "push_config": {"push_endpoint": receiver.url, "no_wrapper": {}},
        }
    )
    publisher.publish(topic_path("raw"), b"\x00binary\xff", team="ml").result(timeout=10)

    poll(lambda: len(receiver.requests) >= 1, "the unwrapped push")

    headers, body = receiver.requests[0]
    assert body == b"\x00binary\xff"
    names = {k.lower() for k in headers}
    assert "team" not in names
    assert not any(name.startswith("x-goog-pubsub-") for name in names)


# -- delivery attempts --------------------------------------------------------------------


def dead_letter_subscription(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, name: str
) -> str:
    publisher.create_topic(request={"name": topic_path(name)})
    publisher.create_topic(request={"name": topic_path(f"{name}-dead")})
    subscriber.create_subscription(
        request={
            "name": subscription_path(name),
            "topic": topic_path(name),
            "dead_letter_policy": {
                "dead_letter_topic": topic_path(f"{name}-dead"),
                "max_delivery_attempts": 10,
            },
        }
    )
    return subscription_path(name)


def test_delivery_attempts_are_counted_under_a_dead_letter_policy(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    sub = dead_letter_subscription(publisher, subscriber, "work")
    publisher.publish(topic_path("work"), b"job").result(timeout=10)
    attempts = []
    for _ in range(3):
        received = pull_until(subscriber, sub, 1, ack=False)[0]
        attempts.append(received.delivery_attempt)
        # A nack, as the samples send one: the next pull is the next attempt.
        subscriber.modify_ack_deadline(
            request={"subscription": sub, "ack_ids": [received.ack_id], "ack_deadline_seconds": 0}
        )

    assert attempts == [1, 2, 3]


def test_streaming_pull_reports_delivery_attempts_only_under_a_dead_letter_policy(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    counted = dead_letter_subscription(publisher, subscriber, "work")
    subscriber.create_subscription(
        request={"name": subscription_path("plain"), "topic": topic_path("work")}
    )
    seen: dict[str, list[int | None]] = {counted: [], subscription_path("plain"): []}

    def receive(name: str) -> Any:
        def callback(message: Any) -> None:
            seen[name].append(message.delivery_attempt)
            if len(seen[name]) == 1:
                message.nack()
            else:
                message.ack()

        return callback

    futures = [subscriber.subscribe(name, receive(name)) for name in seen]
    try:
        publisher.publish(topic_path("work"), b"job").result(timeout=10)
        poll(lambda: all(len(v) >= 2 for v in seen.values()), "two deliveries on each")
    finally:
        for future in futures:
            future.cancel()
            future.result(timeout=10)

    assert seen[counted][:2] == [1, 2]
    assert seen[subscription_path("plain")][:2] == [None, None]  # the client's "not set"


# -- exactly-once delivery ----------------------------------------------------------------


def test_exactly_once_acks_report_success_and_invalid_ack_ids(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("payments"), subscription_path("payments-eod")
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "enable_exactly_once_delivery": True}
    )
    outcomes: list[Any] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        if message.data == b"settle":
            outcomes.append(message.ack_with_response().result(timeout=10))
        elif done.is_set():
            message.ack()  # the redelivery of the message given up below
        else:
            # Once the lease is given up, its ack id is no longer valid.
            outcomes.append(message.nack_with_response().result(timeout=10))
            try:
                message.ack_with_response().result(timeout=10)
            except sub_exceptions.AcknowledgeError as err:
                outcomes.append(err.error_code)
            done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        publisher.publish(topic, b"settle").result(timeout=10)
        poll(lambda: len(outcomes) >= 1, "the first ack")
        publisher.publish(topic, b"give-up").result(timeout=10)
        poll(done.is_set, "the nack and the late ack")
    finally:
        future.cancel()
        future.result(timeout=10)

    success = sub_exceptions.AcknowledgeStatus.SUCCESS
    invalid = sub_exceptions.AcknowledgeStatus.INVALID_ACK_ID
    assert outcomes[:3] == [success, success, invalid]


@no_wait_warning
def test_exactly_once_refuses_an_expired_ack_id_with_error_details(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic, sub = topic_path("payments"), subscription_path("payments-eod")
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "enable_exactly_once_delivery": True,
            "ack_deadline_seconds": 1,
        }
    )
    publisher.publish(topic, b"pay").result(timeout=10)
    first = pull_until(subscriber, sub, 1, ack=False)[0]
    # The lease is valid for its deadline: nobody else gets the message meanwhile.
    assert pull_now(subscriber, sub) == []
    second = pull_until(subscriber, sub, 1, ack=False)[0]  # after the lease expired

    with pytest.raises(exceptions.InvalidArgument) as refused:
        subscriber.acknowledge(request={"subscription": sub, "ack_ids": [first.ack_id]})

    assert refused.value.reason == "EXACTLY_ONCE_ACKID_FAILURE"
    assert refused.value.metadata == {first.ack_id: "PERMANENT_FAILURE_INVALID_ACK_ID"}
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [second.ack_id]})
    assert second.message.message_id == first.message.message_id
    assert pull_now(subscriber, sub) == []


def test_without_exactly_once_a_stale_ack_is_ignored(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(request={"name": topic_path("plain")})
    subscriber.create_subscription(
        request={"name": subscription_path("plain"), "topic": topic_path("plain")}
    )

    subscriber.acknowledge(
        request={"subscription": subscription_path("plain"), "ack_ids": ["123-456"]}
    )


# -- updates ------------------------------------------------------------------------------


def test_update_topic_changes_the_fields_in_the_mask(
    publisher: pubsub_v1.PublisherClient,
) -> None:
    topic = topic_path("settings")
    publisher.create_topic(request={"name": topic, "labels": {"team": "ml"}})

    updated = publisher.update_topic(
        request={
            "topic": {
                "name": topic,
                "labels": {"team": "data", "tier": "gold"},
                "message_retention_duration": "7200s",
            },
            "update_mask": field_mask_pb2.FieldMask(paths=["labels", "message_retention_duration"]),
        }
    )

    assert updated.labels == {"team": "data", "tier": "gold"}
    assert updated.message_retention_duration == timedelta(hours=2)
    got = publisher.get_topic(request={"topic": topic})
    assert got.labels == updated.labels
    assert got.message_retention_duration == timedelta(hours=2)


@pytest.mark.parametrize(
    ("paths", "fields", "problem"),
    [
        (["labels", "colour"], {}, "'colour' is not a known Topic field"),
        (["name"], {}, "'name' cannot be updated"),
        ([], {"labels": {"a": "b"}}, "it is empty"),
        (["message_retention_duration"], {"message_retention_duration": "60s"}, "10 minutes"),
    ],
)
def test_update_topic_refuses_a_bad_mask_or_value(
    publisher: pubsub_v1.PublisherClient, paths: list[str], fields: dict[str, Any], problem: str
) -> None:
    topic = topic_path("settings")
    publisher.create_topic(request={"name": topic})

    with pytest.raises(exceptions.InvalidArgument) as refused:
        publisher.update_topic(
            request={
                "topic": {"name": topic, **fields},
                "update_mask": field_mask_pb2.FieldMask(paths=paths),
            }
        )

    assert problem in refused.value.message
    assert "UpdateTopicRequest" in refused.value.message or "retention" in refused.value.message


def test_update_topic_of_a_missing_topic_is_not_found(
    publisher: pubsub_v1.PublisherClient,
) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.update_topic(
            request={
                "topic": {"name": topic_path("missing"), "labels": {"a": "b"}},
                "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
            }
        )


def test_update_subscription_changes_the_fields_in_the_mask(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    publisher.create_topic(request={"name": topic_path("settings")})
    sub = subscription_path("settings-sub")
    subscriber.create_subscription(request={"name": sub, "topic": topic_path("settings")})

    updated = subscriber.update_subscription(
        request={
            "subscription": {
                "name": sub,
                "labels": {"team": "ml"},
                "message_retention_duration": "1200s",
                "enable_exactly_once_delivery": True,
                "ack_deadline_seconds": 99,  # not in the mask: unchanged
            },
            "update_mask": field_mask_pb2.FieldMask(
                paths=["labels", "message_retention_duration", "enable_exactly_once_delivery"]
            ),
        }
    )

    assert updated.labels == {"team": "ml"}
    assert updated.message_retention_duration == timedelta(minutes=20)
    assert updated.enable_exactly_once_delivery
    assert updated.ack_deadline_seconds == 10
    assert subscriber.get_subscription(request={"subscription": sub}).labels == {"team": "ml"}
    for paths, problem in [
        (["labels", "colour"], "'colour' is not a known Subscription field"),
        (["filter"], "'filter' cannot be updated"),
    ]:
        with pytest.raises(exceptions.InvalidArgument, match=problem):
            subscriber.update_subscription(
                request={
                    "subscription": {"name": sub, "filter": "attributes:x"},
                    "update_mask": field_mask_pb2.FieldMask(paths=paths),
                }
            )
