"""The eventarc bridge: Pub/Sub push requests in, binary-mode CloudEvents out.

Eventarc delivers to a gen2 function through a push subscription; this bridge is the
endpoint of such subscriptions. Each request is turned into the CloudEvent Eventarc would
POST (a `messagePublished` event for a topic, a storage `finalized` event for a GCS
notification) and the function's status code goes back to Pub/Sub unchanged, so retries,
backoff and dead-lettering stay Pub/Sub's business, as in production.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

import grpc
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2, field_mask_pb2
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from requests.adapters import HTTPAdapter
from werkzeug.wrappers import Request, Response

from localcloud.errors import LocalCloudError
from localcloud.httpserver import HttpServer

log = logging.getLogger(__name__)

Kind = Literal["pubsub", "storage"]
KINDS: tuple[Kind, ...] = ("pubsub", "storage")

PUBLISHED_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"
# A gen2 function's default timeout, the longest Eventarc waits for an answer.
DEFAULT_FUNCTION_TIMEOUT_S = 540.0
# Eventarc's own subscriptions use the longest ack deadline: the push waits for the function.
EVENTARC_ACK_DEADLINE_S = 600
# The object resource's int64 fields, strings in the JSON API and in storage CloudEvents.
_INT64_FIELDS = ("generation", "metageneration", "size")


class BadPush(LocalCloudError):
    """A push request the bridge cannot turn into a CloudEvent."""


@dataclass(frozen=True)
class Route:
    name: str
    target_url: str
    kind: Kind
    topic: str | None = None  # projects/P/topics/T, the ce-source of `pubsub` routes


# -- conversion (pure) ------------------------------------------------------------------


def to_cloudevent(route: Route, push: Mapping[str, Any]) -> CloudEvent | None:
    """The CloudEvent for a push request on `route`, or None for a notification that
    Eventarc's storage trigger would not deliver (anything but a finalize)."""
    message = push.get("message")
    if not isinstance(message, Mapping) or not message.get("messageId"):
        raise BadPush("the push body has no message with a messageId")
    if route.kind == "storage":
        return _storage_event(message)
    return _published_event(route, push, message)


def _published_event(
    route: Route, push: Mapping[str, Any], message: Mapping[str, Any]
) -> CloudEvent:
    if route.topic is None:
        raise BadPush(f"route {route.name!r} has no topic to name as the event source")
    attributes = _attributes(
        event_id=message["messageId"],
        source=f"//pubsub.googleapis.com/{route.topic}",
        event_type=PUBLISHED_TYPE,
        time=message.get("publishTime"),
    )
    return CloudEvent(attributes, {"subscription": push.get("subscription"), "message": message})


def _storage_event(message: Mapping[str, Any]) -> CloudEvent | None:
    attributes = message.get("attributes") or {}
    event_type = attributes.get("eventType")
    if event_type is None or "bucketId" not in attributes or "objectId" not in attributes:
        raise BadPush("the message is not a GCS notification (no eventType/bucketId/objectId)")
    if event_type != "OBJECT_FINALIZE":
        return None
    event = _attributes(
        event_id=message["messageId"],
        source=f"//storage.googleapis.com/projects/_/buckets/{attributes['bucketId']}",
        event_type=FINALIZED_TYPE,
        time=attributes.get("eventTime") or message.get("publishTime"),
    )
    event["subject"] = f"objects/{attributes['objectId']}"
    return CloudEvent(event, _object_resource(message))


def _object_resource(message: Mapping[str, Any]) -> dict[str, Any]:
    """The object resource carried by a JSON_API_V1 notification, int64 fields as strings."""
    try:
        resource = json.loads(base64.b64decode(message.get("data") or "", validate=True))
    except (binascii.Error, ValueError) as err:
        raise BadPush(f"the notification's data is not base64 JSON: {err}") from err
    if not isinstance(resource, dict):
        raise BadPush("the notification's data is not a JSON object")
    for key in _INT64_FIELDS:
        if isinstance(resource.get(key), int):
            resource[key] = str(resource[key])
    return resource


def _attributes(event_id: str, source: str, event_type: str, time: str | None) -> dict[str, str]:
    attributes = {
        "id": str(event_id),
        "source": source,
        "specversion": "1.0",
        "type": event_type,
        "datacontenttype": "application/json",
    }
    # Without one the SDK stamps the current time: Eventarc's events always carry a time.
    if time:
        attributes["time"] = time
    return attributes


# -- the HTTP server --------------------------------------------------------------------


class EventarcBridge:
    """An HTTP server taking Pub/Sub pushes on `/push/<route>` and calling the route's
    function with the matching CloudEvent."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        timeout_s: float = DEFAULT_FUNCTION_TIMEOUT_S,
    ) -> None:
        self.port = port
        self.host = host
        self.timeout_s = timeout_s
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._http = HttpServer(
            Request.application(self._serve), name="eventarc bridge", host=host, port=port
        )
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def push_endpoint(self, name: str) -> str:
        return f"{self.url}/push/{name}"

    def add_route(self, name: str, target_url: str, kind: Kind, topic: str | None = None) -> None:
        """Send pushes on `/push/<name>` to `target_url` as `kind` events. A `pubsub` route
        names its topic (projects/P/topics/T): the CloudEvent's source is the topic, which
        a push request does not carry."""
        if kind not in KINDS:
            raise LocalCloudError(f"unknown route kind {kind!r}; use one of {', '.join(KINDS)}")
        if kind == "pubsub" and not topic:
            raise LocalCloudError(f"pubsub route {name!r} needs its topic (projects/P/topics/T)")
        if not name or "/" in name:
            raise LocalCloudError(f"route name {name!r} must be non-empty and without '/'")
        with self._lock:
            self._routes[name] = Route(name, target_url, kind, topic)

    def route(self, name: str) -> Route | None:
        with self._lock:
            return self._routes.get(name)

    def start(self) -> EventarcBridge:
        self._http.start()
        self.port = self._http.port
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> EventarcBridge:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def handle_push(self, route_name: str, raw: bytes) -> tuple[int, str]:
        """Status and short text for Pub/Sub: the function's status, or why none was asked."""
        route = self.route(route_name)
        if route is None:
            return 404, f"no route named {route_name!r}"
        try:
            push = json.loads(raw)
            if not isinstance(push, dict):
                raise BadPush("the push body is not a JSON object")
            event = to_cloudevent(route, push)
        except (ValueError, BadPush) as err:
            # Not acked: Pub/Sub retries, then dead-letters, which makes the problem visible.
            log.warning("eventarc bridge: bad push on route %s: %s", route_name, err)
            return 400, f"bad push request: {err}"
        if event is None:
            return 204, "not a finalize notification; dropped"
        return self._call(route, event)

    def _serve(self, request: Request) -> Response:
        prefix, path = "/push/", request.path
        if request.method == "POST" and path.startswith(prefix):
            status, text = self.handle_push(path[len(prefix) :], request.get_data())
        else:
            status, text = 404, f"no push endpoint at {request.method} {path}; use /push/<route>"
        return Response(text, status=status, content_type="text/plain; charset=utf-8")

    def _call(self, route: Route, event: CloudEvent) -> tuple[int, str]:
        headers, body = to_binary(event)  # binary mode, as Eventarc delivers
        try:
            response = self._session.post(
                route.target_url, data=body, headers=headers, timeout=self.timeout_s
            )
        except requests.Timeout:
            return 504, f"the function at {route.target_url} did not answer in {self.timeout_s}s"
        except requests.RequestException as err:
            return 502, f"the function at {route.target_url} is unreachable: {err}"
        with response:
            return response.status_code, f"function answered {response.status_code}"


# -- wiring a trigger -------------------------------------------------------------------


def connect(
    pubsub_host: str,
    project: str,
    topic: str,
    subscription: str,
    bridge: EventarcBridge,
    route_name: str,
    target_url: str,
    kind: Kind,
    dead_letter_topic: str | None = None,
    max_attempts: int = 5,
    min_backoff: float = 10.0,
    max_backoff: float = 600.0,
) -> str:
    """What creating an Eventarc trigger does: a route on the bridge and a push subscription
    of `topic` to it, made with the official clients. Idempotent: existing topics are kept,
    an existing subscription is updated to the current endpoint and policies. Ids or full
    resource names are accepted; returns the subscription's name."""
    topic_name = _resource(project, "topics", topic)
    subscription_name = _resource(project, "subscriptions", subscription)
    dead_letter_name = (
        _resource(project, "topics", dead_letter_topic) if dead_letter_topic else None
    )
    bridge.add_route(route_name, target_url, kind, topic=topic_name)
    settings: dict[str, Any] = {
        "push_config": {"push_endpoint": bridge.push_endpoint(route_name)},
        "ack_deadline_seconds": EVENTARC_ACK_DEADLINE_S,
        "retry_policy": {
            "minimum_backoff": _duration(min_backoff),
            "maximum_backoff": _duration(max_backoff),
        },
    }
    if dead_letter_name:
        settings["dead_letter_policy"] = {
            "dead_letter_topic": dead_letter_name,
            "max_delivery_attempts": max_attempts,
        }
    channel = grpc.insecure_channel(pubsub_host)
    try:
        publisher = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        for name in filter(None, (topic_name, dead_letter_name)):
            _ensure_topic(publisher, name)
        _ensure_subscription(subscriber, subscription_name, topic_name, settings)
    finally:
        channel.close()
    return subscription_name


def _ensure_topic(publisher: pubsub_v1.PublisherClient, name: str) -> None:
    with contextlib.suppress(exceptions.AlreadyExists):
        publisher.create_topic(name=name)


def _ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient, name: str, topic: str, settings: dict[str, Any]
) -> None:
    try:
        subscriber.create_subscription(request={"name": name, "topic": topic, **settings})
        return
    except exceptions.AlreadyExists:
        pass
    existing = subscriber.get_subscription(subscription=name)
    if existing.topic != topic:
        raise LocalCloudError(
            f"subscription {name} already exists on {existing.topic}, not on {topic}; "
            "delete it or pick another subscription name"
        )
    paths = list(settings)
    if "dead_letter_policy" not in settings:
        paths.append("dead_letter_policy")  # clears a policy no longer asked for
    subscriber.update_subscription(
        request={
            "subscription": {"name": name, **settings},
            "update_mask": field_mask_pb2.FieldMask(paths=paths),
        }
    )


def _resource(project: str, collection: str, name: str) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/{collection}/{name}"


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration
