"""One StreamingPull call: messages leased onto the stream while the client has room, and the
acks and deadline changes the client sends back on it."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import grpc
from google.pubsub_v1.types import pubsub

from localcloud.pubsub.broker import MAX_ACK_DEADLINE_S, Broker, Pb
from localcloud.pubsub.errors import InvalidArgument, PubSubError

log = logging.getLogger(__name__)

# The real service's default when a stream names no max_outstanding_messages.
DEFAULT_MAX_OUTSTANDING = 1000
# A batch per StreamingPull response, like the real service's.
STREAM_BATCH = 100
# Longest sleep of an idle stream before it looks at its own state again.
_STREAM_IDLE_S = 1.0

StreamingPullResponse = pubsub.StreamingPullResponse.pb()


class Stream:
    """One StreamingPull: leases messages onto the stream while the client has room, and
    applies the acks and deadline changes the client sends on the same stream."""

    def __init__(self, broker: Broker, first: Pb) -> None:
        self._broker = broker
        self._first = first
        self.subscription: str = first.subscription
        self._deadline_s = first.stream_ack_deadline_seconds
        self._max_outstanding = first.max_outstanding_messages or DEFAULT_MAX_OUTSTANDING
        self._outstanding: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def open(self) -> None:
        if not 10 <= self._deadline_s <= MAX_ACK_DEADLINE_S:
            raise InvalidArgument(
                f"Invalid stream_ack_deadline_seconds: {self._deadline_s} (10..600)"
            )
        self._broker.get_subscription(self.subscription)
        self._apply(self._first)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._broker.wake()

    def read(self, requests: Iterator[Pb]) -> None:
        """Apply client requests until the client half-closes or the stream ends."""
        try:
            for request in requests:
                if self._closed.is_set():
                    break
                self._apply(request)
        except PubSubError as err:
            log.info("streaming pull on %s: %s", self.subscription, err)
        except grpc.RpcError:
            pass  # the stream was cancelled; responses() notices through close()
        finally:
            self.close()

    def _apply(self, request: Pb) -> None:
        if request.ack_ids:
            self._broker.acknowledge(self.subscription, list(request.ack_ids))
            self._forget(request.ack_ids)
        by_deadline: dict[int, list[str]] = defaultdict(list)
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=False
        ):
            by_deadline[seconds].append(ack_id)
        for seconds, ack_ids in by_deadline.items():
            self._broker.modify_ack_deadline(self.subscription, ack_ids, seconds)
            if seconds == 0:
                self._forget(ack_ids)

    def _forget(self, ack_ids: Any) -> None:
        with self._lock:
            self._outstanding.difference_update(ack_ids)

    def responses(self, context: grpc.ServicerContext) -> Iterator[Pb]:
        while not self._closed.is_set() and context.is_active() and not self._broker.closed:
            seen = self._broker.changes
            room = self._room()
            received = []
            if room:
                batch = min(room, STREAM_BATCH)
                received = self._broker.lease(self.subscription, batch, self._deadline_s)
            if received:
                with self._lock:
                    self._outstanding.update(r.ack_id for r in received)
                yield self._response(received)
                continue
            self._broker.wait(self._idle_wait(), since=seen)

    def _response(self, received: list[Pb]) -> Pb:
        """A batch, with the subscription's properties: the client library turns on its
        exactly-once handling (acks that report their outcome) when the stream says so."""
        response = StreamingPullResponse(received_messages=received)
        subscription = self._broker.get_subscription(self.subscription)
        properties = response.subscription_properties
        properties.exactly_once_delivery_enabled = subscription.enable_exactly_once_delivery
        properties.message_ordering_enabled = subscription.enable_message_ordering
        return response

    def _room(self) -> int:
        """Messages the client may still take: its flow-control limit minus those leased to
        this stream and neither acked, nacked nor expired."""
        with self._lock:
            held = set(self._outstanding)
        live = self._broker.still_leased(self.subscription, held)
        with self._lock:
            self._outstanding.intersection_update(live | (self._outstanding - held))
            return max(0, self._max_outstanding - len(self._outstanding))

    def _idle_wait(self) -> float:
        next_at = self._broker.next_deliverable_at(self.subscription)
        if next_at is None:
            return _STREAM_IDLE_S
        return max(0.0, min(_STREAM_IDLE_S, next_at - time.monotonic()))
