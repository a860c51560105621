"""The google.pubsub.v1 Publisher and Subscriber gRPC services, on top of the broker.

google-cloud-pubsub ships no generated servicers, so the methods are registered as generic
handlers with the raw protobuf classes behind its proto-plus types.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub
from google.rpc import status_pb2
from grpc_status import rpc_status

from localcloud.pubsub.broker import Broker, Pb
from localcloud.pubsub.errors import InvalidAckIds, InvalidArgument, PubSubError
from localcloud.pubsub.streaming import Stream

# How long a Pull without return_immediately waits for a first message.
PULL_WAIT_S = 2.0

Empty = empty_pb2.Empty


def _abort(context: grpc.ServicerContext, err: PubSubError) -> NoReturn:
    """End the call with the error's status, and its rich details when it has some."""
    details = err.details()
    if details:
        status = status_pb2.Status(code=err.code.value[0], message=str(err), details=details)
        context.abort_with_status(rpc_status.to_status(status))
    context.abort(err.code, str(err))
    raise AssertionError("abort returns only by raising")


def _unary(fn: Callable[[Pb], Pb], request: Any, response: Any) -> grpc.RpcMethodHandler:
    """A unary handler that maps the broker's errors to their gRPC status."""

    def handle(req: Pb, context: grpc.ServicerContext) -> Pb:
        try:
            return fn(req)
        except PubSubError as err:
            _abort(context, err)

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
            "UpdateTopic": method(
                lambda r: b.update_topic(r.topic, r.update_mask), t.UpdateTopicRequest, t.Topic
            ),
            "ListTopics": method(self._list_topics, t.ListTopicsRequest, t.ListTopicsResponse),
            "ListTopicSubscriptions": method(
                self._list_topic_subscriptions,
                t.ListTopicSubscriptionsRequest,
                t.ListTopicSubscriptionsResponse,
            ),
            "ListTopicSnapshots": method(
                self._list_topic_snapshots,
                t.ListTopicSnapshotsRequest,
                t.ListTopicSnapshotsResponse,
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
            "CreateSnapshot": method(
                lambda r: b.create_snapshot(r.name, r.subscription, dict(r.labels)),
                t.CreateSnapshotRequest,
                t.Snapshot,
            ),
            "GetSnapshot": method(
                lambda r: b.get_snapshot(r.snapshot), t.GetSnapshotRequest, t.Snapshot
            ),
            "ListSnapshots": method(
                self._list_snapshots, t.ListSnapshotsRequest, t.ListSnapshotsResponse
            ),
            "UpdateSnapshot": method(
                lambda r: b.update_snapshot(r.snapshot, r.update_mask),
                t.UpdateSnapshotRequest,
                t.Snapshot,
            ),
            "DeleteSnapshot": method(self._delete_snapshot, t.DeleteSnapshotRequest, Empty),
            "Seek": method(self._seek, t.SeekRequest, t.SeekResponse),
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

    def _list_topic_snapshots(self, request: Pb) -> Pb:
        response = pubsub.ListTopicSnapshotsResponse.pb()()
        response.snapshots.extend(self._broker.list_topic_snapshots(request.topic))
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
        invalid = self._broker.acknowledge(request.subscription, list(request.ack_ids))
        if invalid:
            raise InvalidAckIds(invalid)
        return Empty()

    def _modify_ack_deadline(self, request: Pb) -> Pb:
        invalid = self._broker.modify_ack_deadline(
            request.subscription, list(request.ack_ids), request.ack_deadline_seconds
        )
        if invalid:
            raise InvalidAckIds(invalid)
        return Empty()

    def _list_snapshots(self, request: Pb) -> Pb:
        response = pubsub.ListSnapshotsResponse.pb()()
        response.snapshots.extend(self._broker.list_snapshots(request.project))
        return response

    def _delete_snapshot(self, request: Pb) -> Pb:
        self._broker.delete_snapshot(request.snapshot)
        return Empty()

    def _seek(self, request: Pb) -> Pb:
        target = request.WhichOneof("target")
        if target == "time":
            self._broker.seek_to_time(request.subscription, request.time.ToMicroseconds())
        elif target == "snapshot":
            self._broker.seek_to_snapshot(request.subscription, request.snapshot)
        else:
            raise InvalidArgument("Seek needs a target: either time or snapshot")
        return pubsub.SeekResponse.pb()()

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
            _abort(context, err)

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
        stream = Stream(self._broker, first)
        try:
            stream.open()
        except PubSubError as err:
            _abort(context, err)
        context.add_callback(stream.close)
        reader = threading.Thread(
            target=stream.read, args=(requests,), name="pubsub-stream-reader", daemon=True
        )
        reader.start()
        try:
            yield from stream.responses(context)
        except PubSubError as err:
            _abort(context, err)
        finally:
            stream.close()
