"""The google.pubsub.v1 Publisher and Subscriber gRPC services, on top of the broker.

google-cloud-pubsub ships no generated servicers, so the methods are registered as generic
handlers with the raw protobuf classes behind its proto-plus types.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub

from localcloud.pubsub.broker import MAX_ACK_DEADLINE_S, Broker, Pb
from localcloud.pubsub.errors import InvalidArgument, PubSubError

log = logging.getLogger(__name__)

# How long a Pull without return_immediately waits for a first message.
PULL_WAIT_S = 2.0
# The real service's default when a stream names no max_outstanding_messages.
DEFAULT_MAX_OUTSTANDING = 1000
# A batch per StreamingPull response, like the real service's.
STREAM_BATCH = 100
# Longest sleep of an idle stream before it looks at its own state again.
_STREAM_IDLE_S = 1.0

Empty = empty_pb2.Empty


def _unary(fn: Callable[[Pb], Pb], request: Any, response: Any) -> grpc.RpcMethodHandler:
    """A unary handler that maps the broker's errors to their gRPC status."""

    def handle(req: Pb, context: grpc.ServicerContext) -> Pb:
        try:
            return fn(req)
        except PubSubError as err:
            context.abort(err.code, str(err))

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request.pb().FromString,
        response_serializer=response.SerializeToString,
    )


def _response(message_type: Any) -> Any:
    return message_type.pb() if hasattr(message_type, "pb") else message_type


class PubSubService:
    """Translates requests into broker calls; owns nothing but the broker reference."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        t = pubsub
        b = self._broker

        def method(fn: Callable[[Pb], Pb], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return _unary(fn, req, _response(resp))

        publisher = {
            "CreateTopic": method(b.create_topic, t.Topic, t.Topic),
            "GetTopic": method(lambda r: b.get_topic(r.topic), t.GetTopicRequest, t.Topic),
            "ListTopics": method(self._list_topics, t.ListTopicsRequest, t.ListTopicsResponse),
            "ListTopicSubscriptions": method(
                self._list_topic_subscriptions,
                t.ListTopicSubscriptionsRequest,
                t.ListTopicSubscriptionsResponse,
            ),
            "DeleteTopic": method(self._delete_topic, t.DeleteTopicRequest, Empty),
            "Publish": method(self._publish, t.PublishRequest, t.PublishResponse),
        }
        subscriber = {
            "CreateSubscription": method(b.create_subscription, t.Subscription, t.Subscription),
            "GetSubscription": method(
                lambda r: b.get_subscription(r.subscription),
                t.GetSubscriptionRequest,
                t.Subscription,
            ),
            "UpdateSubscription": method(
                lambda r: b.update_subscription(r.subscription, r.update_mask),
                t.UpdateSubscriptionRequest,
                t.Subscription,
            ),
            "ListSubscriptions": method(
                self._list_subscriptions, t.ListSubscriptionsRequest, t.ListSubscriptionsResponse
            ),
            "DeleteSubscription": method(
                self._delete_subscription, t.DeleteSubscriptionRequest, Empty
            ),
            "ModifyPushConfig": method(self._modify_push_config, t.ModifyPushConfigRequest, Empty),
            "Acknowledge": method(self._acknowledge, t.AcknowledgeRequest, Empty),
            "ModifyAckDeadline": method(
                self._modify_ack_deadline, t.ModifyAckDeadlineRequest, Empty
            ),
            "Pull": grpc.unary_unary_rpc_method_handler(
                self._pull,
                request_deserializer=t.PullRequest.pb().FromString,
                response_serializer=t.PullResponse.pb().SerializeToString,
            ),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(
                self._streaming_pull,
                request_deserializer=t.StreamingPullRequest.pb().FromString,
                response_serializer=t.StreamingPullResponse.pb().SerializeToString,
            ),
        }
        return [
            grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
            grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
        ]

    # -- publisher ------------------------------------------------------------------------

    def _list_topics(self, request: Pb) -> Pb:
        # Everything fits in one page at localcloud's scale.
        response = pubsub.ListTopicsResponse.pb()()
        response.topics.extend(self._broker.list_topics(request.project))
        return response

    def _list_topic_subscriptions(self, request: Pb) -> Pb:
        response = pubsub.ListTopicSubscriptionsResponse.pb()()
        response.subscriptions.extend(self._broker.list_topic_subscriptions(request.topic))
        return response

    def _delete_topic(self, request: Pb) -> Pb:
        self._broker.delete_topic(request.topic)
        return Empty()

    def _publish(self, request: Pb) -> Pb:
        ids = self._broker.publish(request.topic, list(request.messages))
        return pubsub.PublishResponse.pb()(message_ids=ids)

    # -- subscriber -----------------------------------------------------------------------

    def _list_subscriptions(self, request: Pb) -> Pb:
        response = pubsub.ListSubscriptionsResponse.pb()()
        response.subscriptions.extend(self._broker.list_subscriptions(request.project))
        return response

    def _delete_subscription(self, request: Pb) -> Pb:
        self._broker.delete_subscription(request.subscription)
        return Empty()

    def _modify_push_config(self, request: Pb) -> Pb:
        self._broker.modify_push_config(request.subscription, request.push_config)
        return Empty()

    def _acknowledge(self, request: Pb) -> Pb:
        self._broker.acknowledge(request.subscription, list(request.ack_ids))
        return Empty()

    def _modify_ack_deadline(self, request: Pb) -> Pb:
        self._broker.modify_ack_deadline(
            request.subscription, list(request.ack_ids), request.ack_deadline_seconds
        )
        return Empty()

    def _pull(self, request: Pb, context: grpc.ServicerContext) -> Pb:
        """Lease what is deliverable; unless told to return at once, wait a little for a
        first message, as the real service holds a pull open."""
        try:
            if request.max_messages <= 0:
                raise InvalidArgument("max_messages must be positive")
            subscription = self._broker.get_subscription(request.subscription)
            deadline = time.monotonic() + min(PULL_WAIT_S, context.time_remaining() or PULL_WAIT_S)
            while True:
                seen = self._broker.changes
                received = self._broker.lease(
                    request.subscription,
                    request.max_messages,
                    subscription.ack_deadline_seconds,
                )
                left = deadline - time.monotonic()
                if received or request.return_immediately or left <= 0 or not context.is_active():
                    return pubsub.PullResponse.pb()(received_messages=received)
                self._broker.wait(self._until_next(request.subscription, left), since=seen)
        except PubSubError as err:
            context.abort(err.code, str(err))

    def _until_next(self, subscription: str, cap: float) -> float:
        next_at = self._broker.next_deliverable_at(subscription)
        if next_at is None:
            return cap
        return max(0.0, min(cap, next_at - time.monotonic()))

    def _streaming_pull(
        self, requests: Iterator[Pb], context: grpc.ServicerContext
    ) -> Iterator[Pb]:
        first = next(requests, None)
        if first is None:
            return
        stream = _Stream(self._broker, first)
        try:
            stream.open()
        except PubSubError as err:
            context.abort(err.code, str(err))
        context.add_callback(stream.close)
        reader = threading.Thread(
            target=stream.read, args=(requests,), name="pubsub-stream-reader", daemon=True
        )
        reader.start()
        try:
            yield from stream.responses(context)
        except PubSubError as err:
            context.abort(err.code, str(err))
        finally:
            stream.close()


class _Stream:
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
                yield pubsub.StreamingPullResponse.pb()(received_messages=received)
                continue
            self._broker.wait(self._idle_wait(), since=seen)

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
