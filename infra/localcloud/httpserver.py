"""One small HTTP server for localcloud's JSON fronts (Vertex AI REST, Cloud Logging REST,
the eventarc bridge, the webhook receiver): werkzeug routes the requests and gives the
Request/Response objects, a threaded stdlib server runs the app in the background.

Why not werkzeug's own `make_server`: its handler closes the connection after every
response (it cannot tell where a body it did not read ends), while Pub/Sub pushes and the
REST clients reuse keep-alive connections. This server reads each body whole (up to a
limit) before the app runs, so one connection carries request after request."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import DechunkedInput
from werkzeug.wrappers import Request, Response

from localcloud.errors import LocalCloudError
from localcloud.vertex.wire import ApiError, invalid, not_found

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication, WSGIEnvironment

LOG = logging.getLogger(__name__)

# Larger than any request the emulated APIs accept (Pub/Sub's 10 MB message, base64 in a
# push; Cloud Logging's 10 MB write), small enough that a runaway client cannot fill memory.
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON_TYPE = "application/json; charset=UTF-8"
# Whatever the app puts there, these describe how this server frames the response.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}
_NO_BODY = {204, 304}


# -- routing ------------------------------------------------------------------------------


class SegmentConverter(BaseConverter):
    """One path segment without the `:verb` that Google appends for custom methods
    (`customJobs/123:cancel`): the `*` of Google's path templates."""

    regex = "[^/:]+"
    part_isolating = True  # the regex names `/` only to exclude it


def route(method: str, template: str, endpoint: Any) -> Rule:
    """A werkzeug rule for one method (`<segment:id>` for a resource id)."""
    return Rule(template, methods=[method], endpoint=endpoint)


class Routes:
    """werkzeug rules matched against a method and a path. The path need not come from an
    HTTP request: the Vertex gRPC front transcodes each call into the path REST uses."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        converters: Mapping[str, type[BaseConverter]] | None = None,
    ) -> None:
        routing = Map(
            rules,
            converters={"segment": SegmentConverter, **(converters or {})},
            # A path names a method or it does not: no redirects to a tidier path.
            merge_slashes=False,
        )
        self._adapter = routing.bind("localcloud")

    def match(self, method: str, path: str) -> tuple[Any, dict[str, Any]] | None:
        """The endpoint and the path's values, or None when no rule takes the request."""
        try:
            endpoint, values = self._adapter.match(path, method)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect
            return None
        return endpoint, dict(values)


# -- JSON apps ----------------------------------------------------------------------------


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=JSON_TYPE)


def error_response(error: ApiError) -> Response:
    """Google's error shape: `{"error": {"code", "message", "status"}}`."""
    return json_response(error.body(), error.http_status)


def json_app(name: str, handle: Callable[[Request], Response]) -> WSGIApplication:
    """A WSGI app around `handle` that answers failures as Google's APIs do: an ApiError
    with its status and JSON body, a path no rule takes NOT_FOUND, and a bug INTERNAL
    (logged with its traceback): a request never goes unanswered."""

    @Request.application
    def app(request: Request) -> Response:
        try:
            return handle(request)
        except ApiError as err:
            return error_response(err)
        except HTTPException as err:
            return error_response(not_found(f"no method at {request.method} {request.path}: {err}"))
        except Exception as err:
            LOG.exception("%s failed on %s %s", name, request.method, request.full_path)
            return error_response(ApiError("INTERNAL", f"internal error in the {name}: {err!r}"))

    return app


def raw_path(request: Request) -> str:
    """The path as the client sent it, percent-escapes kept (`request.path` decodes them;
    Cloud Logging's log IDs keep theirs inside a resource name)."""
    return urlsplit(request.environ.get("RAW_URI") or request.path).path


# -- the server ---------------------------------------------------------------------------


class HttpServer:
    """`HttpServer(app, name=...).start()` serves a WSGI app on `url` from a background
    thread until `stop()`; a later `start()` listens on the same port again."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.name = name
        self.host = host
        self._port = port
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served on (known once started; kept after `stop()`)."""
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise LocalCloudError(f"the {self.name} has no URL until start() is called")
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> HttpServer:
        if self._server is not None:
            raise LocalCloudError(f"the {self.name} is already running on {self.url}")
        try:
            server = _Server((self.host, self._port), self._app, self.name, self._max_body_bytes)
        except OSError as err:
            raise LocalCloudError(
                f"the {self.name} cannot listen on {self.host}:{self._port}: {err}; "
                "stop what uses the port or pick another one"
            ) from err
        self._port = int(server.server_address[1])
        self._server = server
        # A short poll interval keeps stop() quick; serving itself does not poll.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return  # never started, or already stopped
        server.shutdown()
        server.close_idle_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HttpServer:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], app: WSGIApplication, name: str, max_body_bytes: int
    ) -> None:
        self.app = app
        self.name = name
        self.max_body_bytes = max_body_bytes
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_idle_connections(self) -> None:
        """Wake the handlers waiting for a next request on a keep-alive connection: a
        stopped server must not answer through an old connection, and its clients then
        reconnect to whatever listens on the port now. Only the reading side is shut, so
        a request in flight still gets its answer."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away mid-answer
            LOG.debug("%s: connection from %s dropped: %s", self.name, client_address, error)
        else:
            LOG.exception("%s: failed serving %s", self.name, client_address)


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    # Keep-alive: Pub/Sub pushes and REST clients reuse their connections.
    protocol_version = "HTTP/1.1"

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, open_=False)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s: " + format, self.server.name, *args)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ApiError as err:
            # What is left of the body is still on the connection: answer, then close it.
            self.close_connection = True
            self._send(str(err.http_status), [("Content-Type", JSON_TYPE)], _error_bytes(err))
            return
        self._send(*self._call_app(body))

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            try:
                data = DechunkedInput(cast(IO[bytes], self.rfile)).read(limit + 1) or b""
            except OSError as err:
                raise invalid(f"malformed chunked request body: {err}") from err
            _check_size(len(data), limit)
            return data
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise invalid("the Content-Length header is not a number") from None
        _check_size(length, limit)
        return self.rfile.read(length) if length > 0 else b""

    def _call_app(self, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        response: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            response["status"], response["headers"] = status, headers
            return chunks.append

        try:
            result = self.server.app(self._environ(body), start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as err:  # a bug must still answer, or the client hangs
            LOG.exception("%s failed on %s %s", self.server.name, self.command, self.path)
            error = ApiError("INTERNAL", f"internal error in the {self.server.name}: {err!r}")
            return "500", [("Content-Type", JSON_TYPE)], _error_bytes(error)
        return response["status"], response["headers"], b"".join(chunks)

    def _environ(self, body: bytes) -> WSGIEnvironment:
        url = urlsplit(self.path)
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            # WSGI strings carry bytes as latin-1; werkzeug decodes them as UTF-8.
            "PATH_INFO": unquote(url.path, encoding="latin-1"),
            "QUERY_STRING": url.query,
            "RAW_URI": self.path,
            "REQUEST_URI": self.path,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, value in self.headers.items():
            if "_" in key:
                continue  # as werkzeug: `X_Y` must not pass for `X-Y`
            name = key.upper().replace("-", "_")
            if name == "CONTENT_TYPE":
                environ[name] = value
            elif name not in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                name = f"HTTP_{name}"
                environ[name] = f"{environ[name]},{value}" if name in environ else value
        return environ

    def _send(self, status: str, headers: list[tuple[str, str]], data: bytes) -> None:
        code = int(status.split(None, 1)[0])
        self.send_response(code)
        for key, value in headers:
            if key.lower() not in _FRAMING_HEADERS:
                self.send_header(key, value)
        if code in _NO_BODY:
            # A client reads no body after these; bytes sent anyway would be taken for
            # the start of the next response on the connection.
            data = b""
        else:
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _check_size(length: int, limit: int) -> None:
    if length > limit:
        raise invalid(f"request body of {length} bytes exceeds the limit of {limit} bytes")


def _error_bytes(error: ApiError) -> bytes:
    return json.dumps(error.body()).encode()
