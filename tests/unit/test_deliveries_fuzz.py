"""Property tests: generated deliveries posted to the real entry points of functions/main.py
through functions-framework's test client, with the composition root given fakes of our
own ports. Whatever arrives — CloudEvents in binary and structured mode, Pub/Sub envelopes,
retrain requests, ticks, LogEntries, incidents, junk — the functions never raise, never
answer 5xx (no fake fails transiently here, so every error is permanent), and start no job
for an invalid input. A valid request still starts exactly one.

RETRAIN_FUZZ_EXAMPLES sets the examples per property (default 100; e.g. 5000 for a long
run)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrain import bootstrap
from retrain.config import parse_config
from retrain.errors import PermanentError
from retrain.jobevents import JobEvents
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.ports import JobInfo
from retrain.trigger import Trigger
from tests.fakes import SAMPLE_CONFIG, FakeTraining, MemoryStateStore, fake_ports
from tests.unit.test_hostile_requests import NOTIFY, Recorder
from tests.unit.test_jobevents import FakeBlobs, FakeEndpoints, FakeLogs, FakeRegistry

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
EXAMPLES = int(os.environ.get("RETRAIN_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # no timed assertions: a slow example is not a failure
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PIPELINES = ("churn", "events", "clicks")
STORAGE = "google.cloud.storage.object.v1.finalized"
PUBSUB = "google.cloud.pubsub.topic.v1.messagePublished"


class StrictTraining(FakeTraining):
    """As Vertex answers: an unknown job is a 404, a permanent error."""

    def get(self, name: str) -> JobInfo:
        if name not in self.jobs:
            raise PermanentError(f"get {name}: 404 CustomJob not found")
        return super().get(name)


class World:
    """The composition root over fakes: what `bootstrap.app()` returns in these tests."""

    def __init__(self) -> None:
        self.config = parse_config(SAMPLE_CONFIG + NOTIFY, "pipelines.toml")
        self.store = MemoryStateStore()
        self.training = StrictTraining()
        self.channel = Recorder()
        self.stream = io.StringIO()
        self.log = Logger(self.stream)
        ledger = Ledger(self.store)
        channels = lambda _p: [self.channel]  # noqa: E731
        self.trigger = Trigger(
            lambda: fake_ports(self.config, ledger, self.training, notifiers=channels),
            self.log,
            sleep=lambda _s: None,
        )
        blobs = FakeBlobs()
        self.job_events = JobEvents(
            lambda: fake_ports(
                self.config,
                ledger,
                self.training,
                notifiers=channels,
                registry=FakeRegistry(),
                endpoints=FakeEndpoints(),
                blobs=blobs,
                job_logs=FakeLogs(),
            ),
            self.log,
            sleep=lambda _s: None,
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["severity"] == "ERROR"]


class Served:
    """Both entry points, served by functions-framework, over the current World."""

    def __init__(self) -> None:
        self.world = World()
        self.trigger = functions_framework.create_app("trigger", str(MAIN)).test_client()
        self.job_events = functions_framework.create_app("on_job_event", str(MAIN)).test_client()

    def fresh(self) -> World:
        self.world = World()
        return self.world

    def post(self, headers: dict[str, str], body: bytes, to: str = "trigger") -> int:
        client = self.trigger if to == "trigger" else self.job_events
        return client.post("/", headers=headers, data=body).status_code


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    # Module-scoped because hypothesis reruns the test body; each example takes a fresh
    # World, so no state leaks between examples.
    original = bootstrap.app
    serving = Served()
    bootstrap.app = lambda: serving.world  # type: ignore[assignment,return-value]
    try:
        yield serving
    finally:
        bootstrap.app = original  # type: ignore[method-assign]


# strategies ---------------------------------------------------------------------------
def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=2**63 - 2, max_value=10**40)
        | st.floats()  # nan and ±inf included: Python writes them as NaN/Infinity
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def odd_text() -> st.SearchStrategy[str]:
    """Text with control characters, bidi overrides, separators and lone surrogates."""
    odd = st.sampled_from(
        ["\n", "\r", "\t", "\x00", "\x7f", "\u202e", "\u200b", "\u2028", "\ud800"]
    )
    return st.lists(st.text(max_size=4) | odd, min_size=1, max_size=6).map("".join)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def binary(ce_type: str, event_id: str, data: bytes, content_type: str = "application/json"):
    headers = {
        "ce-id": event_id,
        "ce-source": "//pubsub.googleapis.com/projects/acme-ml/topics/t",
        "ce-specversion": "1.0",
        "ce-type": ce_type,
        "content-type": content_type,
    }
    return headers, data


def structured(ce_type: str, event_id: str, data: Any):
    event = {"specversion": "1.0", "id": event_id, "source": "//x", "type": ce_type, "data": data}
    return {"content-type": "application/cloudevents+json"}, encode(event)


def envelope(data: bytes, message_id: str, attributes: Any = None) -> dict[str, Any]:
    message = {"data": base64.b64encode(data).decode(), "messageId": message_id}
    if attributes is not None:
        message["attributes"] = attributes
    return {"subscription": "projects/acme-ml/subscriptions/s", "message": message}


@st.composite
def deliveries(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> tuple[dict, bytes]:
    """A Pub/Sub CloudEvent carrying one of `payloads`, in binary or structured mode."""
    message_id = draw(st.text(string.digits, min_size=1, max_size=12))
    body = envelope(draw(payloads), message_id)
    if draw(st.booleans()):
        return binary(PUBSUB, message_id, encode(body))
    return structured(PUBSUB, message_id, body)


# hostile retrain requests: a valid request with exactly one defect ---------------------
SAFE_SEGMENT = st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=8)
VALID_URI = st.lists(SAFE_SEGMENT, max_size=3).map(
    lambda parts: "gs://acme-landing/" + "".join(p + "/" for p in parts)
)


@st.composite
def defective_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """(message data, the field it must be refused on)."""
    request: dict[str, Any] = {"pipeline": "churn", "data_uri": draw(VALID_URI)}
    defect = draw(st.sampled_from(["uri_char", "uri_segment", "uri_bucket", "uri_type",
                                   "hp_object", "hp_key", "hp_type", "hp_number", "field"]))  # fmt: skip
    field = "data_uri"
    if defect == "uri_char":
        uri = request["data_uri"]
        char = draw(st.sampled_from(list("\n\r\t\x00 %?#\u202e\u200b\u00a0\u2028")))
        at = draw(st.integers(len("gs://acme-landing/"), len(uri)))
        request["data_uri"] = uri[:at] + char + uri[at:] + draw(st.sampled_from(["", "--epochs=9"]))
    elif defect == "uri_segment":
        bad = draw(st.sampled_from(["..", ".", ""]))
        request["data_uri"] = draw(VALID_URI) + bad + "/" + draw(SAFE_SEGMENT)
    elif defect == "uri_bucket":
        bucket = draw(
            st.sampled_from(
                ["acme-landing.evil", "ACME-LANDING", "acme-landing.", "acme-l\u0430nding"]
            )
            | st.text(string.ascii_lowercase + ".-", min_size=1).filter(
                lambda b: b != "acme-landing"
            )
        )
        request["data_uri"] = f"gs://{bucket}/" + draw(SAFE_SEGMENT)
    elif defect == "uri_type":
        request["data_uri"] = draw(
            json_values().filter(lambda v: not isinstance(v, str) and v is not None) | st.just("")
        )
    elif defect == "hp_object":
        field = "hyperparameters"
        request["hyperparameters"] = draw(
            json_values().filter(lambda v: not isinstance(v, dict) and v is not None)
        )
    elif defect == "hp_key":
        key = draw(st.text(max_size=10).filter(lambda k: k not in ("lr", "batch_size")))
        request["hyperparameters"] = {key: draw(json_values())}
        field = "hyperparameters"
    elif defect == "hp_type":
        key = draw(st.sampled_from(["lr", "batch_size"]))
        wrong = json_values().filter(
            lambda v: (
                not (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63)
                and not (key == "lr" and isinstance(v, float) and v == v and abs(v) != float("inf"))
            )
        )
        request["hyperparameters"] = {key: draw(wrong | odd_text())}
        field = f"hyperparameters.{key}"
    elif defect == "hp_number":
        key = draw(st.sampled_from(["lr", "batch_size"]))
        bad = st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "9" * 5000, str(2**63)])
        data = f'{{"pipeline": "churn", "hyperparameters": {{"{key}": {draw(bad)}}}}}'
        return data.encode(), f"hyperparameters.{key}"
    else:
        extra = draw(st.text(min_size=1, max_size=10).filter(
            lambda k: k not in ("pipeline", "data_uri", "hyperparameters", "reason")))  # fmt: skip
        request[extra] = draw(json_values())
        field = extra
    return encode(request), field


@given(case=defective_requests(), structured_mode=st.booleans())
@FUZZ
def test_a_defective_request_is_refused_naming_its_field_with_no_job(
    served: Served, case: tuple[bytes, str], structured_mode: bool
) -> None:
    world = served.fresh()
    data, field = case
    body = envelope(data, "m-1")
    headers, raw = (
        structured(PUBSUB, "m-1", body) if structured_mode else binary(PUBSUB, "m-1", encode(body))
    )
    assert served.post(headers, raw) == 200
    assert world.training.jobs == {} and world.store.keys("runs/") == []
    (error,) = world.errors()
    assert error["field"].startswith(field) and error["pipeline"] == "churn"
    assert [d["field"] for d, _ in world.channel.sent] == [error["field"]]


@given(
    data_uri=st.none() | VALID_URI,
    lr=st.none() | st.floats(-1e6, 1e6) | st.integers(-1000, 1000),
    batch_size=st.none() | st.integers(1, 2**31),
    reason=st.none() | st.text(max_size=50),
    structured_mode=st.booleans(),
)
@FUZZ
def test_a_valid_request_starts_exactly_one_job(
    served: Served, data_uri, lr, batch_size, reason, structured_mode
) -> None:
    world = served.fresh()
    request: dict[str, Any] = {"pipeline": "churn"}
    overrides = {k: v for k, v in (("lr", lr), ("batch_size", batch_size)) if v is not None}
    for key, value in (("data_uri", data_uri), ("hyperparameters", overrides), ("reason", reason)):
        if value is not None:
            request[key] = value
    body = envelope(encode(request), "m-1")
    headers, raw = (
        structured(PUBSUB, "m-1", body) if structured_mode else binary(PUBSUB, "m-1", encode(body))
    )
    assert served.post(headers, raw) == 200
    assert served.post(headers, raw) == 200  # a redelivery
    (spec,) = world.training.specs.values()
    assert f"--data-uri={data_uri or 'gs://acme-landing/churn/'}" in spec.worker_pools[0].args
    assert world.errors() == []


# anything at all: never a 5xx, never a job ------------------------------------------------
def request_like() -> st.SearchStrategy[bytes]:
    fields = st.fixed_dictionaries(
        {},
        optional={
            "pipeline": st.sampled_from(["nope", "", "churn/..", "CHURN"]) | odd_text() | json_values(3),
            "data_uri": odd_text() | json_values(3),
            "hyperparameters": json_values(),
            "reason": json_values(3),
            "tick": json_values(1),
        },
    )  # fmt: skip
    return fields.map(encode)


def job_event_like() -> st.SearchStrategy[bytes]:
    job_id = st.text(string.digits, min_size=1, max_size=20) | odd_text() | json_values(2)
    entry = st.fixed_dictionaries(
        {"logName": st.text(max_size=10), "resource": st.fixed_dictionaries(
            {"type": st.sampled_from(["ml_job", "gce_instance"]) | json_values(1),
             "labels": st.fixed_dictionaries({"job_id": job_id}) | json_values(2)})},
        optional={"labels": json_values(3), "textPayload": odd_text()},
    )  # fmt: skip
    incident = st.fixed_dictionaries(
        {"incident": st.fixed_dictionaries(
            {}, optional={"state": st.sampled_from(["open", "closed"]) | json_values(1),
                          "resource": json_values(4), "documentation": json_values(4)}) | json_values(2)},
        optional={"version": st.just("1.2")},
    )  # fmt: skip
    return (entry | incident).map(encode)


def raw_bytes() -> st.SearchStrategy[bytes]:
    hazards = st.sampled_from(
        [b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"", b"null", b"{", b"[]"]
    )
    return hazards | st.binary(max_size=64) | json_values().map(encode)


@st.composite
def anything(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    kind = draw(st.sampled_from(["pubsub", "gcs", "storage", "structured", "raw"]))
    # Header values travel as latin-1 without line breaks; a JSON id may be anything.
    header_id = draw(
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=12)
    )
    event_id = draw(st.text(max_size=12) | st.just(header_id))
    if kind == "pubsub":
        return draw(deliveries(request_like() | job_event_like() | raw_bytes()))
    if kind == "gcs":
        attributes = draw(st.fixed_dictionaries(
            {"eventType": st.sampled_from(["OBJECT_FINALIZE", "OBJECT_DELETE"]) | odd_text(),
             "bucketId": st.sampled_from(["elsewhere", ""]) | odd_text()},
            optional={"objectId": odd_text(), "objectGeneration": json_values(1).map(str)}))  # fmt: skip
        body = envelope(draw(raw_bytes() | st.just(b"")), "g-1", attributes)
        return binary(PUBSUB, "g-1", encode(body))
    if kind == "storage":
        resource = draw(st.fixed_dictionaries(
            {"bucket": st.sampled_from(["elsewhere"]) | odd_text(), "name": odd_text()},
            optional={"generation": json_values(1), "size": json_values(1)}))  # fmt: skip
        return binary(STORAGE, header_id or "s-1", encode(resource))
    if kind == "structured":
        return structured(
            draw(st.sampled_from([STORAGE, PUBSUB]) | odd_text()), event_id, draw(json_values())
        )
    content_type = draw(st.sampled_from([
        "application/json", "application/cloudevents+json", "application/cloudevents-batch+json",
        "text/plain", "application/octet-stream"]))  # fmt: skip
    headers = {"content-type": content_type}
    if draw(st.booleans()):
        headers.update(binary(draw(st.sampled_from([STORAGE, PUBSUB])), header_id or "r-1", b"")[0])
        headers["content-type"] = content_type
    return headers, draw(raw_bytes())


@given(delivery=anything(), to=st.sampled_from(["trigger", "job-events"]))
@FUZZ
def test_any_delivery_is_answered_without_5xx_and_starts_no_job(
    served: Served, delivery: tuple[dict[str, str], bytes], to: str
) -> None:
    world = served.fresh()
    headers, body = delivery
    status = served.post(headers, body, to)
    assert status < 500, (status, headers, body[:200])
    assert world.training.jobs == {} and world.store.keys("runs/") == []


@given(
    attributes=st.dictionaries(
        st.sampled_from(["type", "id", "source", "subject"]) | st.text(max_size=4),
        st.sampled_from([STORAGE, PUBSUB, "google.cloud.storage.object.v1.deleted"])
        | json_values(2),
    ),
    data=raw_bytes()
    | json_values()
    | (request_like() | job_event_like() | raw_bytes()).map(lambda b: envelope(b, "m"))
    | st.builds(lambda a, b: envelope(b, "g", a), json_values(3), raw_bytes()),
)
@FUZZ
def test_the_parser_raises_nothing_but_invalid_event(attributes: Any, data: Any) -> None:
    from retrain.errors import InvalidEvent
    from retrain.events import parse

    with contextlib.suppress(InvalidEvent):  # anything else fails the test
        parse(attributes, data)
