"""The local Cloud Logging store: LogEntries as Cloud Logging shapes them, one JSON
object per line, with listeners (the log router) told of every new entry."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

LogEntry = dict[str, Any]
Listener = Callable[[LogEntry], None]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_log_entry(
    *,
    project: str,
    job_id: str,
    task_name: str,
    message: str,
    severity: str = "INFO",
    labels: dict[str, str] | None = None,
) -> LogEntry:
    """A Vertex AI CustomJob log line: `task_name` is `service` for lifecycle lines and
    `workerpool<i>-<r>` for a replica's output, as on Vertex AI."""
    log_id = "ml.googleapis.com%2F" + job_id if task_name == "service" else task_name
    return {
        "insertId": uuid.uuid4().hex[:16],
        "logName": f"projects/{project}/logs/{log_id}",
        "resource": {
            "type": "ml_job",
            "labels": {"job_id": job_id, "project_id": project, "task_name": task_name},
        },
        "severity": severity,
        "timestamp": now_rfc3339(),
        "receiveTimestamp": now_rfc3339(),
        "labels": dict(labels or {}),
        "jsonPayload": {"message": message, "levelname": severity},
    }


@dataclass
class LogStore:
    """Append-only, persisted under `path` (JSON lines), safe across threads."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def append(self, entry: LogEntry) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(entry)

    def entries(self) -> list[LogEntry]:
        with self._lock, self.path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def delete_log(self, log_name: str) -> int:
        """Remove every entry of one log; returns how many there were. Log names compare
        with their log IDs URL-decoded: `a%2Fb` and `a%2fb` name the same log."""
        wanted = unquote(log_name)
        with self._lock:
            with self.path.open(encoding="utf-8") as handle:
                lines = [line for line in handle if line.strip()]
            kept = [
                line for line in lines if unquote(json.loads(line).get("logName", "")) != wanted
            ]
            removed = len(lines) - len(kept)
            if removed:
                # Write aside and rename, so a crash never leaves half a log behind.
                spare = self.path.with_name(self.path.name + ".tmp")
                spare.write_text("".join(kept), encoding="utf-8")
                os.replace(spare, self.path)
        return removed
