"""Vertex AI's REST wire format: Google's JSON error shape, and protobuf messages
to and from JSON exactly as the official clients write and read them."""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)

# google.rpc.Code name -> (numeric code, HTTP status), as Google's REST gateway maps them.
_STATUS: dict[str, tuple[int, int]] = {
    "INVALID_ARGUMENT": (3, 400),
    "FAILED_PRECONDITION": (9, 400),
    "OUT_OF_RANGE": (11, 400),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "INTERNAL": (13, 500),
    "UNIMPLEMENTED": (12, 501),
    "UNAVAILABLE": (14, 503),
}


class ApiError(Exception):
    """A request the API refuses; becomes {"error": {"code", "message", "status"}}."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def rpc_code(self) -> int:
        return _STATUS[self.status][0]

    @property
    def http_status(self) -> int:
        return _STATUS[self.status][1]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.http_status, "message": self.message, "status": self.status}}


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)


def precondition(message: str) -> ApiError:
    return ApiError("FAILED_PRECONDITION", message)


def parse(body: Any, message: M, what: str) -> M:
    """Fill `message` from request JSON, refusing unknown fields and wrong types, as
    Vertex does (a typo must not silently become a default)."""
    if not isinstance(body, dict):
        raise invalid(f"{what}: expected a JSON object, got {type(body).__name__}")
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as err:
        # The parser appends the list of every valid field; the first line names the problem.
        first_line = str(err).splitlines()[0].strip()
        raise invalid(f"Invalid JSON payload for {what}: {first_line}") from err
    return message


def to_json(message: Message, ints: bool) -> dict[str, Any]:
    """The JSON a client expects: camelCase names, enums as integers when it asked for
    `enum-encoding=int`, RFC3339 timestamps."""
    data: dict[str, Any] = json_format.MessageToDict(message, use_integers_for_enums=ints)
    return data


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def new_id(taken: set[str] | dict[str, Any] | None = None) -> str:
    """A 19-digit numeric id, the shape Vertex gives jobs, models and endpoints."""
    while True:
        candidate = str(10**18 + secrets.randbelow(9 * 10**18))
        if taken is None or candidate not in taken:
            return candidate
