"""Object versioning for localcloud's Cloud Storage: an HTTP proxy in front of
fake-gcs-server's filesystem backend that keeps noncurrent generations, as GCS does in a
bucket with versioning, across overwrites, deletes and restarts.

fake-gcs-server does all the real work; the clients (the official google-cloud-storage
client, the functions, the trainer) speak the GCS JSON, upload and download wire to this
proxy. What it adds, for buckets whose versioning it was asked to turn on:

* bucket insert/patch/update: `versioning` is taken out of the request (the filesystem
  backend refuses it), remembered on disk, and put back into every bucket resource;
* a write (upload, copyTo, rewriteTo, compose, metadata patch) is archived, bytes and
  metadata, under a per-bucket lock so that no other write replaces the object between
  the write and the archiving read;
* a read of `generation=G` that fake-gcs-server no longer has is served from the archive
  (metadata, or bytes with Range support), a listing with `versions=true` adds the
  noncurrent generations, and a delete of `generation=G` deletes that generation only.

Everything else passes through unchanged: status, headers and streamed bodies. Buckets
without versioning behave as fake-gcs-server makes them behave, like GCS: an overwrite
drops the old generation."""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import io
import json
import logging
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from localcloud.errors import LocalCloudError
from localcloud.gcs_archive import VersionArchive

LOG = logging.getLogger(__name__)

UPSTREAM_TIMEOUT_S = 120.0
_CHUNK = 256 * 1024
# A write's body is spooled before the bucket's lock is taken, so a slow client does not
# hold up the bucket's other writers; up to this size it stays in memory.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_JSON = "application/json; charset=UTF-8"
# Hop-by-hop headers (RFC 9110 7.6.1) and the framing this proxy sets itself.
_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "expect", "content-length",
}  # fmt: skip
# What this server's own response line brings; upstream's copies would go out twice.
_OWN = _HOP | {"date", "server"}
_NO_BODY = {204, 304}

# Paths as the clients send them: the object name one percent-encoded segment.
_BUCKETS = re.compile(r"^/storage/v1/b$")
_BUCKET = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)$")
_OBJECTS = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o$")
_OBJECT = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")
_DOWNLOAD = re.compile(r"^/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_COPY = re.compile(
    r"^/storage/v1/b/[^/]+/o/[^/]+/(?:copyTo|rewriteTo)/b/(?P<bucket>[^/]+)/o/[^/]+$"
)
_COMPOSE = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/[^/]+/compose$")


class VersioningProxy:
    """`VersioningProxy(archive, upstream_port).start()` serves on `url` from background
    threads until `stop()`; a later `start()` listens on the same port again."""

    def __init__(
        self,
        archive: VersionArchive,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.archive = archive
        self.host, self._port = host, port
        self.upstream = (upstream_host, upstream_port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> VersioningProxy:
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self._port), self)
        except OSError as err:
            raise LocalCloudError(
                f"Cloud Storage cannot listen on {self.host}:{self._port}: {err}"
            ) from err
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="gcs-versions",
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

    def bucket_lock(self, bucket: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(bucket, threading.Lock())

    # dispatch -----------------------------------------------------------------------
    def handle(self, ex: _Exchange) -> None:
        method, path = ex.method, ex.path
        if _BUCKETS.match(path):
            if method == "POST":
                return self._bucket_config(ex, None)
            if method == "GET":
                return self._bucket_read(ex)
        if match := _BUCKET.match(path):
            bucket = unquote(match["bucket"])
            if method in ("PATCH", "PUT"):
                return self._bucket_config(ex, bucket)
            if method == "GET":
                return self._bucket_read(ex)
            if method == "DELETE":
                return self._bucket_delete(ex, bucket)
        if (match := _OBJECTS.match(path)) and method == "GET":
            return self._list(ex, unquote(match["bucket"]))
        if match := _OBJECT.match(path):
            bucket, name = unquote(match["bucket"]), unquote(match["name"])
            if method == "GET" and ex.param("generation"):
                return self._read(ex, bucket, name, media=ex.param("alt") == "media")
            if method == "DELETE":
                return self._delete(ex, bucket, name)
            if method in ("PATCH", "PUT"):
                return self._write(ex, bucket)
        if (match := _DOWNLOAD.match(path)) and method == "GET" and ex.param("generation"):
            return self._read(ex, unquote(match["bucket"]), unquote(match["name"]), media=True)
        if method in ("POST", "PUT") and (match := _UPLOAD.match(path)):
            return self._write(ex, unquote(match["bucket"]))
        if method == "POST" and (match := _COPY.match(path) or _COMPOSE.match(path)):
            return self._write(ex, unquote(match["bucket"]))
        self._pass(ex)

    def _pass(self, ex: _Exchange) -> None:
        with self._open(ex, ex.method, ex.target) as response:
            ex.stream(response)

    # buckets ------------------------------------------------------------------------
    def _bucket_config(self, ex: _Exchange, bucket: str | None) -> None:
        """Insert (bucket None) or patch/update: versioning is ours, the rest upstream's."""
        body = ex.read_body()
        try:
            resource = json.loads(body) if body else {}
        except ValueError:
            resource = None
        if not isinstance(resource, dict):
            return ex.relay(self._forward(ex, body=body))  # upstream answers the bad body
        versioning = resource.pop("versioning", None)
        if versioning is not None:
            body = json.dumps(resource).encode()
        enabled = bool(versioning.get("enabled")) if isinstance(versioning, dict) else None
        name = bucket if bucket is not None else str(resource.get("name", ""))
        if enabled is not None and not self.archive.valid_bucket(name):
            return ex.reply_error(400, f"Invalid bucket name: '{name}'", "invalid")
        # fake-gcs-server has no bucket update (PUT): a patch with every field is one.
        method = "PATCH" if ex.method == "PUT" else ex.method
        with self.bucket_lock(name):
            answer = self._forward(ex, method=method, body=body)
            if answer.status == 200 and enabled is not None:
                if enabled != self.archive.versioned(name):
                    self._reconcile(ex, name, enabled)
                self.archive.set_versioning(name, enabled)
        self._relay_buckets(ex, answer)

    def _reconcile(self, ex: _Exchange, bucket: str, enabled: bool) -> None:
        """The archive holds a copy of each live generation, so that it is there when the
        object is overwritten. Versioning turned on: copy what is live now (GCS keeps it
        once it is overwritten, whenever it was written). Suspended: drop those copies (GCS
        drops a live generation overwritten while suspended; what is noncurrent stays)."""
        for name, generation in self._live_objects(ex, bucket):
            if enabled and not self.archive.has(bucket, name, generation):
                self._archive(ex, bucket, {"name": name, "generation": generation})
            elif not enabled:
                self.archive.delete(bucket, name, generation)

    def _live_objects(self, ex: _Exchange, bucket: str) -> Iterator[tuple[str, str]]:
        token = ""
        while True:
            target = f"/storage/v1/b/{quote(bucket, safe='')}/o?pageToken={quote(token)}"
            document = self._fetch(ex, "GET", target).json()
            if not isinstance(document, dict):
                return
            for item in document.get("items", []):
                yield str(item["name"]), str(item["generation"])
            token = str(document.get("nextPageToken") or "")
            if not token:
                return

    def _bucket_read(self, ex: _Exchange) -> None:
        self._relay_buckets(ex, self._forward(ex))

    def _relay_buckets(self, ex: _Exchange, answer: Answer) -> None:
        document = answer.json() if answer.status == 200 else None
        if not isinstance(document, dict):
            return ex.relay(answer)
        for resource in document.get("items", [document]):
            if isinstance(resource, dict) and self.archive.versioned(str(resource.get("name"))):
                resource["versioning"] = {"enabled": True}
        ex.relay(answer.with_json(document))

    def _bucket_delete(self, ex: _Exchange, bucket: str) -> None:
        with self.bucket_lock(bucket):
            answer = self._forward(ex)
            if 200 <= answer.status < 300:
                self.archive.drop_bucket(bucket)
        ex.relay(answer)

    # objects ------------------------------------------------------------------------
    def _write(self, ex: _Exchange, bucket: str) -> None:
        if not self.archive.versioned(bucket):
            return self._pass(ex)
        with ex.spooled_body() as body, self.bucket_lock(bucket):
            answer = self._forward(ex, body=body)
            document = answer.json() if answer.status in (200, 201) else None
            if isinstance(document, dict):
                # rewriteTo answers a rewrite response with the object inside when done.
                resource = document.get("resource", document)
                if isinstance(resource, dict) and resource.get("bucket") == bucket:
                    self._archive(ex, bucket, resource)
        ex.relay(answer)

    def _archive(self, ex: _Exchange, bucket: str, resource: dict[str, Any]) -> None:
        """Keep the generation a write made (bytes read back while the lock is held)."""
        name, generation = str(resource.get("name", "")), str(resource.get("generation", ""))
        if not name or not generation.isdigit():
            return
        target = f"{_object_path(bucket, name)}?generation={generation}"
        # The whole resource, whatever `fields` the writer asked for.
        meta = self._fetch(ex, "GET", target).json()
        if not isinstance(meta, dict) or str(meta.get("generation")) != generation:
            LOG.warning("could not keep %s/%s#%s: it is gone already", bucket, name, generation)
            return
        if self.archive.has(bucket, name, generation):
            self.archive.put_metadata(meta)  # a metadata patch: the bytes are kept
            return
        download = f"/download{_object_path(bucket, name)}?alt=media&generation={generation}"
        with self._open(ex, "GET", download) as response:
            if response.status != 200:
                LOG.warning("could not keep %s/%s#%s: %s", bucket, name, generation,
                            response.status)  # fmt: skip
                return
            self.archive.put(meta, response)

    def _read(self, ex: _Exchange, bucket: str, name: str, *, media: bool) -> None:
        with self._open(ex, ex.method, ex.target) as response:
            if response.status != 404:
                return ex.stream(response)
            answer = Answer.read(response)
        generation = ex.param("generation") or ""
        meta = self.archive.metadata(bucket, name, generation)
        if meta is None:
            return ex.relay(answer)  # never kept, or deleted: GCS answers 404 too
        if not media:
            return ex.reply_json(200, self._presented(ex, meta))
        path = self.archive.data_path(bucket, name, generation)
        if path is None:
            return ex.relay(answer)
        with path.open("rb") as data:
            ex.send_media(meta, data, path.stat().st_size)

    def _list(self, ex: _Exchange, bucket: str) -> None:
        answer = self._forward(ex)
        document = answer.json() if answer.status == 200 else None
        if (
            not isinstance(document, dict)
            or (ex.param("versions") or "").lower() != "true"
            or document.get("nextPageToken")  # the noncurrent ones come on the last page
        ):
            return ex.relay(answer)
        prefix, delimiter = ex.param("prefix") or "", ex.param("delimiter") or ""
        items = list(document.get("items", []))
        prefixes = set(document.get("prefixes", []))
        live: dict[str, str | None] = {}
        for meta in self.archive.generations(bucket, prefix):
            name = str(meta["name"])
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest[: rest.index(delimiter) + len(delimiter)])
                continue
            if name not in live:
                live[name] = self._live_generation(ex, bucket, name)
            if str(meta["generation"]) != live[name]:
                items.append(self._presented(ex, meta))
        items.sort(key=lambda item: (str(item.get("name")), int(item.get("generation") or 0)))
        if items:
            document["items"] = items
        if prefixes:
            document["prefixes"] = sorted(prefixes)
        ex.relay(answer.with_json(document))

    def _delete(self, ex: _Exchange, bucket: str, name: str) -> None:
        generation = ex.param("generation")
        if generation is None:  # the live one goes; kept already if the bucket keeps any
            return self._pass(ex)
        with self.bucket_lock(bucket):
            live = self._live_generation(ex, bucket, name)
            # fake-gcs-server deletes the live object whatever generation is named: only
            # the live generation goes upstream, a noncurrent one is the archive's alone.
            kept = self.archive.delete(bucket, name, generation)
            if generation == live:
                return ex.relay(self._forward(ex))
        if kept:
            return ex.reply(204, [], b"")
        ex.reply_error(404, f"No such object: {bucket}/{name}", "notFound")

    def _live_generation(self, ex: _Exchange, bucket: str, name: str) -> str | None:
        meta = self._fetch(ex, "GET", _object_path(bucket, name)).json()
        return str(meta["generation"]) if isinstance(meta, dict) and "generation" in meta else None

    def _presented(self, ex: _Exchange, meta: dict[str, Any]) -> dict[str, Any]:
        """A kept generation's resource with links to this proxy that name the generation
        (the client downloads a loaded blob from its mediaLink)."""
        base = f"http://{ex.headers.get('Host') or f'{self.host}:{self._port}'}"
        path = _object_path(str(meta["bucket"]), str(meta["name"]))
        generation = meta["generation"]
        return meta | {
            "selfLink": f"{base}{path}",
            "mediaLink": f"{base}/download{path}?generation={generation}&alt=media",
        }

    # upstream -----------------------------------------------------------------------
    def _forward(
        self, ex: _Exchange, *, method: str | None = None, body: bytes | IO[bytes] | None = None
    ) -> Answer:
        """The client's request sent upstream (its body unless `body` is given), the
        answer read whole."""
        with self._open(ex, method or ex.method, ex.target, body=body, relay=True) as response:
            return Answer.read(response)

    def _fetch(self, ex: _Exchange, method: str, target: str) -> Answer:
        with self._open(ex, method, target) as response:
            return Answer.read(response)

    @contextlib.contextmanager
    def _open(
        self,
        ex: _Exchange,
        method: str,
        target: str,
        *,
        body: bytes | IO[bytes] | None = None,
        relay: bool = False,
    ) -> Iterator[http.client.HTTPResponse]:
        """A request upstream: with the client's headers and body when `relay` (or it is
        the client's own request), else a plain one of the proxy's. The Host header stays
        the client's, so that links fake-gcs-server writes point here."""
        own = relay or (method == ex.method and target == ex.target)
        connection = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT_S)
        try:
            response = self._send(connection, ex, method, target, body, own)
        except (OSError, http.client.HTTPException) as err:
            connection.close()
            raise _UpstreamDown(str(err)) from err
        try:
            yield response
        finally:
            connection.close()

    @staticmethod
    def _send(
        connection: http.client.HTTPConnection,
        ex: _Exchange,
        method: str,
        target: str,
        body: bytes | IO[bytes] | None,
        own: bool,
    ) -> http.client.HTTPResponse:
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
        while stream is not None and (chunk := stream.read(_CHUNK)):
            connection.send(chunk)
        return connection.getresponse()


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _LineReader(_Reader, Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


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


class _UpstreamDown(Exception):
    """fake-gcs-server did not answer (it is being restarted, say)."""


def _object_path(bucket: str, name: str) -> str:
    return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def _remaining(body: IO[bytes]) -> int:
    position = body.tell()
    end = body.seek(0, 2)
    body.seek(position)
    return end - position


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks of `size` bytes; None for the whole
    object (no header, or one this server does not take, as several ranges); raises
    ValueError when the range is unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last N bytes
        last = int(match[2])
        if last == 0 or size == 0:
            raise ValueError("unsatisfiable")
        return max(0, size - last), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if start >= size or end < start:
        raise ValueError("unsatisfiable")
    return start, min(end, size - 1)


# -- the HTTP side --------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: VersioningProxy) -> None:
        self.proxy = proxy
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_idle_connections(self) -> None:
        """Wake handlers waiting on keep-alive connections, so a stopped proxy answers no
        more requests through old connections (a request in flight still gets its answer)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away
            LOG.debug("gcs proxy: connection from %s dropped", client_address)
        else:
            LOG.exception("gcs proxy: failed serving %s", client_address)


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
        LOG.debug("gcs proxy: " + format, *args)

    def _serve(self) -> None:
        ex = _Exchange(self)
        try:
            self.server.proxy.handle(ex)
        except _UpstreamDown as err:
            # The python client retries a 503, as it retries a refused connection.
            ex.fail(503, f"Cloud Storage is not answering: {err}", "backendError")
        except OSError as err:  # the client went away: nobody to answer
            LOG.debug("gcs proxy: %s %s: %s", self.command, self.path, err)
            self.close_connection = True
        except Exception as err:
            LOG.exception("gcs proxy failed on %s %s", self.command, self.path)
            ex.fail(500, f"internal error in the Cloud Storage proxy: {err!r}", "internalError")
        if not ex.body_consumed:
            self.close_connection = True  # what is left of the body would read as a request


class _Exchange:
    """One request as the proxy sees it, and the ways to answer it."""

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
        spooled first when chunked (fake-gcs-server is sent a Content-Length)."""
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
                shutil.copyfileobj(_Bounded(rfile, self._length), spooled, _CHUNK)
        spooled.seek(0)
        return spooled

    # answers ------------------------------------------------------------------------
    def relay(self, answer: Answer) -> None:
        self.reply(answer.status, answer.headers, answer.body, reason=answer.reason)

    def stream(self, response: http.client.HTTPResponse) -> None:
        """An upstream answer passed on as it arrives."""
        length = response.getheader("Content-Length")
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _OWN]
        handler = self._handler
        self.answered = True
        handler.send_response(response.status, response.reason)
        for key, value in headers:
            handler.send_header(key, value)
        no_body = self.method == "HEAD" or response.status in _NO_BODY
        if length is not None:
            handler.send_header("Content-Length", length)
        elif not no_body:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        if no_body:
            return
        while chunk := response.read(_CHUNK):
            if length is None:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                handler.wfile.write(chunk)
        if length is None:
            handler.wfile.write(b"0\r\n\r\n")

    def reply(
        self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None
    ) -> None:
        handler = self._handler
        self.answered = True
        handler.send_response(status, reason)
        head = self.method == "HEAD"
        for key, value in headers:
            # A HEAD answer keeps upstream's Content-Length: the size a GET would send.
            if key.lower() not in _OWN or (head and key.lower() == "content-length"):
                handler.send_header(key, value)
        if status not in _NO_BODY and not head:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if status not in _NO_BODY and not head:
            handler.wfile.write(body)

    def reply_json(self, status: int, document: Any) -> None:
        self.reply(status, [("Content-Type", _JSON)], json.dumps(document).encode())

    def reply_error(self, status: int, message: str, reason: str) -> None:
        """Google's error shape, as GCS answers it."""
        error = {"code": status, "message": message,
                 "errors": [{"message": message, "domain": "global", "reason": reason}]}  # fmt: skip
        self.reply_json(status, {"error": error})

    def fail(self, status: int, message: str, reason: str) -> None:
        if self.answered:  # headers are out: all that is left is to drop the connection
            self._handler.close_connection = True
            return
        self.reply_error(status, message, reason)

    def send_media(self, meta: dict[str, Any], data: IO[bytes], size: int) -> None:
        """A kept generation's bytes, with the headers GCS sends and the client reads."""
        headers = _media_headers(meta, size)
        try:
            window = byte_range(self.headers.get("Range"), size)
        except ValueError:
            headers = [("Content-Range", f"bytes */{size}"), ("Content-Type", _JSON)]
            message = "The requested range cannot be satisfied."
            error = {"code": 416, "message": message,
                     "errors": [{"message": message, "domain": "global",
                                 "reason": "requestedRangeNotSatisfiable"}]}  # fmt: skip
            return self.reply(416, headers, json.dumps({"error": error}).encode())
        start, end = window if window is not None else (0, size - 1)
        handler = self._handler
        self.answered = True
        handler.send_response(206 if window is not None else 200)
        for key, value in headers:
            handler.send_header(key, value)
        if window is not None:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        handler.send_header("Content-Length", str(end - start + 1 if size else 0))
        handler.end_headers()
        data.seek(start)
        left = end - start + 1 if size else 0
        while left > 0 and (chunk := data.read(min(_CHUNK, left))):
            handler.wfile.write(chunk)
            left -= len(chunk)


def _media_headers(meta: dict[str, Any], size: int) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", str(meta.get("contentType") or "application/octet-stream")),
        ("Accept-Ranges", "bytes"),
        ("X-Goog-Generation", str(meta["generation"])),
        ("X-Goog-Metageneration", str(meta.get("metageneration", "1"))),
        ("X-Goog-Stored-Content-Length", str(size)),
        ("X-Goog-Stored-Content-Encoding", str(meta.get("contentEncoding") or "identity")),
    ]
    hashes = [f"crc32c={meta['crc32c']}"] if meta.get("crc32c") else []
    hashes += [f"md5={meta['md5Hash']}"] if meta.get("md5Hash") else []
    if hashes:
        headers.append(("X-Goog-Hash", ",".join(hashes)))
    if meta.get("etag"):
        headers.append(("ETag", f'"{meta["etag"]}"'))
    for field, header in (("contentEncoding", "Content-Encoding"),
                          ("contentDisposition", "Content-Disposition"),
                          ("contentLanguage", "Content-Language"),
                          ("cacheControl", "Cache-Control")):  # fmt: skip
        if meta.get(field):
            headers.append((header, str(meta[field])))
    with contextlib.suppress(KeyError, ValueError):
        updated = datetime.fromisoformat(str(meta["updated"]).replace("Z", "+00:00"))
        headers.append(("Last-Modified", email.utils.format_datetime(updated, usegmt=True)))
    return headers


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
        shutil.copyfileobj(_Bounded(stream, size), out, _CHUNK)
        stream.readline(3)  # the CRLF after the chunk
