"""GIVEN captured payloads WHEN parsed THEN typed events, or InvalidEvent naming the problem."""

from __future__ import annotations

import base64

import pytest

from retrain.errors import InvalidEvent
from retrain.events import (
    JobEnded,
    MalformedRequest,
    ObjectFinalized,
    RetrainRequested,
    Tick,
    Unhandled,
    parse,
)
from tests.payloads import load, pubsub_body

PUBSUB = {"type": "google.cloud.pubsub.topic.v1.messagePublished", "id": "m-1"}


def test_storage_finalize_becomes_object_with_int64s_parsed():
    event = parse(*load("storage-finalized.http.json"))
    assert isinstance(event, ObjectFinalized)
    assert event.bucket == "acme-landing"
    assert event.name == "churn/2026-11-26/part-0003.csv"
    assert event.generation == 1795712402430420
    assert event.size > 0
    assert event.key == "acme-landing/churn/2026-11-26/part-0003.csv#1795712402430420"


def test_gcs_notification_becomes_object():
    event = parse(*load("pubsub-gcs-notification.http.json"))
    assert isinstance(event, ObjectFinalized)
    assert (event.bucket, event.name, event.size) == (
        "acme-landing",
        "churn/2026-11-26/_SUCCESS",
        0,
    )
    assert event.generation == 1795712801559044
    assert event.event_id == "4400123456789012"


def test_gcs_notification_of_delete_is_unhandled():
    attributes, body = load("pubsub-gcs-notification.http.json")
    body["message"]["attributes"]["eventType"] = "OBJECT_DELETE"
    assert isinstance(parse(attributes, body), Unhandled)


def test_retrain_request():
    event = parse(*load("pubsub-retrain-request.http.json"))
    assert isinstance(event, RetrainRequested)
    assert event.pipeline == "churn"
    assert event.hyperparameters == {"lr": 0.01}
    assert event.reason == "new labels"
    assert event.event_id == "11386424567890123"


def test_tick():
    assert isinstance(parse(*load("pubsub-tick.http.json")), Tick)


def test_sink_entries_become_job_ended_with_hint():
    ok = parse(*load("sink-job-succeeded.http.json"))
    failed = parse(*load("sink-job-failed.http.json"))
    assert isinstance(ok, JobEnded) and isinstance(failed, JobEnded)
    assert (ok.job_id, ok.source, ok.state_hint) == ("5823194417368121344", "log", "SUCCEEDED")
    assert (failed.job_id, failed.state_hint) == ("2208815734829776896", None)


def test_open_incident_becomes_job_ended_and_closed_is_unhandled():
    attributes, body = load("alert-incident-job-failed.http.json")
    event = parse(attributes, body)
    assert isinstance(event, JobEnded)
    assert (event.job_id, event.source) == ("2208815734829776896", "incident")
    closed = {"incident": {"state": "closed", "resource": {"labels": {"job_id": "1"}}}}
    assert isinstance(parse(PUBSUB, pubsub_body(closed, "m-2")), Unhandled)


def test_incident_job_id_from_documentation():
    incident = {
        "incident": {"state": "open", "documentation": {"content": "Job 1234567890 failed."}}
    }
    event = parse(PUBSUB, pubsub_body(incident, "m-3"))
    assert isinstance(event, JobEnded) and event.job_id == "1234567890"


@pytest.mark.parametrize(
    ("attributes", "data", "message"),
    [
        ({"id": "1"}, {}, "no 'type'"),
        ({"type": "google.cloud.storage.object.v1.finalized"}, {}, "no 'id'"),
        ({"type": "com.example.other", "id": "1"}, {}, "unsupported CloudEvent type"),
        (
            {"type": "google.cloud.storage.object.v1.finalized", "id": "1"},
            {"bucket": "b"},
            "no object 'name'",
        ),
        (
            {"type": "google.cloud.storage.object.v1.finalized", "id": "1"},
            {"bucket": "b", "name": "n", "generation": "x"},
            "'generation' is not an integer",
        ),
        (
            {"type": "google.cloud.storage.object.v1.finalized", "id": "1"},
            b"{not json",
            "is not JSON",
        ),
        (PUBSUB, {"subscription": "s"}, "no 'message'"),
        (PUBSUB, {"message": {"data": "%%%not-base64", "messageId": "1"}}, "not valid base64"),
        (PUBSUB, {"message": {"data": base64.b64encode(b"nope").decode()}}, "is not JSON"),
        (PUBSUB, pubsub_body([1, 2], "m"), "not a JSON object"),
        (PUBSUB, pubsub_body({"data_uri": "gs://b/x"}, "m"), "no 'pipeline'"),
        (
            PUBSUB,
            pubsub_body({"logName": "x", "resource": {"type": "gce_instance"}}, "m"),
            "not about a Vertex AI job",
        ),
        (PUBSUB, pubsub_body({"incident": {"state": "open"}}, "m"), "names no job"),
    ],
)
def test_malformed_payloads_raise_invalid_event_naming_the_problem(attributes, data, message):
    with pytest.raises(InvalidEvent, match=None) as caught:
        parse(attributes, data)
    assert message in str(caught.value)


STORAGE = {"type": "google.cloud.storage.object.v1.finalized", "id": "s-1"}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("attributes", "data", "message"),
    [
        (STORAGE, {"bucket": "b", "name": "n", "generation": "9" * 5000}, "'generation' is not"),
        (STORAGE, b'{"bucket": "b", "name": "n", "generation": ' + b"9" * 5000 + b"}", "digits"),
        (STORAGE, {"bucket": "b", "name": "n", "generation": str(2**64)}, "out of range"),
        (STORAGE, {"bucket": "b", "name": "n", "generation": "-1"}, "'generation' is not"),
        (STORAGE, {"bucket": "b", "name": "n", "generation": 1.5}, "'generation' is not"),
        (STORAGE, {"bucket": "b", "name": "n", "generation": True}, "'generation' is not"),
        (STORAGE, {"bucket": "b", "name": "n", "generation": "١٢"}, "'generation' is not"),
        (STORAGE, {"bucket": "b", "name": "a\ud800b", "generation": "1"}, "not valid Unicode"),
        (STORAGE, {"bucket": "b", "name": "x" * 1025, "generation": "1"}, "longer than"),
        (STORAGE, {"bucket": ["b"], "name": "n"}, "no 'bucket'"),
        (STORAGE, DEEP.encode(), "nested deeper"),
        (STORAGE, DEEP, "nested deeper"),
        (STORAGE, b"\xff\xfe{}", "not UTF-8"),
        (STORAGE, None, "not a JSON object"),
        (STORAGE, [1, 2], "not a JSON object"),
        ({"type": ["t"], "id": "1"}, {}, "no 'type'"),
        ({"type": STORAGE["type"], "id": {"a": 1}}, {}, "no 'id'"),
        (PUBSUB, {"message": {"data": base64.b64encode(DEEP.encode()).decode()}}, "nested"),
        (PUBSUB, pubsub_body(b"\xff\xfe", "m"), "not UTF-8"),
        (PUBSUB, {"message": {"data": "YQ"}}, "not valid base64"),  # bad padding
        (PUBSUB, {"message": {"data": "Y Q=="}}, "not valid base64"),
        (PUBSUB, {"message": {"data": 12}}, "no 'data'"),
        (PUBSUB, {"message": {"data": "e30=", "attributes": [1]}}, "'attributes' is not"),
        (PUBSUB, {"message": "text"}, "no 'message'"),
        (PUBSUB, pubsub_body({"pipeline": ["churn"]}, "m"), "no 'pipeline'"),
        (PUBSUB, pubsub_body({"pipeline": 7}, "m"), "no 'pipeline'"),
        (
            PUBSUB,
            pubsub_body({"logName": "l", "resource": {"type": "ml_job", "labels": {"job_id": "../../x"}}}, "m"),
            "not a Vertex AI job id",
        ),
        (PUBSUB, pubsub_body({"incident": {"resource": {"labels": {"job_id": ["1"]}}}}, "m"), "not a Vertex AI job id"),
        (PUBSUB, pubsub_body({"incident": "open"}, "m"), "'incident' is not an object"),
    ],
)  # fmt: skip
def test_hostile_payloads_raise_only_invalid_event(attributes, data, message):
    with pytest.raises(InvalidEvent) as caught:
        parse(attributes, data)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300  # the message quotes hostile values briefly


@pytest.mark.parametrize(
    ("payload", "field", "phrase"),
    [
        ({"pipeline": "churn", "hyperparameters": 0}, "hyperparameters", "not int (0)"),
        ({"pipeline": "churn", "hyperparameters": False}, "hyperparameters", "not bool"),
        ({"pipeline": "churn", "hyperparameters": [1]}, "hyperparameters", "must be an object"),
        ({"pipeline": "churn", "data_uri": ["gs://b/"]}, "data_uri", "non-empty string"),
        ({"pipeline": "churn", "epochs": 3}, "epochs", "unknown field(s) 'epochs'"),
        ({"pipeline": "churn", "reason": "x" * 1001}, "reason", "at most 1000"),
    ],
)
def test_a_request_naming_a_pipeline_with_a_bad_field_is_a_malformed_request(
    payload, field, phrase
):
    event = parse(PUBSUB, pubsub_body(payload, "m-9", {"requester": "ana"}))
    assert isinstance(event, MalformedRequest)
    assert (event.event_id, event.pipeline, event.field, event.requester) == (
        "m-9",
        "churn",
        field,
        "ana",
    )
    assert phrase in event.problem


def test_odd_unicode_object_names_parse():
    for name in ("churn/ü ñ 😀.csv", "churn/\u202egpj.csv", "churn/a\nb.csv", "churn//x.csv"):
        event = parse(STORAGE, {"bucket": "acme-landing", "name": name, "generation": "3"})
        assert isinstance(event, ObjectFinalized) and event.name == name
