"""Structured logs: one JSON object per line with `severity` and `message`, the format
Cloud Logging parses from a function's stdout. The stream is injectable so tests read
parsed records instead of matching strings."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

_LEVELS = {"DEBUG": 10, "INFO": 20, "NOTICE": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class Logger:
    def __init__(self, stream: IO[str] | None = None, level: str = "INFO", **context: Any):
        self._stream = stream
        self._threshold = _LEVELS.get(level.upper(), 20)
        self._context = context
        self._lock = threading.Lock()

    def bind(self, **context: Any) -> Logger:
        """A logger that adds `context` (pipeline, event id, run id...) to every record."""
        child = Logger(self._stream, "DEBUG", **{**self._context, **context})
        child._threshold = self._threshold
        child._lock = self._lock
        return child

    def log(self, severity: str, message: str, **fields: Any) -> None:
        if _LEVELS.get(severity, 20) < self._threshold:
            return
        record = {
            "severity": severity,
            "message": message,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **self._context,
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = json.dumps(record, default=str, separators=(",", ":"))
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def debug(self, message: str, **fields: Any) -> None:
        self.log("DEBUG", message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self.log("INFO", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log("WARNING", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("ERROR", message, **fields)
