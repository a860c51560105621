"""An HTTP relay for localcloud's Cloud Storage proxies: a threaded keep-alive server that
hands each request (an `Exchange`) to a handler, and the `Upstream` server behind it.

What a handler does not change passes through as it came: status, headers (less the
hop-by-hop ones) and bodies, streamed both ways. Why not localcloud.httpserver: that one
reads each request body whole before its app runs, and object uploads are larger than
anything the JSON fronts take."""

from __future__ import annotations

import contextlib
import http.client
import io
import itertools
import json
import logging
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from localcloud.errors import LocalCloudError

LOG = logging.getLogger(__name__)

UPSTREAM_TIMEOUT_S = 120.0
CHUNK = 256 * 1024
# A body a handler keeps (to send it again after a lock is taken, say) stays in memory up
# to this size and goes to a temporary file beyond.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
JSON_TYPE = "application/json; charset=UTF-8"
# Hop-by-hop headers (RFC 9110 7.6.1) and the framing this relay sets itself.
_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "expect", "content-length",
}  # fmt: skip
# What this server's own response line brings; upstream's copies would go out twice.
_OWN = _HOP | {"date", "server"}
_NO_BODY = {204, 304}


class UpstreamDown(Exception):
    """The server behind did not answer (it is being restarted, say)."""


class Answer:
    """An upstream answer read whole: writes, listings and errors are small JSON."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    @classmethod
    def read(cls, response: http.client.HTTPResponse) -> Answer:
        return cls(response.status, response.reason, response.getheaders(), response.read())

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def with_json(self, document: Any) -> Answer:
        return Answer(self.status, self.reason, self.headers, json.dumps(document).encode())


class Upstream:
    """The server requests are relayed to; `address` may change (a restarted server on a
    fresh port) while the relay keeps serving."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        # Each relaying thread keeps its connection for its next request: a connect per
        # request cost the relay and fake-gcs-server about as much as the request itself.
        self._kept = threading.local()

    def relay(self, ex: Exchange) -> None:
        """The client's request as it came, the answer streamed back as it arrives."""
        with self.open(ex, ex.method, ex.target) as response:
            ex.stream(response)

    def forward(
        self, ex: Exchange, *, method: str | None = None, body: bytes | IO[bytes] | None = None
    ) -> Answer:
        """The client's request (its body unless `body` is given), the answer read whole."""
        with self.open(ex, method or ex.method, ex.target, body=body, own=True) as response:
            return Answer.read(response)

    def fetch(self, ex: Exchange, method: str, target: str) -> Answer:
        """A request of the relay's own on behalf of `ex`, the answer read whole."""
        with self.open(ex, method, target) as response:
            return Answer.read(response)

    @contextlib.contextmanager
    def open(
        self,
        ex: Exchange,
        method: str,
        target: str,
        *,
        body: bytes | IO[bytes] | None = None,
        own: bool = False,
    ) -> Iterator[http.client.HTTPResponse]:
        """A request upstream: with the client's headers and body when it is the client's
        own, else a plain one. The Host header stays the client's, so that the links the
        server writes into resources point at the relay."""
        own = own or (method == ex.method and target == ex.target)
        connection, kept = self._connection()
        try:
            response = _send(connection, ex, method, target, body, own)
        except (OSError, http.client.HTTPException) as err:
            connection.close()
            if not (kept and _resendable(ex, body, own)):
                raise UpstreamDown(str(err)) from err
            # A kept connection the server had closed (idle, or restarted): once more, anew.
            connection, _ = self._connection(fresh=True)
            try:
                response = _send(connection, ex, method, target, body, own)
            except (OSError, http.client.HTTPException) as again:
                connection.close()
                raise UpstreamDown(str(again)) from again
        try:
            yield response
        finally:
            if response.isclosed() and not response.will_close:  # read to its end
                self._kept.connection = connection
            else:
                connection.close()

    def _connection(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept connection (True) if it goes to `address`, else a new one."""
        kept: http.client.HTTPConnection | None = getattr(self._kept, "connection", None)
        self._kept.connection = None
        if kept is not None and not fresh and (kept.host, kept.port) == self.address:
            return kept, True
        if kept is not None:
            kept.close()
        return http.client.HTTPConnection(*self.address, timeout=UPSTREAM_TIMEOUT_S), False


def _send(
    connection: http.client.HTTPConnection,
    ex: Exchange,
    method: str,
    target: str,
    body: bytes | IO[bytes] | None,
    own: bool,
) -> http.client.HTTPResponse:
    if connection.sock is None:
        connection.connect()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
        # algorithm and the server's delayed ACK hold every request with a body up.
        cast(socket.socket, connection.sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    headers = ex.forwarded_headers() if own else [("Host", ex.headers.get("Host", ""))]
    for key, value in headers:
        connection.putheader(key, value)
    stream: _Reader | None
    if isinstance(body, bytes):
        stream, length = io.BytesIO(body), len(body)
    elif body is not None:
        stream, length = body, _remaining(body)
    elif own:
        stream, length = ex.body_stream()
    else:
        stream, length = None, 0
    if length or method in ("POST", "PUT", "PATCH"):
        connection.putheader("Content-Length", str(length))
    connection.endheaders()
    while stream is not None and (chunk := stream.read(CHUNK)):
        connection.send(chunk)
    return connection.getresponse()


def _resendable(ex: Exchange, body: bytes | IO[bytes] | None, own: bool) -> bool:
    """Whether a request can go out again: its body is at hand, or it has none."""
    if isinstance(body, bytes) or (body is None and not own):
        return True
    if body is None:
        return not int(ex.headers.get("Content-Length") or 0) and not ex.headers.get(
            "Transfer-Encoding"
        )
    return False


# -- the server -----------------------------------------------------------------------


class RelayServer:
    """`RelayServer(handle, name=...).start()` serves on `url` from background threads
    until `stop()`; a later `start()` listens on the same port again. `handle` answers
    each request; an UpstreamDown it raises is answered 503 (which the clients retry, as
    they retry a refused connection), any other failure 500."""

    def __init__(
        self, handle: Callable[[Exchange], None], *, name: str, host: str, port: int = 0
    ) -> None:
        self.handle, self.name = handle, name
        self.host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._served = itertools.count()
        self.requests = 0  # requests received so far (a batch's is one; its calls sent
        # back through the relay count too)

    def served(self) -> None:
        self.requests = next(self._served) + 1

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> RelayServer:
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self._port), self)
        except OSError as err:
            raise LocalCloudError(
                f"the {self.name} cannot listen on {self.host}:{self._port}: {err}"
            ) from err
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # keeps stop() quick; serving does not poll
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_idle_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], relay: RelayServer) -> None:
        self.relay = relay
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_idle_connections(self) -> None:
        """Wake handlers waiting on keep-alive connections, so a stopped relay answers no
        more requests through old connections (a request in flight still gets its answer)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away
            LOG.debug("%s: connection from %s dropped", self.relay.name, client_address)
        else:
            LOG.exception("%s: failed serving %s", self.relay.name, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    disable_nagle_algorithm = True
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

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug(f"{self.server.relay.name}: {format}", *args)

    def _serve(self) -> None:
        relay = self.server.relay
        relay.served()
        ex = Exchange(self)
        try:
            relay.handle(ex)
        except UpstreamDown as err:
            ex.fail(503, f"Cloud Storage is not answering: {err}", "backendError")
        except OSError as err:  # the client went away: nobody to answer
            LOG.debug("%s: %s %s: %s", relay.name, self.command, self.path, err)
            self.close_connection = True
        except Exception as err:
            LOG.exception("%s failed on %s %s", relay.name, self.command, self.path)
            ex.fail(500, f"internal error in the {relay.name}: {err!r}", "internalError")
        if not ex.body_consumed:
            self.close_connection = True  # what is left of the body would read as a request


# -- one request ----------------------------------------------------------------------


class Exchange:
    """One request as the relay sees it, and the ways to answer it."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler
        self.method = handler.command
        self.target = handler.path
        split = urlsplit(handler.path)
        self.path = split.path
        self._query = parse_qs(split.query, keep_blank_values=True)
        self.headers = handler.headers
        self.answered = False
        self._chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        length = handler.headers.get("Content-Length")
        self._length = int(length) if length and length.isdigit() else 0
        self.body_consumed = not self._chunked and self._length == 0

    def param(self, name: str) -> str | None:
        values = self._query.get(name)
        return values[-1] if values else None

    def forwarded_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]

    # the request body ---------------------------------------------------------------
    def body_stream(self) -> tuple[_Reader | None, int]:
        """The body to pass on and its length: read as it goes with a Content-Length,
        spooled first when chunked (upstream is sent a Content-Length)."""
        if self._chunked:
            spooled = self._spool()
            return spooled, _remaining(spooled)
        if self.body_consumed:
            return None, 0
        self.body_consumed = True
        return _Bounded(self._handler.rfile, self._length), self._length

    @contextlib.contextmanager
    def spooled_body(self) -> Iterator[IO[bytes]]:
        spooled = self._spool()
        try:
            yield spooled
        finally:
            spooled.close()

    def read_body(self) -> bytes:
        with self.spooled_body() as body:
            return body.read()

    def _spool(self) -> IO[bytes]:
        spooled: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        if not self.body_consumed:
            self.body_consumed = True
            rfile = self._handler.rfile
            if self._chunked:
                _dechunk(rfile, spooled)
            else:
                shutil.copyfileobj(_Bounded(rfile, self._length), spooled, CHUNK)
        spooled.seek(0)
        return spooled

    # answers ------------------------------------------------------------------------
    def relay(self, answer: Answer) -> None:
        self.reply(answer.status, answer.headers, answer.body, reason=answer.reason)

    def stream(self, response: http.client.HTTPResponse) -> None:
        """An upstream answer passed on as it arrives."""
        length = response.getheader("Content-Length")
        no_body = self.method == "HEAD" or response.status in _NO_BODY
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _OWN]
        if length is not None:
            headers.append(("Content-Length", length))
        elif not no_body:
            headers.append(("Transfer-Encoding", "chunked"))
        self._start(response.status, headers, response.reason)
        if no_body:
            return
        write = self._handler.wfile.write
        while chunk := response.read(CHUNK):
            write(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if length is None:
            write(b"0\r\n\r\n")

    def reply(
        self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None
    ) -> None:
        head = self.method == "HEAD"
        # A HEAD answer keeps upstream's Content-Length: the size a GET would send.
        kept = [(k, v) for k, v in headers
                if k.lower() not in _OWN or (head and k.lower() == "content-length")]  # fmt: skip
        if status not in _NO_BODY and not head:
            kept.append(("Content-Length", str(len(body))))
        self._start(status, kept, reason)
        if status not in _NO_BODY and not head:
            self._handler.wfile.write(body)

    def reply_json(self, status: int, document: Any) -> None:
        self.reply(status, [("Content-Type", JSON_TYPE)], json.dumps(document).encode())

    def reply_error(
        self, status: int, message: str, reason: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Google's error shape, as GCS answers it."""
        error = {"code": status, "message": message,
                 "errors": [{"message": message, "domain": "global", "reason": reason}]}  # fmt: skip
        body = json.dumps({"error": error}).encode()
        self.reply(status, [("Content-Type", JSON_TYPE), *headers], body)

    def send_file(
        self, status: int, headers: list[tuple[str, str]], data: IO[bytes], start: int, length: int
    ) -> None:
        """`length` bytes of `data` from `start` (headers: all but the Content-Length)."""
        self._start(status, [*headers, ("Content-Length", str(length))])
        data.seek(start)
        while length > 0 and (chunk := data.read(min(CHUNK, length))):
            self._handler.wfile.write(chunk)
            length -= len(chunk)

    def fail(self, status: int, message: str, reason: str) -> None:
        if self.answered:  # headers are out: all that is left is to drop the connection
            self._handler.close_connection = True
            return
        self.reply_error(status, message, reason)

    def _start(
        self, status: int, headers: list[tuple[str, str]], reason: str | None = None
    ) -> None:
        handler = self._handler
        self.answered = True
        handler.send_response(status, reason)
        for key, value in headers:
            handler.send_header(key, value)
        handler.end_headers()


# -- bodies ---------------------------------------------------------------------------


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _LineReader(_Reader, Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class _Bounded:
    """The next `length` bytes of a stream, as a file."""

    def __init__(self, stream: _Reader, length: int) -> None:
        self._stream, self._left = stream, length

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        if not data:
            raise ConnectionError("the client closed the connection in the middle of a body")
        return data


def _remaining(body: IO[bytes]) -> int:
    position = body.tell()
    end = body.seek(0, 2)
    body.seek(position)
    return end - position


def _dechunk(stream: _LineReader, out: IO[bytes]) -> None:
    """A chunked request body (RFC 9112 7.1), decoded into `out`; trailers are dropped."""
    while True:
        line = stream.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ConnectionError(f"malformed chunk size line {line!r}") from None
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return
        shutil.copyfileobj(_Bounded(stream, size), out, CHUNK)
        stream.readline(3)  # the CRLF after the chunk
