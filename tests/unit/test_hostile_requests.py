"""GIVEN hostile retrain requests (found from outside) WHEN delivered to the trigger over
fakes of its ports THEN each is refused with a structured error naming the field, acked,
with no job and no run record, and the pipeline's channels hear of it once."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from retrain.bootstrap import deliver
from retrain.config import parse_config
from retrain.errors import ConfigError, PermanentError, TransientError
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.trigger import Trigger
from tests.fakes import SAMPLE_CONFIG, FakeTraining, MemoryStateStore, fake_ports
from tests.payloads import pubsub_body
from tests.unit import hostile_requests

PUBSUB = {"type": "google.cloud.pubsub.topic.v1.messagePublished", "id": "ce-1"}
NOTIFY = """
[pipelines.churn.notify]
webhook_env = "CHURN_WEBHOOK_URL"
on = ["failed", "request_rejected"]
"""


class Recorder:
    """A notification channel (the Notifier port) that keeps what it was sent."""

    def __init__(self, channel: str = "webhook") -> None:
        self.channel = channel
        self.sent: list[tuple[dict[str, Any], str]] = []
        self.fail: list[Exception] = []
        self._lock = threading.Lock()

    def send(self, document: Mapping[str, Any], text: str) -> None:
        with self._lock:
            if self.fail:
                raise self.fail.pop(0)
            self.sent.append((dict(document), text))


class World:
    def __init__(self, config_text: str = SAMPLE_CONFIG + NOTIFY, notifiers: Any = None):
        self.config = parse_config(config_text, "pipelines.toml")
        self.store = MemoryStateStore()
        self.training = FakeTraining()
        self.webhook, self.pubsub = Recorder("webhook"), Recorder("pubsub")
        self.stream = io.StringIO()
        self.log = Logger(self.stream)
        channels = notifiers or (lambda _p: [self.webhook, self.pubsub])
        self.trigger = Trigger(
            lambda: fake_ports(self.config, Ledger(self.store), self.training, notifiers=channels),
            self.log,
            sleep=lambda _s: None,
        )

    def deliver(self, data: bytes, message_id: str = "m-1") -> None:
        deliver(self.trigger.handle, PUBSUB, pubsub_body(data, message_id), self.log)

    def errors(self) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [r for r in records if r["severity"] == "ERROR"]


@pytest.mark.parametrize(
    ("text", "field", "phrase"), hostile_requests.params(), ids=hostile_requests.ids()
)
def test_hostile_request_is_refused_naming_the_field_with_no_job(text, field, phrase):
    world = World()
    world.deliver(hostile_requests.payload(text, "acme-landing"))
    (error,) = world.errors()
    assert error["field"] == field and error["pipeline"] == "churn"
    assert phrase in error["message"] and field in error["message"]
    assert world.training.jobs == {}
    assert world.store.keys("runs/") == [] and world.store.keys("open/") == []
    (document, text_sent) = world.webhook.sent[0]
    assert document["kind"] == "request_rejected" and document["field"] == field
    assert document["message_id"] == "m-1" and phrase in document["reason"]
    assert "retrain request m-1 rejected" in text_sent and "\n--epochs" not in text_sent


def test_rejection_is_sent_once_per_message_id_and_channel():
    world = World()
    bad = hostile_requests.payload('{"hyperparameters": 0}', "acme-landing")
    for _ in range(3):
        world.deliver(bad, "m-1")  # redeliveries of one message
    world.deliver(bad, "m-2")  # another message
    assert [d["message_id"] for d, _ in world.webhook.sent] == ["m-1", "m-2"]
    assert [d["message_id"] for d, _ in world.pubsub.sent] == ["m-1", "m-2"]
    assert len(world.errors()) == 4  # every delivery is logged, and acknowledged


def test_a_transient_channel_failure_retries_and_still_sends_once():
    world = World()
    world.webhook.fail.append(TransientError("webhook 503"))
    bad = hostile_requests.payload('{"data_uri": "gs://acme-landing/a/../b/"}', "acme-landing")
    with pytest.raises(TransientError):
        world.deliver(bad)
    world.deliver(bad)
    world.deliver(bad)
    assert len(world.webhook.sent) == 1 and len(world.pubsub.sent) == 1
    assert world.training.jobs == {}


def test_a_refusing_channel_is_logged_and_the_request_still_acked():
    world = World()
    world.webhook.fail.append(PermanentError("webhook refused the notification: HTTP 404"))
    world.deliver(hostile_requests.payload('{"hyperparameters": false}', "acme-landing"))
    messages = [e["message"] for e in world.errors()]
    assert "notification refused" in messages and len(world.pubsub.sent) == 1


def test_no_notification_when_not_wanted_or_pipeline_unknown():
    world = World(SAMPLE_CONFIG)  # churn has no notify table
    world.deliver(hostile_requests.payload('{"hyperparameters": 0}', "acme-landing"))
    world.deliver(b'{"pipeline": "nope"}', "m-2")
    assert world.webhook.sent == [] and world.pubsub.sent == []
    assert [e["field"] for e in world.errors()] == ["hyperparameters", "pipeline"]


def test_a_channel_missing_its_secret_does_not_turn_a_rejection_into_a_retry():
    def unset(_pipeline: Any) -> list[Any]:
        raise ConfigError("pipelines.churn.notify.webhook_env names CHURN_WEBHOOK_URL, unset")

    world = World(notifiers=unset)
    world.deliver(hostile_requests.payload('{"hyperparameters": 0}', "acme-landing"))
    messages = [e["message"] for e in world.errors()]
    assert any(m.startswith("rejection not sent") for m in messages)
    assert world.training.jobs == {}


def test_a_clean_request_still_submits_exactly_one_job():
    world = World()
    good = b'{"pipeline": "churn", "data_uri": "gs://acme-landing/churn/2026-11-26/", "hyperparameters": {"lr": 1, "batch_size": 64}}'
    world.deliver(good)
    world.deliver(good)
    (spec,) = world.training.specs.values()
    assert "--data-uri=gs://acme-landing/churn/2026-11-26/" in spec.worker_pools[0].args
    assert "--lr=1.0" in spec.worker_pools[0].args and world.errors() == []
