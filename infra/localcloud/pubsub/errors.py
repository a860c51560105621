"""Errors of the local Pub/Sub server, each carrying the gRPC status the real service uses,
so the official clients raise the same `google.api_core` exceptions."""

from __future__ import annotations

import grpc

from localcloud.errors import LocalCloudError


class PubSubError(LocalCloudError):
    code = grpc.StatusCode.INTERNAL


class NotFound(PubSubError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PubSubError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(PubSubError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ServerClosed(PubSubError):
    code = grpc.StatusCode.UNAVAILABLE
