"""google.logging.v2.LoggingServiceV2 over plaintext gRPC, on top of the LoggingService.

Each request proto becomes the very dict the REST front receives (proto3 JSON, as
`MessageToDict` prints it) and the answer goes back through the response proto, so the
two transports cannot drift apart. google-cloud-logging ships no generated servicer, so
the methods are generic handlers over the raw protobuf classes behind its proto-plus
types; methods not listed here answer UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.cloud.logging_v2.types import logging as logging_types
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from localcloud.errors import LocalCloudError
from localcloud.logging_service import LoggingService
from localcloud.vertex.wire import ApiError

SERVICE_NAME = "google.logging.v2.LoggingServiceV2"
GRPC_WORKERS = 8
# A write may carry up to 10 MB of entries on Google Cloud.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

ServiceCall = Callable[[dict[str, Any]], dict[str, Any]]


def response_message(payload: dict[str, Any], message_type: type[Message]) -> Message:
    """The service's JSON answer as `message_type`; a stored entry the proto cannot hold
    is the server's fault, so INTERNAL."""
    try:
        return json_format.ParseDict(payload, message_type())
    except json_format.ParseError as err:
        raise ApiError("INTERNAL", f"cannot encode the response: {err}") from err


def _unary(call: ServiceCall, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    def handle(request: Message, context: grpc.ServicerContext) -> Message:
        try:
            body = json_format.MessageToDict(request)
            return response_message(call(body), response_type)
        except ApiError as err:
            code, message = grpc.StatusCode[err.status], err.message
        except TypeError as err:
            # MessageToDict cannot print an Any whose type this process does not know.
            code, message = grpc.StatusCode.INVALID_ARGUMENT, f"unsupported payload: {err}"
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort() raises")

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def handlers(service: LoggingService) -> grpc.GenericRpcHandler:
    t = logging_types
    methods = {
        "WriteLogEntries": _unary(
            service.write_entries, t.WriteLogEntriesRequest.pb(), t.WriteLogEntriesResponse.pb()
        ),
        "ListLogEntries": _unary(
            service.list_entries, t.ListLogEntriesRequest.pb(), t.ListLogEntriesResponse.pb()
        ),
        "DeleteLog": _unary(
            lambda body: service.delete_log(str(body.get("logName", ""))),
            t.DeleteLogRequest.pb(),
            empty_pb2.Empty,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


def start_grpc_server(service: LoggingService, address: str) -> tuple[grpc.Server, int]:
    """Serve `service` on `address` (`host:0` picks a free port); returns the server and
    the port it listens on."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="logging"),
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers((handlers(service),))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise LocalCloudError(f"the logging gRPC server cannot listen on {address}: {err}") from err
    if port == 0:
        raise LocalCloudError(f"the logging gRPC server cannot listen on {address}")
    server.start()
    return server, port
