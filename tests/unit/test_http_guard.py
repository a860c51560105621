"""GIVEN deliveries functions-framework cannot parse WHEN posted to the served entry point
THEN a clear 4xx in Google's error format, before the framework runs; a failure inside the
function (transient) stays a 5xx so that it is retried."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import functions_framework
import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Response

from retrain import bootstrap, http_guard
from retrain.errors import TransientError
from tests.unit.test_deliveries_fuzz import MAIN, PUBSUB, World, binary, encode, envelope

BATCH = "application/cloudevents-batch+json"
STRUCTURED = "application/cloudevents+json"


@pytest.fixture
def world() -> Iterator[World]:
    original = bootstrap.app
    current = World()
    bootstrap.app = lambda: current  # type: ignore[assignment,return-value]
    try:
        yield current
    finally:
        bootstrap.app = original  # type: ignore[method-assign]


@pytest.fixture
def client(world: World) -> Any:
    return functions_framework.create_app("trigger", str(MAIN)).test_client()


def error_of(response: Any) -> str:
    body = json.loads(response.data)
    assert body["error"]["code"] == response.status_code
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    return str(body["error"]["message"])


def structured_event(data: str) -> bytes:
    head = json.dumps({"specversion": "1.0", "id": "1", "source": "//x", "type": PUBSUB})
    return (head[:-1] + f', "data": {data}}}').encode()


def test_batch_mode_is_unsupported_media(client: Any, world: World) -> None:
    one = json.loads(structured_event("{}"))
    response = client.post("/", data=json.dumps([one, one]), headers={"content-type": BATCH})
    assert response.status_code == 415 and "batch-mode" in error_of(response)
    assert world.records() == []  # the product never saw it


@pytest.mark.parametrize(
    ("headers", "body", "phrase"),
    [
        ({"content-type": STRUCTURED}, structured_event("[" * 50_000 + "]" * 50_000), "nested deeper than 64"),
        (binary(PUBSUB, "1", b"")[0], b"{" * 20_000, "nested deeper than 64"),
        (binary(PUBSUB, "1", b"")[0], b'{"message": {"messageId": ' + b"7" * 5000 + b"}}", "more than 100 digits"),
        ({"content-type": STRUCTURED}, structured_event("9" * 5000), "more than 100 digits"),
        ({"content-type": STRUCTURED}, b"\xff\xfe{}", "not UTF-8"),
        ({"content-type": STRUCTURED}, b"[1, 2]", "JSON object"),
        ({"content-type": "application/json"}, b'{"context": 5, "data": [1]}', "not a CloudEvent"),
    ],
)  # fmt: skip
def test_bodies_the_framework_cannot_parse_get_400(client, world, headers, body, phrase):
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 400 and phrase in error_of(response)
    assert world.training.jobs == {}


def test_unreadable_data_inside_a_good_envelope_is_acked_by_the_product(client, world) -> None:
    body = envelope(b"[" * 10_000, "m-1")  # base64: the guard cannot see into it
    response = client.post("/", data=encode(body), headers=binary(PUBSUB, "m-1", b"")[0])
    assert response.status_code == 200
    (error,) = world.errors()
    assert "nested deeper than 64" in error["message"]


def test_a_transient_failure_inside_the_function_stays_a_500(client, world) -> None:
    world.training.fail_submit.append(TransientError("503 from Vertex"))
    request = envelope(b'{"pipeline": "churn"}', "m-1")
    response = client.post("/", data=encode(request), headers=binary(PUBSUB, "m-1", b"")[0])
    assert response.status_code == 500
    assert (
        client.post("/", data=encode(request), headers=binary(PUBSUB, "m-1", b"")[0]).status_code
        == 200
    )
    assert len(world.training.jobs) == 1


def test_a_body_over_the_limit_is_refused_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_guard, "MAX_BODY", 1024)
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        calls.append(1)
        return Response("OK")(environ, start_response)

    guarded = Client(http_guard.Guard(app))
    response = guarded.post("/", data=b"x" * 2048, headers=binary(PUBSUB, "1", b"")[0])
    assert response.status_code == 413 and calls == []
    assert guarded.post("/", data=b"{}", headers=binary(PUBSUB, "1", b"")[0]).status_code == 200
    assert guarded.get("/").status_code == 200 and len(calls) == 2


def test_main_is_importable_outside_the_framework() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_outside", MAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no app context: install() leaves nothing behind
    assert callable(module.trigger) and callable(module.on_job_event)
