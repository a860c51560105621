"""Typed events, parsed once.

Every delivery the functions receive — a storage CloudEvent, a Pub/Sub CloudEvent with a
retrain request, a GCS notification, a tick, a routed LogEntry or a Monitoring incident —
becomes one frozen value here, or an `InvalidEvent` naming what is wrong. Base64, JSON,
string-encoded int64s and URL-decoding are handled in this module and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.errors import InvalidEvent

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
STORAGE_PREFIX = "google.cloud.storage.object.v1."
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
JOB_STATE_LABEL = "ml.googleapis.com/job_state"


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


Event = ObjectFinalized | RetrainRequested | Tick | JobEnded | Unhandled


def parse(attributes: Mapping[str, Any], data: Any) -> Event:
    """Turn one CloudEvent (its attributes and its data) into an `Event`."""
    ce_type = str(attributes.get("type") or "")
    event_id = str(attributes.get("id") or "")
    if not ce_type:
        raise InvalidEvent("CloudEvent has no 'type' attribute")
    if not event_id:
        raise InvalidEvent(f"CloudEvent of type {ce_type} has no 'id' attribute")
    body = _as_json_object(data, what=f"{ce_type} data")
    if ce_type == STORAGE_FINALIZED:
        return _object_from_resource(event_id, body, where="storage event data")
    if ce_type.startswith(STORAGE_PREFIX):
        return Unhandled(event_id, f"storage event {ce_type.removeprefix(STORAGE_PREFIX)}")
    if ce_type == PUBSUB_PUBLISHED:
        return _parse_pubsub(event_id, body)
    raise InvalidEvent(f"unsupported CloudEvent type {ce_type!r}")


def _parse_pubsub(event_id: str, body: Mapping[str, Any]) -> Event:
    message = body.get("message")
    if not isinstance(message, Mapping):
        raise InvalidEvent("Pub/Sub event has no 'message' object")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidEvent("Pub/Sub message 'attributes' is not an object")
    message_id = str(message.get("messageId") or message.get("message_id") or event_id)
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
    return _parse_request(message_id, payload, attributes)


def _parse_gcs_notification(
    message_id: str, attributes: Mapping[str, Any], raw: Any
) -> ObjectFinalized | Unhandled:
    event_type = str(attributes["eventType"])
    if event_type != "OBJECT_FINALIZE":
        return Unhandled(message_id, f"GCS notification {event_type}")
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
    return ObjectFinalized(
        event_id=event_id,
        bucket=bucket,
        name=name,
        generation=_int64(res.get("generation"), "generation", where),
        size=_int64(res.get("size", 0), "size", where),
        content_type=res.get("contentType"),
        md5=res.get("md5Hash"),
    )


def _parse_request(
    message_id: str, payload: Mapping[str, Any], attributes: Mapping[str, Any]
) -> RetrainRequested:
    pipeline = payload.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        raise InvalidEvent("retrain request has no 'pipeline' (a non-empty string)")
    unknown = sorted(set(payload) - {"pipeline", "data_uri", "hyperparameters", "reason"})
    if unknown:
        raise InvalidEvent(f"retrain request has unknown field(s): {', '.join(unknown)}")
    data_uri = payload.get("data_uri")
    if data_uri is not None and (not isinstance(data_uri, str) or not data_uri):
        raise InvalidEvent("retrain request 'data_uri' must be a non-empty string")
    hyperparameters = payload.get("hyperparameters") or {}
    if not isinstance(hyperparameters, Mapping):
        raise InvalidEvent("retrain request 'hyperparameters' must be an object")
    reason = payload.get("reason")
    return RetrainRequested(
        event_id=message_id,
        pipeline=pipeline,
        data_uri=data_uri,
        hyperparameters=dict(hyperparameters),
        reason=str(reason) if reason is not None else None,
        requester=attributes.get("requester"),
    )


_DOC_JOB_ID = re.compile(r"\b(?:[Jj]ob|customJobs/)\s*(\d{6,})")


def _parse_incident(message_id: str, payload: Mapping[str, Any]) -> JobEnded | Unhandled:
    incident = payload.get("incident")
    if not isinstance(incident, Mapping):
        raise InvalidEvent("Monitoring notification 'incident' is not an object")
    if str(incident.get("state", "")).lower() == "closed":
        return Unhandled(message_id, "incident closed")
    resource = incident.get("resource")
    labels = resource.get("labels") if isinstance(resource, Mapping) else None
    labels = labels if isinstance(labels, Mapping) else {}
    job_id = labels.get("job_id")
    if not job_id:
        doc = incident.get("documentation") or {}
        doc = doc if isinstance(doc, Mapping) else {}
        text = f"{doc.get('content', '')} {doc.get('subject', '')}"
        match = _DOC_JOB_ID.search(text)
        job_id = match.group(1) if match else None
    if not job_id:
        raise InvalidEvent("incident names no job: no resource.labels.job_id or job in its text")
    return JobEnded(message_id, str(job_id), "incident", project=labels.get("project_id") or None)


def _parse_log_entry(message_id: str, entry: Mapping[str, Any]) -> JobEnded:
    resource = entry.get("resource")
    if not isinstance(resource, Mapping) or resource.get("type") != "ml_job":
        kind = resource.get("type") if isinstance(resource, Mapping) else None
        raise InvalidEvent(f"log entry is not about a Vertex AI job (resource.type={kind!r})")
    labels = resource.get("labels") or {}
    job_id = labels.get("job_id") if isinstance(labels, Mapping) else None
    if not job_id:
        raise InvalidEvent("ml_job log entry has no resource.labels.job_id")
    entry_labels = entry.get("labels") or {}
    hint = entry_labels.get(JOB_STATE_LABEL) if isinstance(entry_labels, Mapping) else None
    return JobEnded(
        message_id,
        str(job_id),
        "log",
        project=labels.get("project_id") or None,
        state_hint=hint or None,
    )


def _decode_message_json(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, str) or not raw:
        raise InvalidEvent("Pub/Sub message has no 'data'")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidEvent("Pub/Sub message data is not valid base64") from err
    return _as_json_object(decoded, what="Pub/Sub message data")


def _as_json_object(data: Any, *, what: str) -> Mapping[str, Any]:
    if isinstance(data, bytes | bytearray):
        try:
            data = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidEvent(f"{what} is not JSON: {err}") from err
    elif isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise InvalidEvent(f"{what} is not JSON: {err}") from err
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"{what} is not a JSON object")
    return data


def _int64(value: Any, name: str, where: str) -> int:
    # int64 fields travel as strings in JSON (proto3 mapping); accept both.
    if isinstance(value, bool):
        raise InvalidEvent(f"{where} field '{name}' is not an integer")
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise InvalidEvent(f"{where} field '{name}' is not an integer: {value!r}") from err
