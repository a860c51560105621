"""The local Cloud Logging API: one LoggingService behind two fronts, REST (what the
official google-cloud-logging client speaks with `_use_grpc=False`) and plaintext gRPC
(google.logging.v2.LoggingServiceV2, what it speaks by default). Each front only
translates its wire format; errors are Google's on both (a bad filter is INVALID_ARGUMENT
naming the position, an unknown log NOT_FOUND).

REST: `POST /v2/entries:list`, `POST /v2/entries:write`,
`DELETE /v2/{logName=projects/*/logs/*}`; `$alt=json;enum-encoding=int` asks for
severities as numbers, as the GAPIC REST transports do."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud.logging_v2.types import logging as logging_types
from werkzeug.wrappers import Request, Response

from localcloud.errors import LocalCloudError
from localcloud.httpserver import HttpServer, Routes, json_app, json_response, raw_path, route
from localcloud.logging_grpc import response_message, start_grpc_server
from localcloud.logging_service import LoggingService
from localcloud.logstore import LogStore
from localcloud.vertex.wire import invalid, not_found, to_json

# A route handler gets the service, the path's values and the JSON body.
Handler = Callable[[LoggingService, dict[str, str], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class _Method:
    """A route's endpoint: its handler, and the response's message type (to print integer
    enums; None for google.protobuf.Empty)."""

    handler: Handler
    response_type: Any


ROUTES = Routes(
    [
        route(
            "POST",
            "/v2/entries:list",
            _Method(
                lambda service, _, body: service.list_entries(body),
                logging_types.ListLogEntriesResponse.pb(),
            ),
        ),
        route(
            "POST",
            "/v2/entries:write",
            _Method(
                lambda service, _, body: service.write_entries(body),
                logging_types.WriteLogEntriesResponse.pb(),
            ),
        ),
        route(
            "DELETE",
            # Matched on the raw path: the log ID stays URL-encoded, as it is inside
            # logName (`ml.googleapis.com%2F123`).
            "/v2/projects/<project>/logs/<log>",
            _Method(
                lambda service, path, _: service.delete_log(
                    f"projects/{path['project']}/logs/{path['log']}"
                ),
                None,
            ),
        ),
    ]
)


def _render(payload: dict[str, Any], message_type: Any, ints: bool) -> dict[str, Any]:
    """The service answers in proto3 JSON with enum names; a client that asked for
    numbers gets the same message printed with them."""
    if not ints or message_type is None:
        return payload
    return to_json(response_message(payload, message_type), ints=True)


def _app(service: LoggingService) -> Callable[[Request], Response]:
    def serve(request: Request) -> Response:
        path = raw_path(request)
        found = ROUTES.match(request.method, path)
        if found is None:
            raise not_found(f"no method at {request.method} {path}")
        method, values = found
        body = _body(request) if request.method == "POST" else {}
        answer = method.handler(service, values, body)
        ints = "enum-encoding=int" in ";".join(request.args.getlist("$alt"))
        return json_response(_render(answer, method.response_type, ints))

    return serve


def _body(request: Request) -> dict[str, Any]:
    raw = request.get_data()
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid(f"request body is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    return body


class LoggingServer:
    """`start()` binds both fronts (port 0 picks a free one) and serves in the background:
    REST on `url` (LOGGING_API_ENDPOINT), gRPC on `grpc_host` (LOGGING_EMULATOR_HOST)."""

    def __init__(
        self, store: LogStore, port: int = 0, host: str = "127.0.0.1", grpc_port: int = 0
    ) -> None:
        self.store = store
        self._service = LoggingService(store)
        self._host = host
        self._grpc_address = f"{host}:{grpc_port}"
        self._http = HttpServer(
            json_app("logging server", _app(self._service)),
            name="logging server",
            host=host,
            port=port,
        )
        self._grpc: grpc.Server | None = None
        self._grpc_port = 0

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def grpc_host(self) -> str:
        if self._grpc is None:
            raise LocalCloudError("the logging server has no gRPC address until start()")
        return f"{self._host}:{self._grpc_port}"

    def start(self) -> LoggingServer:
        if self._http.running:
            raise LocalCloudError("the logging server is already started")
        self._http.start()
        try:
            self._grpc, self._grpc_port = start_grpc_server(self._service, self._grpc_address)
        except LocalCloudError:
            self._http.stop()
            raise
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
            self._grpc = None
        self._http.stop()
