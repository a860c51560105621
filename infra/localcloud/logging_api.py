"""The Cloud Logging v2 REST calls that the official google-cloud-logging client makes over
HTTP (`_use_grpc=False`): `entries:list` to read and `entries:write` to write, served from
a LogStore. Errors use Google's JSON error shape, so the client raises its usual
exceptions (a bad filter is `BadRequest` naming the position)."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from localcloud.errors import LocalCloudError
from localcloud.logfilter import Instant, compile_filter, parse_timestamp
from localcloud.logstore import LogEntry, LogStore, now_rfc3339

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_LIST_FIELDS = {"resourceNames", "projectIds", "filter", "orderBy", "pageSize", "pageToken"}
# The official client sends `dry_run` in snake case; the API accepts both spellings.
_WRITE_FIELDS = {"entries", "logName", "resource", "labels", "partialSuccess", "dryRun", "dry_run"}
_EARLIEST: Instant = (datetime.min.replace(tzinfo=UTC), 0)


class ApiError(LocalCloudError):
    """A request the API refuses; rendered as Google's JSON error."""

    def __init__(self, status: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", message)


# --- entries:list --------------------------------------------------------------------------


def list_entries(store: LogStore, body: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(body, _LIST_FIELDS, "ListLogEntriesRequest")
    prefixes = _log_name_prefixes(body)
    try:
        query = compile_filter(_string(body, "filter"))
    except LocalCloudError as err:
        raise invalid(str(err)) from err
    descending = _descending(_string(body, "orderBy"))
    page_size = _page_size(body.get("pageSize"))

    entries = store.entries()
    # Sort by timestamp, then by arrival, so pages stay stable while entries are appended.
    keys = {index: (_instant(entry), index) for index, entry in enumerate(entries)}
    selected = [
        index
        for index, entry in enumerate(entries)
        if str(entry.get("logName", "")).startswith(prefixes) and query.matches(entry)
    ]
    selected.sort(key=keys.__getitem__, reverse=descending)
    token = _string(body, "pageToken")
    if token:
        after = keys[_decode_token(token, len(entries))]
        selected = [i for i in selected if (keys[i] < after if descending else keys[i] > after)]

    page = selected[:page_size]
    response: dict[str, Any] = {"entries": [entries[i] for i in page]}
    if len(selected) > page_size:
        response["nextPageToken"] = _encode_token(page[-1])
    return response


def _log_name_prefixes(body: dict[str, Any]) -> tuple[str, ...]:
    names = list(body.get("resourceNames") or [])
    names += [f"projects/{project}" for project in body.get("projectIds") or []]
    if not names:
        raise invalid("resourceNames: at least one resource name is required")
    for name in names:
        parts = str(name).split("/")
        if len(parts) != 2 or parts[0] != "projects" or not parts[1]:
            raise invalid(f"resourceNames: {name!r} is not supported here, use 'projects/PROJECT'")
    return tuple(f"{name}/" for name in names)


def _descending(order_by: str) -> bool:
    normalized = " ".join(order_by.split()).lower()
    if normalized in ("", "timestamp", "timestamp asc"):
        return False
    if normalized == "timestamp desc":
        return True
    raise invalid(
        f"orderBy: {order_by!r} is not supported, use 'timestamp asc' or 'timestamp desc'"
    )


def _page_size(value: Any) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError) as err:
        raise invalid(f"pageSize: {value!r} is not an integer") from err
    # Non-positive sizes are ignored, as in the API.
    return min(size, MAX_PAGE_SIZE) if size > 0 else DEFAULT_PAGE_SIZE


def _instant(entry: LogEntry) -> Instant:
    parsed = parse_timestamp(str(entry.get("timestamp", "")))
    return parsed if parsed is not None else _EARLIEST


def _encode_token(index: int) -> str:
    return base64.urlsafe_b64encode(f"entry:{index}".encode()).decode()


def _decode_token(token: str, count: int) -> int:
    """The token names the last entry returned (by its place in the append-only store)."""
    try:
        kind, _, index = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        position = int(index)
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise invalid(f"pageToken: {token!r} is not a token this server issued") from err
    if kind != "entry" or not 0 <= position < count:
        raise invalid(f"pageToken: {token!r} is not a token this server issued")
    return position


# --- entries:write -------------------------------------------------------------------------


def write_entries(store: LogStore, body: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(body, _WRITE_FIELDS, "WriteLogEntriesRequest")
    raw_entries = body.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise invalid("entries: at least one log entry is required")
    prepared = [_complete_entry(raw, body, i) for i, raw in enumerate(raw_entries)]
    # All entries are checked before any is stored: a bad batch stores nothing.
    if not (body.get("dryRun") or body.get("dry_run")):
        for entry in prepared:
            store.append(entry)
    return {}


def _complete_entry(raw: Any, body: dict[str, Any], index: int) -> LogEntry:
    """Fill what Cloud Logging fills: defaults from the request, insertId, timestamps."""
    if not isinstance(raw, dict):
        raise invalid(f"entries[{index}]: expected a JSON object")
    entry: LogEntry = {key: value for key, value in raw.items() if value is not None}
    log_name = entry.get("logName") or body.get("logName")
    parts = str(log_name or "").split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "logs" or "" in parts:
        raise invalid(
            f"entries[{index}].logName: {log_name!r} must look like projects/PROJECT/logs/LOG_ID"
        )
    entry["logName"] = log_name
    resource = entry.get("resource") or body.get("resource")
    if not isinstance(resource, dict) or not resource.get("type"):
        raise invalid(f"entries[{index}].resource: a monitored resource with a type is required")
    entry["resource"] = resource
    labels = {**(body.get("labels") or {}), **(entry.get("labels") or {})}
    if labels:
        entry["labels"] = labels
    if "timestamp" in entry and parse_timestamp(str(entry["timestamp"])) is None:
        raise invalid(f"entries[{index}].timestamp: {entry['timestamp']!r} is not RFC3339")
    now = now_rfc3339()
    entry.setdefault("timestamp", now)
    entry["receiveTimestamp"] = now
    entry.setdefault("insertId", uuid.uuid4().hex[:16])
    return entry


def _reject_unknown(body: dict[str, Any], known: set[str], message_type: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise invalid(f"{message_type}: unknown field(s) {', '.join(unknown)}")


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise invalid(f"{key}: expected a string, got {type(value).__name__}")
    return value


# --- the HTTP server -----------------------------------------------------------------------

Route = Callable[[LogStore, dict[str, Any]], dict[str, Any]]
ROUTES: dict[str, Route] = {
    "/v2/entries:list": list_entries,
    "/v2/entries:write": write_entries,
}


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    server: _Server

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            route = ROUTES.get(path)
            if route is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no method at POST {path}")
            self._reply(HTTPStatus.OK, route(self.server.store, self._body()))
        except ApiError as err:
            error = {"code": err.status.value, "message": str(err), "status": err.reason}
            self._reply(err.status, {"error": error})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        error = {"code": 404, "message": f"no method at GET {path}", "status": "NOT_FOUND"}
        self._reply(HTTPStatus.NOT_FOUND, {"error": error})

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

    def __init__(self, address: tuple[str, int], store: LogStore) -> None:
        super().__init__(address, _Handler)
        self.store = store


class LoggingServer:
    """`start()` binds (port 0 picks a free one) and serves on a background thread."""

    def __init__(self, store: LogStore, port: int = 0, host: str = "127.0.0.1") -> None:
        self.store = store
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise LocalCloudError("the logging server has no URL until start() is called")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LoggingServer:
        if self._server is not None:
            raise LocalCloudError("the logging server is already started")
        try:
            self._server = _Server(self._address, self.store)
        except OSError as err:
            raise LocalCloudError(
                f"logging server cannot listen on {self._address}: {err}"
            ) from err
        # A short poll interval makes stop() quick; serving itself does not poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="localcloud-logging",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
