"""Errors of the local Pub/Sub server, each carrying the gRPC status the real service uses,
so the official clients raise the same `google.api_core` exceptions."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from localcloud.errors import LocalCloudError


class PubSubError(LocalCloudError):
    code = grpc.StatusCode.INTERNAL

    def details(self) -> list[any_pb2.Any]:
        """Rich error details (google.rpc) sent along with the status; none by default."""
        return []


class NotFound(PubSubError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PubSubError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(PubSubError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(PubSubError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ServerClosed(PubSubError):
    code = grpc.StatusCode.UNAVAILABLE


class InvalidAckIds(InvalidArgument):
    """Acks or deadline changes on an exactly-once subscription naming ack ids whose lease is
    gone. The real service names each in an ErrorInfo; the client library reads it to fail
    exactly those futures with AcknowledgeStatus.INVALID_ACK_ID."""

    def __init__(self, ack_ids: Iterable[str]) -> None:
        super().__init__(
            "Some acknowledgement ids in the request were invalid. This could be because the "
            "acknowledgement ids have expired or the acknowledgement ids were malformed."
        )
        self.ack_ids = list(ack_ids)

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason="EXACTLY_ONCE_ACKID_FAILURE", domain="pubsub.googleapis.com"
        )
        for ack_id in self.ack_ids:
            info.metadata[ack_id] = "PERMANENT_FAILURE_INVALID_ACK_ID"
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]
