"""The Vertex AI gRPC front: plaintext gRPC for the `google.cloud.aiplatform.v1` services
and `google.longrunning.Operations`, over the same service layer as the REST front.

Each unary call is transcoded into the very HTTP request the GAPIC REST transport would
send for it — the HTTP rules, body and query parameters come from the client library's
own `rest_base` tables — and handed to `VertexServer.dispatch`. So one implementation
answers both transports, and a call behaves the same whichever a client picks. This is how
Google's own gateways relate the two: the REST surface is the gRPC surface transcoded.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from google.api_core import rest_helpers
from google.protobuf.message import Message

from localcloud.tls import Certificate
from localcloud.vertex.wire import ApiError

LOG = logging.getLogger(__name__)

# (gRPC service name, module under google.cloud.aiplatform_v1.services)
SERVICES = (
    ("JobService", "job_service"),
    ("ModelService", "model_service"),
    ("EndpointService", "endpoint_service"),
    ("PredictionService", "prediction_service"),
    ("PipelineService", "pipeline_service"),
)
_PACKAGE = "google.cloud.aiplatform.v1"
# The long-running operations every service shares; transcoded with the HTTP rules the
# GAPIC transports give their Operations mixin.
_OPERATIONS = "google.longrunning.Operations"
_OPERATION_METHODS = ("GetOperation", "ListOperations", "CancelOperation", "DeleteOperation")
_UNARY = re.compile(r'\.unary_unary\(\s*"(/[^"]+)"')
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

Dispatch = Callable[[str, str, dict[str, str], Any], Message | None]


@dataclass(frozen=True)
class _Method:
    request_type: Any  # a proto-plus class or a raw protobuf class
    http_options: list[dict[str, str]]

    def parse(self, data: bytes) -> Any:
        if hasattr(self.request_type, "deserialize"):
            return self.request_type.deserialize(data)
        return self.request_type.FromString(data)


def _methods() -> dict[str, _Method]:
    """Every unary method of the served services, keyed by its gRPC path."""
    table: dict[str, _Method] = {}
    for service, module in SERVICES:
        transports = f"google.cloud.aiplatform_v1.services.{module}.transports"
        rest_base = importlib.import_module(f"{transports}.rest_base")
        rest = importlib.import_module(f"{transports}.rest")
        grpc_module = importlib.import_module(f"{transports}.grpc")
        base = getattr(rest_base, f"_Base{service}RestTransport")
        transport = getattr(rest, f"{service}RestTransport")
        unary = set(_UNARY.findall(inspect.getsource(grpc_module)))
        for path in sorted(unary):
            owner, name = path.strip("/").split("/")
            if owner == f"{_PACKAGE}.{service}":
                method = _method(base, transport, name)
                if method is not None:
                    table[path] = method
        for name in _OPERATION_METHODS:
            key = f"/{_OPERATIONS}/{name}"
            if key not in table:
                method = _method(base, transport, name)
                if method is not None:
                    table[key] = method
    return table


def _method(base: Any, transport: Any, name: str) -> _Method | None:
    rules = getattr(base, f"_Base{name}", None)
    call = getattr(transport, f"_{name}", None)
    if rules is None or call is None:
        return None  # no HTTP rule: not servable through the REST layer
    request_type = call.__call__.__annotations__["request"]
    return _Method(request_type, rules._get_http_options())


def transcode(method: _Method, request: Any) -> tuple[str, str, dict[str, str], Any]:
    """(HTTP method, path, query, JSON body) exactly as the GAPIC REST transport sends them."""
    from google.cloud.aiplatform_v1._compat import transcode_request

    transcoded, body, query = transcode_request(
        method.http_options, request, rest_numeric_enums=True
    )
    params = dict(rest_helpers.flatten_query_params(query, strict=True))
    return (
        transcoded["method"].upper(),
        unquote(transcoded["uri"]),  # as the REST front reads its request line
        {key: str(value) for key, value in params.items()},
        json.loads(body) if body else {},
    )


class VertexGrpcFront:
    """Serves `dispatch` over plaintext gRPC on `host_port` (VERTEX_EMULATOR_HOST) and, given
    a certificate, over TLS on `tls_host_port` for clients that only speak TLS (see tls.py)."""

    def __init__(
        self,
        dispatch: Dispatch,
        host: str = "127.0.0.1",
        port: int = 0,
        certificate: Certificate | None = None,
        tls_port: int = 0,
    ) -> None:
        self._dispatch = dispatch
        self._host = host
        self._port = port
        self._certificate = certificate
        self._tls_port = tls_port
        self._server: grpc.Server | None = None
        self._methods = _methods()

    @property
    def host_port(self) -> str:
        if self._server is None:
            raise RuntimeError("VertexGrpcFront is not started: call start() first")
        return f"{self._host}:{self._port}"

    @property
    def tls_host_port(self) -> str | None:
        """`host:port` over TLS (the certificate names 127.0.0.1 and localhost), or None."""
        if self._server is None:
            raise RuntimeError("VertexGrpcFront is not started: call start() first")
        return f"{self._host}:{self._tls_port}" if self._certificate else None

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    def start(self) -> VertexGrpcFront:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="vertex-grpc"),
            handlers=[_Handler(self)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._port = server.add_insecure_port(f"{self._host}:{self._port}")
        if self._certificate is not None:
            credentials = grpc.ssl_server_credentials(
                [(self._certificate.key, self._certificate.cert)]
            )
            self._tls_port = server.add_secure_port(f"{self._host}:{self._tls_port}", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def call(self, path: str, data: bytes, context: grpc.ServicerContext) -> bytes:
        method = self._methods[path]
        try:
            request = method.parse(data)
        except Exception as err:  # undecodable bytes are the caller's fault
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode {path}: {err}")
        try:
            http_method, uri, query, body = transcode(method, request)
        except ValueError as err:  # no HTTP rule matches the request's resource names
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            result = self._dispatch(http_method, uri, query, body)
        except ApiError as err:
            context.abort(grpc.StatusCode[err.status], err.message)
        except Exception as err:  # a bug must still answer, or the client hangs
            LOG.exception("Vertex emulator failed on %s", path)
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in the Vertex emulator: {err!r}"
            )
        return b"" if result is None else result.SerializeToString()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, front: VertexGrpcFront) -> None:
        self._front = front

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method  # type: ignore[attr-defined]
        if path not in self._front._methods:
            return None  # grpc answers UNIMPLEMENTED
        front = self._front
        return grpc.unary_unary_rpc_method_handler(
            lambda data, context: front.call(path, data, context)
        )
