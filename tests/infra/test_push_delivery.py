"""The Pub/Sub design holds: a push subscription's plain body, posted to a CloudEvent
function at `/projects/P/topics/T`, becomes the CloudEvent Eventarc would have sent, and the
functions' parser reads the same event from it.

Runs the real functions-framework on a recording function and the real `retrain.events`
parser on the recorded payload examples (tests/events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from tests.infra.terraform import REPO_ROOT

EVENTS = REPO_ROOT / "tests" / "events"
PUBSUB_EXAMPLES = sorted(
    path
    for path in EVENTS.glob("*.http.json")
    if json.loads(path.read_text(encoding="utf-8"))["headers"]["ce-type"].startswith(
        "google.cloud.pubsub."
    )
)

RECEIVER = """
import json
import functions_framework

@functions_framework.cloud_event
def receive(cloud_event):
    with open({record!r}, "w", encoding="utf-8") as out:
        json.dump({{"attributes": dict(cloud_event.get_attributes()), "data": cloud_event.get_data()}}, out)
"""


@pytest.fixture(scope="module")
def deliver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("push")
    record = directory / "received.json"
    source = directory / "main.py"
    source.write_text(RECEIVER.format(record=str(record)), encoding="utf-8")
    client = functions_framework.create_app("receive", str(source)).test_client()

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        record.unlink(missing_ok=True)
        response = client.post(path, json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        received: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
        return received

    return post


def test_examples_found() -> None:
    assert len(PUBSUB_EXAMPLES) >= 3


@pytest.mark.parametrize("example", PUBSUB_EXAMPLES, ids=lambda path: path.name)
def test_push_body_parses_like_the_eventarc_event(deliver: Any, example: Path) -> None:
    from retrain import events

    recorded = json.loads(example.read_text(encoding="utf-8"))
    headers, body = recorded["headers"], recorded["body"]
    topic = headers["ce-source"].removeprefix("//pubsub.googleapis.com/")

    received = deliver(f"/{topic}", body)

    attributes = received["attributes"]
    assert attributes["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert attributes["source"] == headers["ce-source"]
    assert attributes["id"] == body["message"]["messageId"]
    eventarc = {name.removeprefix("ce-"): value for name, value in headers.items()}
    assert events.parse(attributes, received["data"]) == events.parse(eventarc, body)
