"""Push delivery: POST each message of a push subscription to its endpoint, the way the real
service does — the JSON wrapper, or with `no_wrapper` the raw data and metadata headers — and
turn the answer into an ack (2xx) or a nack with backoff."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from localcloud.pubsub.broker import Broker, Pb

log = logging.getLogger(__name__)

# The status codes the real service counts as an acknowledgement.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
# Deliveries in flight per subscription: enough that a slow endpoint holds up only its own
# subscription's other messages up to this many, and never another subscription's.
PER_SUBSCRIPTION_LIMIT = 16
# How long the dispatcher sleeps at most when it expects nothing; changes wake it sooner.
_IDLE_WAIT_S = 1.0
# An attribute becomes a header only when HTTP allows its name and value; headers that frame
# the request itself are never taken from attributes.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def push_body(subscription: str, received: Pb) -> dict[str, Any]:
    """The JSON the real service POSTs to a push endpoint (wrapped form). `deliveryAttempt`
    is there only when the subscription counts attempts (it has a dead-letter policy)."""
    message = received.message
    publish_time = message.publish_time.ToJsonString()
    body: dict[str, Any] = {
        "data": base64.b64encode(message.data).decode("ascii"),
        "attributes": dict(message.attributes),
        "messageId": message.message_id,
        "message_id": message.message_id,
        "publishTime": publish_time,
        "publish_time": publish_time,
    }
    if message.ordering_key:
        body["orderingKey"] = message.ordering_key
    wrapper: dict[str, Any] = {"message": body, "subscription": subscription}
    if received.delivery_attempt:
        wrapper["deliveryAttempt"] = received.delivery_attempt
    return wrapper


def unwrapped_headers(subscription: str, received: Pb) -> dict[str, str]:
    """The headers of an unwrapped push that writes metadata: each attribute as `KEY: VALUE`
    and the message's metadata as `x-goog-pubsub-*`."""
    message = received.message
    headers: dict[str, str] = {}
    for key, value in message.attributes.items():
        if not _HEADER_NAME.match(key) or key.lower() in _FRAMING_HEADERS:
            log.info("push: attribute %r is not a usable header name; not sent", key)
        elif any(c in value for c in "\r\n\0"):
            log.info("push: attribute %r has a value no header can carry; not sent", key)
        else:
            headers[key] = value
    headers["x-goog-pubsub-subscription-name"] = subscription
    headers["x-goog-pubsub-message-id"] = message.message_id
    headers["x-goog-pubsub-publish-time"] = message.publish_time.ToJsonString()
    if message.ordering_key:
        headers["x-goog-pubsub-ordering-key"] = message.ordering_key
    return headers


def push_request(subscription: str, push_config: Pb, received: Pb) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the POST for `received` under `push_config`."""
    if push_config.HasField("no_wrapper"):
        # The data is the body, as is; metadata only as headers, when asked for.
        if push_config.no_wrapper.write_metadata:
            return received.message.data, unwrapped_headers(subscription, received)
        return received.message.data, {}
    body = json.dumps(push_body(subscription, received)).encode()
    return body, {"Content-Type": "application/json"}


class _Workers:
    """Persistent worker threads, as many as deliveries ever ran at once: each keeps its
    keep-alive connections, and no delivery waits for a worker."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._busy += 1
            grow = self._busy > self._threads
            if grow:
                self._threads += 1
        self._jobs.put(job)
        if grow:
            threading.Thread(target=self._work, name="pubsub-push-worker", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # one failed delivery must not take the worker with it
                log.exception("push delivery failed")
            finally:
                with self._lock:
                    self._busy -= 1
        with self._lock:
            self._threads -= 1


class _Connections(threading.local):
    """Each worker's keep-alive HTTP connections, by scheme, host and port."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}


class _StaleConnection(Exception):
    """A kept-alive connection that the peer closed while it sat idle."""


def post(
    connections: _Connections,
    endpoint: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
) -> int:
    """POST `body` and return the status. A reused connection the peer has closed in the
    meantime is retried once on a fresh one, as HTTP clients do for idle keep-alives."""
    url = urllib.parse.urlsplit(endpoint)
    try:
        return _post_once(connections, url, body, headers, timeout_s)
    except _StaleConnection:
        return _post_once(connections, url, body, headers, timeout_s)


def _post_once(
    connections: _Connections,
    url: urllib.parse.SplitResult,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
) -> int:
    key = (url.scheme, url.hostname or "", url.port)
    conn = connections.open.pop(key, None)
    reused = conn is not None
    if conn is None:
        https = url.scheme == "https"
        factory = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = factory(key[1], key[2], timeout=timeout_s)
    conn.timeout = timeout_s
    if conn.sock is not None:
        conn.sock.settimeout(timeout_s)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
        conn.close()
        if reused:
            raise _StaleConnection() from err
        raise
    except BaseException:
        conn.close()
        raise
    if response.will_close:
        conn.close()
    else:
        connections.open[key] = conn  # kept only after a clean exchange
    return response.status


class PushDelivery:
    """A dispatcher thread that leases messages of push subscriptions and hands them to
    worker threads, at most `per_subscription` at a time per subscription."""

    def __init__(self, broker: Broker, per_subscription: int = PER_SUBSCRIPTION_LIMIT) -> None:
        self._broker = broker
        self._limit = per_subscription
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers = _Workers()
        self._connections = _Connections()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="pubsub-push", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop dispatching. Deliveries in flight finish on their own; their outcome is
        dropped, so the messages stay pending and are delivered again after a restart."""
        self._stopping.set()
        self._broker.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._workers.stop()

    def _run(self) -> None:
        while not self._stopping.is_set() and not self._broker.closed:
            seen = self._broker.changes
            try:
                wait_s = self._dispatch()
            except Exception:  # a bad subscription must not end delivery for the others
                log.exception("push dispatch failed")
                wait_s = _IDLE_WAIT_S
            self._broker.wait(wait_s, since=seen)

    def _dispatch(self) -> float:
        """Start what is deliverable now; return how long nothing else will be."""
        wait_s = _IDLE_WAIT_S
        now = time.monotonic()
        for name, subscription in self._broker.push_subscriptions():
            with self._lock:
                free = self._limit - self._in_flight.get(name, 0)
            if free <= 0:
                continue  # a finishing delivery wakes the dispatcher
            timeout_s = float(subscription.ack_deadline_seconds)
            # The lease outlasts the request's timeout, so only the worker decides the outcome.
            for received in self._broker.lease(name, free, timeout_s + 5):
                self._begin(name, subscription, received, timeout_s)
            next_at = self._broker.next_deliverable_at(name)
            if next_at is not None:
                wait_s = min(wait_s, max(next_at - now, 0.0))
        return wait_s

    def _begin(self, name: str, subscription: Pb, received: Pb, timeout_s: float) -> None:
        with self._lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
        push_config = subscription.push_config
        self._workers.submit(lambda: self._deliver(name, push_config, received, timeout_s))

    def _deliver(self, name: str, push_config: Pb, received: Pb, timeout_s: float) -> None:
        body, headers = push_request(name, push_config, received)
        acked = self._post(push_config.push_endpoint, body, headers, timeout_s)
        with self._lock:
            self._in_flight[name] -= 1
        if acked:
            self._broker.ack_push(name, received.ack_id)
        else:
            self._broker.nack_push(name, received.ack_id)

    def _post(self, endpoint: str, body: bytes, headers: dict[str, str], timeout_s: float) -> bool:
        try:
            status = post(self._connections, endpoint, body, headers, timeout_s)
        except (OSError, http.client.HTTPException, ValueError) as err:
            log.info("push to %s failed: %s", endpoint, err)
            return False
        return status in ACK_STATUSES
