"""Typed events, parsed once.

Every delivery the functions receive — a storage CloudEvent, a Pub/Sub CloudEvent with a
retrain request, a GCS notification, a tick, a routed LogEntry or a Monitoring incident —
becomes one frozen value here, or an `InvalidEvent` naming what is wrong. Base64, JSON,
string-encoded int64s and URL-decoding are handled in this module and nowhere else.

Over ~300 lines (~340) on purpose: "parsed once" means every transport's decoding lives
here together, so a rule (what an int64 or an object name may be) is written once.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain import safejson
from retrain.errors import InvalidEvent, shown

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
STORAGE_PREFIX = "google.cloud.storage.object.v1."
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
JOB_STATE_LABEL = "ml.googleapis.com/job_state"
REQUEST_FIELDS = ("pipeline", "data_uri", "hyperparameters", "reason", "rerun_of")
MAX_REASON = 1000  # characters; a reason is for people, shown in logs and notifications
INT64_MAX = 2**63 - 1
MAX_OBJECT_NAME = 1024  # bytes of UTF-8: GCS's limit


@dataclass(frozen=True)
class ObjectFinalized:
    """A new object generation landed in a bucket."""

    event_id: str
    bucket: str
    name: str
    generation: int
    size: int
    content_type: str | None = None
    md5: str | None = None

    @property
    def key(self) -> str:
        """Idempotency key: duplicates of one finalize share it, an overwrite does not."""
        return f"{self.bucket}/{self.name}#{self.generation}"

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


@dataclass(frozen=True)
class RetrainRequested:
    """A retrain request published to `retrain-requests` (DESIGN.md contract)."""

    event_id: str
    pipeline: str
    data_uri: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    requester: str | None = None
    rerun_of: str | None = None  # a run id: train again on exactly its pinned inputs


@dataclass(frozen=True)
class MalformedRequest:
    """A message that names a pipeline but cannot be a valid retrain request (a field of
    the wrong type, an unknown field). Kept as an event rather than a parse error so that
    the trigger rejects it like any other bad request: logged, acknowledged, and sent to
    the pipeline's channels."""

    event_id: str
    pipeline: str
    field: str
    problem: str  # a sentence naming the field
    requester: str | None = None


@dataclass(frozen=True)
class Tick:
    """A periodic tick: flush quiet batches, submit waiting runs, reconcile job ends."""

    event_id: str


@dataclass(frozen=True)
class JobEnded:
    """A job may have ended. The state is never taken from here: it is read from Vertex."""

    event_id: str
    job_id: str
    source: str  # "log" | "incident" | "reconcile"
    project: str | None = None
    state_hint: str | None = None


@dataclass(frozen=True)
class Unhandled:
    """A well-formed event the product does not act on (a delete, a closed incident)."""

    event_id: str
    reason: str


Event = ObjectFinalized | RetrainRequested | MalformedRequest | Tick | JobEnded | Unhandled


def parse(attributes: Mapping[str, Any], data: Any) -> Event:
    """Turn one CloudEvent (its attributes and its data) into an `Event`. Malformed input
    of any shape raises `InvalidEvent` and nothing else."""
    ce_type = _text(attributes.get("type"))
    event_id = _text(attributes.get("id"))
    if not ce_type:
        raise InvalidEvent("CloudEvent has no 'type' attribute")
    if not event_id:
        raise InvalidEvent(f"CloudEvent of type {shown(ce_type)} has no 'id' attribute")
    body = _as_json_object(data, what=f"{shown(ce_type)} data")
    if ce_type == STORAGE_FINALIZED:
        return _object_from_resource(event_id, body, where="storage event data")
    if ce_type.startswith(STORAGE_PREFIX):
        return Unhandled(event_id, f"storage event {ce_type.removeprefix(STORAGE_PREFIX)}")
    if ce_type == PUBSUB_PUBLISHED:
        return _parse_pubsub(event_id, body)
    raise InvalidEvent(f"unsupported CloudEvent type {shown(ce_type)}")


def _parse_pubsub(event_id: str, body: Mapping[str, Any]) -> Event:
    message = body.get("message")
    if not isinstance(message, Mapping):
        raise InvalidEvent("Pub/Sub event has no 'message' object")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidEvent("Pub/Sub message 'attributes' is not an object")
    message_id = _text(message.get("messageId") or message.get("message_id")) or event_id
    raw = message.get("data")
    if "eventType" in attributes and "bucketId" in attributes:
        return _parse_gcs_notification(message_id, attributes, raw)
    payload = _decode_message_json(raw)
    if payload.get("tick") is True:
        return Tick(message_id)
    if "incident" in payload:
        return _parse_incident(message_id, payload)
    if "logName" in payload and "resource" in payload:
        return _parse_log_entry(message_id, payload)
    return request_from_payload(message_id, payload, attributes)


def _parse_gcs_notification(
    message_id: str, attributes: Mapping[str, Any], raw: Any
) -> ObjectFinalized | Unhandled:
    event_type = _text(attributes["eventType"])
    if event_type != "OBJECT_FINALIZE":
        return Unhandled(message_id, f"GCS notification {shown(event_type)}")
    resource: Mapping[str, Any] = {}
    if raw:
        resource = _decode_message_json(raw)
    merged = {
        "bucket": attributes.get("bucketId"),
        "name": attributes.get("objectId"),
        "generation": attributes.get("objectGeneration"),
        **resource,
    }
    return _object_from_resource(message_id, merged, where="GCS notification")


def _object_from_resource(event_id: str, res: Mapping[str, Any], *, where: str) -> ObjectFinalized:
    bucket = res.get("bucket")
    name = res.get("name")
    if not isinstance(bucket, str) or not bucket:
        raise InvalidEvent(f"{where} has no 'bucket'")
    if not isinstance(name, str) or not name:
        raise InvalidEvent(f"{where} has no object 'name'")
    for key, value, limit in (("bucket", bucket, 222), ("name", name, MAX_OBJECT_NAME)):
        # JSON can carry lone surrogates ("\ud800"); no real bucket or object has them.
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as err:
            raise InvalidEvent(f"{where} field '{key}' is not valid Unicode") from err
        if size > limit:
            raise InvalidEvent(f"{where} field '{key}' is longer than {limit} bytes")
    return ObjectFinalized(
        event_id=event_id,
        bucket=bucket,
        name=name,
        generation=_int64(res.get("generation"), "generation", where),
        size=_int64(res.get("size", 0), "size", where),
        content_type=_text(res.get("contentType")) or None,
        md5=_text(res.get("md5Hash")) or None,
    )


def request_from_payload(
    message_id: str, payload: Mapping[str, Any], attributes: Mapping[str, Any]
) -> RetrainRequested | MalformedRequest:
    """A retrain request message (DESIGN.md contract) as a typed event. A message without a
    pipeline is no request at all (InvalidEvent); one that names a pipeline but has a bad
    field is a `MalformedRequest`. The same function reads what `retrain request` sends."""
    pipeline = payload.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        raise InvalidEvent("retrain request has no 'pipeline' (a non-empty string)")
    requester = _text(attributes.get("requester")) or None

    def malformed(field: str, problem: str) -> MalformedRequest:
        return MalformedRequest(message_id, pipeline, field, problem, requester)

    unknown = sorted(str(key) for key in payload if key not in REQUEST_FIELDS)
    if unknown:
        names = ", ".join(shown(key) for key in unknown[:5])
        return malformed(
            unknown[0], f"unknown field(s) {names} (a request has {', '.join(REQUEST_FIELDS)})"
        )
    data_uri = payload.get("data_uri")
    if data_uri is not None and (not isinstance(data_uri, str) or not data_uri):
        return malformed("data_uri", f"data_uri must be a non-empty string, not {shown(data_uri)}")
    hyperparameters = payload.get("hyperparameters")
    if hyperparameters is None:
        hyperparameters = {}
    if not isinstance(hyperparameters, Mapping):
        return malformed(
            "hyperparameters",
            f"hyperparameters must be an object, not {type(hyperparameters).__name__} "
            f"({shown(hyperparameters)})",
        )
    reason = payload.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        return malformed("reason", f"reason must be a string of at most {MAX_REASON} characters")
    rerun_of = payload.get("rerun_of")
    if rerun_of is not None and (not isinstance(rerun_of, str) or not rerun_of):
        return malformed("rerun_of", f"rerun_of must be a run id, not {shown(rerun_of)}")
    return RetrainRequested(
        event_id=message_id,
        pipeline=pipeline,
        data_uri=data_uri,
        hyperparameters=dict(hyperparameters),
        reason=reason,
        requester=requester,
        rerun_of=rerun_of,
    )


_DOC_JOB_ID = re.compile(r"\b(?:[Jj]ob|customJobs/)\s*(\d{6,})")
_JOB_ID = re.compile(r"[0-9]{1,30}")  # Vertex job ids are numeric


def _parse_incident(message_id: str, payload: Mapping[str, Any]) -> JobEnded | Unhandled:
    incident = payload.get("incident")
    if not isinstance(incident, Mapping):
        raise InvalidEvent("Monitoring notification 'incident' is not an object")
    if _text(incident.get("state")).lower() == "closed":
        return Unhandled(message_id, "incident closed")
    resource = incident.get("resource")
    labels = resource.get("labels") if isinstance(resource, Mapping) else None
    labels = labels if isinstance(labels, Mapping) else {}
    job_id = labels.get("job_id")
    if not job_id:
        doc = incident.get("documentation") or {}
        doc = doc if isinstance(doc, Mapping) else {}
        text = f"{_text(doc.get('content'))} {_text(doc.get('subject'))}"
        match = _DOC_JOB_ID.search(text)
        job_id = match.group(1) if match else None
    if not job_id:
        raise InvalidEvent("incident names no job: no resource.labels.job_id or job in its text")
    return JobEnded(
        message_id,
        _job_id(job_id, "incident"),
        "incident",
        project=_text(labels.get("project_id")) or None,
    )


def _parse_log_entry(message_id: str, entry: Mapping[str, Any]) -> JobEnded:
    resource = entry.get("resource")
    if not isinstance(resource, Mapping) or resource.get("type") != "ml_job":
        kind = resource.get("type") if isinstance(resource, Mapping) else None
        raise InvalidEvent(f"log entry is not about a Vertex AI job (resource.type={shown(kind)})")
    labels = resource.get("labels") or {}
    job_id = labels.get("job_id") if isinstance(labels, Mapping) else None
    if not job_id:
        raise InvalidEvent("ml_job log entry has no resource.labels.job_id")
    entry_labels = entry.get("labels") or {}
    hint = entry_labels.get(JOB_STATE_LABEL) if isinstance(entry_labels, Mapping) else None
    return JobEnded(
        message_id,
        _job_id(job_id, "ml_job log entry"),
        "log",
        project=_text(labels.get("project_id")) or None,
        state_hint=_text(hint) or None,
    )


def _job_id(value: Any, where: str) -> str:
    # The id becomes part of a resource name: only digits, so it cannot name anything else.
    text = _text(value)
    if not _JOB_ID.fullmatch(text):
        raise InvalidEvent(f"{where} job_id is not a Vertex AI job id: {shown(value)}")
    return text


def _decode_message_json(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, str) or not raw:
        raise InvalidEvent("Pub/Sub message has no 'data'")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidEvent("Pub/Sub message data is not valid base64") from err
    return _as_json_object(decoded, what="Pub/Sub message data")


def _as_json_object(data: Any, *, what: str) -> Mapping[str, Any]:
    if isinstance(data, bytes | bytearray | str):
        try:
            data = safejson.loads(data)
        except safejson.JsonRejected as err:
            raise InvalidEvent(f"{what} is not JSON: {err}") from err
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"{what} is not a JSON object")
    return data


def _text(value: Any) -> str:
    """A string attribute, or "" for anything else (absent, a number, an object)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return str(value)  # ids that arrive as JSON numbers
    return ""


def _int64(value: Any, name: str, where: str) -> int:
    # int64 fields travel as strings in JSON (proto3 mapping); accept both, within range.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise InvalidEvent(f"{where} field '{name}' is not an integer: {shown(value)}")
    if not 0 <= number <= INT64_MAX:
        raise InvalidEvent(f"{where} field '{name}' is out of range: {shown(value)}")
    return number
