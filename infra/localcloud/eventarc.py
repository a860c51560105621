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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import grpc
import requests
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2, field_mask_pb2
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from requests.adapters import HTTPAdapter

from localcloud.errors import LocalCloudError
from localcloud.procs import free_port, port_is_open

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


@dataclass(frozen=True)
class CloudEventRequest:
    """A binary-mode CloudEvent: the ce-* headers and the JSON body."""

    headers: dict[str, str]
    body: dict[str, Any]


# -- conversion (pure) ------------------------------------------------------------------


def to_cloudevent(route: Route, push: Mapping[str, Any]) -> CloudEventRequest | None:
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
) -> CloudEventRequest:
    if route.topic is None:
        raise BadPush(f"route {route.name!r} has no topic to name as the event source")
    headers = _headers(
        event_id=message["messageId"],
        source=f"//pubsub.googleapis.com/{route.topic}",
        event_type=PUBLISHED_TYPE,
        time=message.get("publishTime"),
    )
    return CloudEventRequest(
        headers, {"subscription": push.get("subscription"), "message": message}
    )


def _storage_event(message: Mapping[str, Any]) -> CloudEventRequest | None:
    attributes = message.get("attributes") or {}
    event_type = attributes.get("eventType")
    if event_type is None or "bucketId" not in attributes or "objectId" not in attributes:
        raise BadPush("the message is not a GCS notification (no eventType/bucketId/objectId)")
    if event_type != "OBJECT_FINALIZE":
        return None
    resource = _object_resource(message)
    headers = _headers(
        event_id=message["messageId"],
        source=f"//storage.googleapis.com/projects/_/buckets/{attributes['bucketId']}",
        event_type=FINALIZED_TYPE,
        time=attributes.get("eventTime") or message.get("publishTime"),
    )
    headers["ce-subject"] = f"objects/{attributes['objectId']}"
    return CloudEventRequest(headers, resource)


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


def _headers(event_id: str, source: str, event_type: str, time: str | None) -> dict[str, str]:
    headers = {
        "ce-id": str(event_id),
        "ce-source": source,
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "content-type": "application/json",
    }
    if time:
        headers["ce-time"] = time
    return headers


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
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
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
        if self._server is not None:
            raise LocalCloudError(f"the eventarc bridge on {self.url} is already running")
        if not self.port:
            self.port = free_port(self.host)
        elif port_is_open(self.host, self.port):
            raise LocalCloudError(
                f"port {self.port} is taken; stop what uses it or pick another port for the bridge"
            )
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="eventarc-bridge",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

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

    def _call(self, route: Route, event: CloudEventRequest) -> tuple[int, str]:
        try:
            response = self._session.post(
                route.target_url,
                data=json.dumps(event.body).encode(),
                headers=event.headers,
                timeout=self.timeout_s,
            )
        except requests.Timeout:
            return 504, f"the function at {route.target_url} did not answer in {self.timeout_s}s"
        except requests.RequestException as err:
            return 502, f"the function at {route.target_url} is unreachable: {err}"
        with response:
            return response.status_code, f"function answered {response.status_code}"


def _handler_for(bridge: EventarcBridge) -> type[BaseHTTPRequestHandler]:
    class PushHandler(BaseHTTPRequestHandler):
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True

        # Keep-alive: the Pub/Sub server reuses its connections for every push.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            prefix = "/push/"
            path = self.path.split("?", 1)[0]
            if path.startswith(prefix):
                status, text = bridge.handle_push(path[len(prefix) :], raw)
            else:
                status, text = 404, f"no push endpoint at {path}; use /push/<route>"
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("eventarc bridge: " + format, *args)

    return PushHandler


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
