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
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from google.cloud.logging_v2.types import logging as logging_types

from localcloud.errors import LocalCloudError
from localcloud.logging_grpc import response_message, start_grpc_server
from localcloud.logging_service import LoggingService
from localcloud.logstore import LogStore
from localcloud.vertex.wire import ApiError, invalid, not_found, to_json

# A route handler gets the service, the path's named groups and the JSON body.
Handler = Callable[[LoggingService, dict[str, str], dict[str, Any]], dict[str, Any]]
Route = tuple[str, re.Pattern[str], Handler, Any]

ROUTES: tuple[Route, ...] = (
    (
        "POST",
        re.compile(r"/v2/entries:list"),
        lambda service, _, body: service.list_entries(body),
        logging_types.ListLogEntriesResponse.pb(),
    ),
    (
        "POST",
        re.compile(r"/v2/entries:write"),
        lambda service, _, body: service.write_entries(body),
        logging_types.WriteLogEntriesResponse.pb(),
    ),
    (
        "DELETE",
        # The log ID stays URL-encoded, as it is inside logName (`ml.googleapis.com%2F123`).
        re.compile(r"/v2/(?P<name>projects/[^/]+/logs/[^/]+)"),
        lambda service, path, _: service.delete_log(path["name"]),
        None,
    ),
)


def _wants_integer_enums(query: str) -> bool:
    alt = ";".join(parse_qs(query).get("$alt", []))
    return "enum-encoding=int" in alt


def _render(payload: dict[str, Any], message_type: Any, ints: bool) -> dict[str, Any]:
    """The service answers in proto3 JSON with enum names; a client that asked for
    numbers gets the same message printed with them."""
    if not ints or message_type is None:
        return payload
    return to_json(response_message(payload, message_type), ints=True)


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    server: _Server

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            for verb, pattern, handler, response_type in ROUTES:
                match = pattern.fullmatch(url.path)
                if verb == method and match is not None:
                    body = self._body() if method == "POST" else {}
                    answer = handler(self.server.service, match.groupdict(), body)
                    ints = _wants_integer_enums(url.query)
                    self._reply(HTTPStatus.OK, _render(answer, response_type, ints))
                    return
            raise not_found(f"no method at {method} {url.path}")
        except ApiError as err:
            self._reply(HTTPStatus(err.http_status), err.body())

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise invalid(f"request body is not valid JSON: {err}") from err
        if not isinstance(body, dict):
            raise invalid("request body must be a JSON object")
        return body

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the demo's output


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: LoggingService) -> None:
        super().__init__(address, _Handler)
        self.service = service


class LoggingServer:
    """`start()` binds both fronts (port 0 picks a free one) and serves in the background:
    REST on `url` (LOGGING_API_ENDPOINT), gRPC on `grpc_host` (LOGGING_EMULATOR_HOST)."""

    def __init__(
        self, store: LogStore, port: int = 0, host: str = "127.0.0.1", grpc_port: int = 0
    ) -> None:
        self.store = store
        self._service = LoggingService(store)
        self._address = (host, port)
        self._grpc_address = f"{host}:{grpc_port}"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None
        self._grpc_port = 0

    @property
    def url(self) -> str:
        if self._server is None:
            raise LocalCloudError("the logging server has no URL until start() is called")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def grpc_host(self) -> str:
        if self._grpc is None:
            raise LocalCloudError("the logging server has no gRPC address until start()")
        return f"{self._address[0]}:{self._grpc_port}"

    def start(self) -> LoggingServer:
        if self._server is not None:
            raise LocalCloudError("the logging server is already started")
        try:
            server = _Server(self._address, self._service)
        except OSError as err:
            raise LocalCloudError(
                f"logging server cannot listen on {self._address}: {err}"
            ) from err
        try:
            self._grpc, self._grpc_port = start_grpc_server(self._service, self._grpc_address)
        except LocalCloudError:
            server.server_close()
            raise
        self._server = server
        # A short poll interval makes stop() quick; serving itself does not poll.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="localcloud-logging",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
            self._grpc = None
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
