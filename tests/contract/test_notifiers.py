"""The notification channels against real receivers: the webhook against localcloud's
webhook receiver, Pub/Sub with the official publisher against localcloud's Pub/Sub server.
Every send of one notification carries the same id, so a receiver can drop a repeat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from localcloud.pubsub import PubSubServer
from localcloud.webhook import WebhookSink
from retrain import notify
from retrain.adapters.notifiers import PubSubNotifier, WebhookNotifier
from retrain.notify import Notification

PROJECT = "acme-ml"


def deployed(run_id: str = "20261126-091403-ab12cd") -> Notification:
    return Notification(kind="deployed", pipeline="churn", run_id=run_id, job="",
                        state="JOB_STATE_SUCCEEDED", project=PROJECT, region="us-central1",
                        metric_name="val_accuracy", metric=0.91)  # fmt: skip


@pytest.fixture
def pubsub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubServer]:
    with PubSubServer(tmp_path / "pubsub") as running:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", running.host_port)
        yield running


def test_the_webhook_gets_the_text_and_the_notification_id_as_its_idempotency_key() -> None:
    message = deployed()
    with WebhookSink() as sink:
        channel = WebhookNotifier(sink.url)
        channel.send(notify.document(message), notify.text(message))
        channel.send(notify.document(message), notify.text(message))  # a repeat after a crash
        channel.send(notify.document(deployed("other-run")), "other")
        texts, keys = sink.texts(), sink.idempotency_keys()
    assert texts[0] == notify.text(message) and "run 20261126-091403-ab12cd deployed" in texts[0]
    assert keys == ["churn/20261126-091403-ab12cd/deployed"] * 2 + ["churn/other-run/deployed"]


def test_pubsub_carries_the_document_and_its_id_kind_and_pipeline_as_attributes(
    pubsub: PubSubServer,
) -> None:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = f"projects/{PROJECT}/topics/retrain-notifications"
    subscription = f"projects/{PROJECT}/subscriptions/notifications-sub"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    message = deployed()
    PubSubNotifier(lambda: publisher, topic).send(notify.document(message), notify.text(message))
    try:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
    finally:
        subscriber.close()
    (received,) = response.received_messages
    document = json.loads(received.message.data)
    assert document == json.loads(json.dumps(notify.document(message), default=str))
    assert dict(received.message.attributes) == {
        "kind": "deployed",
        "pipeline": "churn",
        "notification_id": "churn/20261126-091403-ab12cd/deployed",
    }
    assert document["notification_id"] == received.message.attributes["notification_id"]
