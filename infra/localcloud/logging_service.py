"""The Cloud Logging v2 methods over a LogStore, in the API's JSON shapes: the REST front
hands its request bodies here as they arrive, the gRPC front converts its protos to the
same dicts first. So both transports share one set of checks, defaults and errors, and
the errors are Google's (INVALID_ARGUMENT for a bad filter, NOT_FOUND for an unknown log).

Entries are stored as the API returns them (proto3 JSON of a LogEntry): a severity
written as a number is read back by its name, timestamps in UTC."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

from google.cloud.logging_v2.types import log_entry
from google.protobuf import json_format

from localcloud.errors import LocalCloudError
from localcloud.logfilter import SEVERITY_ORDER, Instant, compile_filter, parse_timestamp
from localcloud.logstore import LogEntry, LogStore, now_rfc3339
from localcloud.vertex.wire import ApiError, invalid, not_found, parse

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
LIST_FIELDS = frozenset(
    {"resourceNames", "projectIds", "filter", "orderBy", "pageSize", "pageToken"}
)
# The official REST client sends `dry_run` in snake case; the API accepts both spellings.
WRITE_FIELDS = frozenset(
    {"entries", "logName", "resource", "labels", "partialSuccess", "dryRun", "dry_run"}
)
_EARLIEST: Instant = (datetime.min.replace(tzinfo=UTC), 0)
_SEVERITY_NAMES = {rank: name for name, rank in SEVERITY_ORDER.items()}
_LogEntryPb = log_entry.LogEntry.pb()


class LoggingService:
    """entries.list, entries.write and logs.delete; owns nothing but the store."""

    def __init__(self, store: LogStore) -> None:
        self._store = store

    # --- entries.list ----------------------------------------------------------------------

    def list_entries(self, body: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(body, LIST_FIELDS, "ListLogEntriesRequest")
        prefixes = _log_name_prefixes(body)
        try:
            query = compile_filter(_string(body, "filter"))
        except LocalCloudError as err:
            raise invalid(str(err)) from err
        descending = _descending(_string(body, "orderBy"))
        page_size = _page_size(body.get("pageSize"))

        entries = self._store.entries()
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
        response: dict[str, Any] = {"entries": [_as_listed(entries[i]) for i in page]}
        if len(selected) > page_size:
            response["nextPageToken"] = _encode_token(page[-1])
        return response

    # --- entries.write ---------------------------------------------------------------------

    def write_entries(self, body: dict[str, Any]) -> dict[str, Any]:
        reject_unknown(body, WRITE_FIELDS, "WriteLogEntriesRequest")
        raw_entries = body.get("entries")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise invalid("entries: at least one log entry is required")
        prepared = [_complete_entry(raw, body, i) for i, raw in enumerate(raw_entries)]
        # All entries are checked before any is stored: a bad batch stores nothing.
        if not (body.get("dryRun") or body.get("dry_run")):
            for entry in prepared:
                self._store.append(entry)
        return {}

    # --- logs.delete -----------------------------------------------------------------------

    def delete_log(self, log_name: str) -> dict[str, Any]:
        """Delete every entry of one log. A log without entries does not exist, so
        deleting it is NOT_FOUND, as on Google Cloud."""
        if not _is_log_name(log_name):
            raise invalid(f"logName: {log_name!r} must look like projects/PROJECT/logs/LOG_ID")
        if self._store.delete_log(log_name) == 0:
            raise not_found(f"Log {log_name} not found")
        return {}


# --- request fields ------------------------------------------------------------------------


def reject_unknown(body: dict[str, Any], known: frozenset[str], message_type: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise invalid(f"{message_type}: unknown field(s) {', '.join(unknown)}")


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise invalid(f"{key}: expected a string, got {type(value).__name__}")
    return value


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


def _is_log_name(name: Any) -> bool:
    parts = str(name or "").split("/")
    return len(parts) == 4 and parts[0] == "projects" and parts[2] == "logs" and "" not in parts


# --- paging --------------------------------------------------------------------------------


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


# --- entries -------------------------------------------------------------------------------


def _complete_entry(raw: Any, body: dict[str, Any], index: int) -> LogEntry:
    """Fill what Cloud Logging fills (defaults from the request, insertId, timestamps) and
    store the entry as the API returns it."""
    if not isinstance(raw, dict):
        raise invalid(f"entries[{index}]: expected a JSON object")
    entry: LogEntry = {key: value for key, value in raw.items() if value is not None}
    log_name = entry.get("logName") or body.get("logName")
    if not _is_log_name(log_name):
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
    if "severity" in entry and _severity_name(entry["severity"]) is None:
        names = ", ".join(SEVERITY_ORDER)
        raise invalid(f"entries[{index}].severity: {entry['severity']!r} is not one of {names}")
    now = now_rfc3339()
    entry.setdefault("timestamp", now)
    entry["receiveTimestamp"] = now
    entry.setdefault("insertId", uuid.uuid4().hex[:16])
    return _canonical(entry, f"entries[{index}]")


def _canonical(entry: LogEntry, what: str) -> LogEntry:
    """The entry through the LogEntry proto: unknown fields and wrong types are refused,
    enums become names, timestamps UTC, defaults are left out, as the API answers."""
    message = parse(entry, _LogEntryPb(), what)
    canonical: LogEntry = json_format.MessageToDict(message)
    if "jsonPayload" in entry:
        # A Struct holds only doubles, which proto3 JSON prints as `1.0`; the API prints
        # whole numbers without a fraction, as the payload as written already does.
        canonical["jsonPayload"] = entry["jsonPayload"]
    return canonical


def _as_listed(entry: LogEntry) -> LogEntry:
    """Entries appended to the store directly (the job runtime's) may carry severity as a
    number: the API lists it by name, and leaves DEFAULT out like any default value."""
    if "severity" not in entry:
        return entry
    name = _severity_name(entry["severity"])
    if name == entry["severity"] and name != "DEFAULT":
        return entry
    listed = {key: value for key, value in entry.items() if key != "severity"}
    if name is not None and name != "DEFAULT":
        listed["severity"] = name
    return listed


def _severity_name(value: Any) -> str | None:
    """The LogSeverity name of a name or number (proto3 JSON accepts both)."""
    if isinstance(value, str):
        if value in SEVERITY_ORDER:
            return value
        value = int(value) if value.isdigit() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return _SEVERITY_NAMES.get(value)
    return None


__all__ = ["ApiError", "LoggingService"]
