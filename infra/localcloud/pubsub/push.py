"""Push delivery: POST each message of a push subscription to its endpoint, the way the real
service does, and turn the answer into an ack (2xx) or a nack with backoff."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from localcloud.pubsub.broker import Broker, Pb

log = logging.getLogger(__name__)

# The status codes the real service counts as an acknowledgement.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
# Deliveries in flight per subscription: enough that a slow endpoint holds up only its own
# subscription's other messages up to this many, and never another subscription's.
PER_SUBSCRIPTION_LIMIT = 16
# How long the dispatcher sleeps at most when it expects nothing; changes wake it sooner.
_IDLE_WAIT_S = 1.0


def push_body(subscription: str, received: Pb) -> dict[str, Any]:
    """The JSON the real service POSTs to a push endpoint (wrapped form)."""
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
    return {
        "message": body,
        "subscription": subscription,
        "deliveryAttempt": received.delivery_attempt,
    }


class PushDelivery:
    """A dispatcher thread that leases messages of push subscriptions and hands each to a
    short-lived worker thread, at most `per_subscription` at a time per subscription."""

    def __init__(self, broker: Broker, per_subscription: int = PER_SUBSCRIPTION_LIMIT) -> None:
        self._broker = broker
        self._limit = per_subscription
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # One pooled session: keep-alive connections to the endpoints, shared by workers.
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

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
        self._session.close()

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
        worker = threading.Thread(
            target=self._deliver,
            args=(name, subscription.push_config.push_endpoint, received, timeout_s),
            name="pubsub-push-worker",
            daemon=True,
        )
        worker.start()

    def _deliver(self, name: str, endpoint: str, received: Pb, timeout_s: float) -> None:
        acked = self._post(endpoint, push_body(name, received), timeout_s)
        with self._lock:
            self._in_flight[name] -= 1
        if acked:
            self._broker.ack_push(name, received.ack_id)
        else:
            self._broker.nack_push(name, received.ack_id)

    def _post(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> bool:
        try:
            response = self._session.post(
                endpoint,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=timeout_s,
            )
        except requests.RequestException as err:
            log.info("push to %s failed: %s", endpoint, err)
            return False
        with response:
            return response.status_code in ACK_STATUSES
