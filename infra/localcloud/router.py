"""The local log sink: every new LogEntry that matches the sink's filter is published as
Cloud Logging's Pub/Sub sink publishes it (data = the LogEntry JSON, attribute
`logging.googleapis.com/timestamp`). The filter text is the very file Terraform deploys.

Publishing happens on a background thread, never inside `LogStore.append`: a slow or
broken Pub/Sub must not slow down or break the jobs writing their logs. A failed publish
stays at the head of a small queue and is retried until it succeeds or `stop()`."""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from localcloud.errors import LocalCloudError
from localcloud.logfilter import compile_filter
from localcloud.logstore import LogEntry, LogStore

Publish = Callable[[bytes, dict[str, str]], None]

# Package data, so an installed wheel has it too; Terraform reads this same file.
SHARED_FILTER_PATH = Path(__file__).resolve().parent / "job-events-filter.txt"
TIMESTAMP_ATTRIBUTE = "logging.googleapis.com/timestamp"
PUBLISH_TIMEOUT_S = 30.0


def sink_message(entry: LogEntry) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message a log sink makes of one entry."""
    data = json.dumps(entry, separators=(",", ":")).encode()
    return data, {TIMESTAMP_ATTRIBUTE: str(entry.get("timestamp", ""))}


class LogRouter:
    """`start()` subscribes to the store and starts the publishing thread."""

    def __init__(
        self,
        store: LogStore,
        filter_text: str,
        publish: Publish,
        *,
        retry_interval_s: float = 1.0,
        max_queued: int = 1000,
        stream: TextIO | None = None,
    ) -> None:
        self.store = store
        self.filter = compile_filter(filter_text)
        self._publish = publish
        self._retry_interval_s = retry_interval_s
        self._max_queued = max_queued
        self._stream = stream
        self._queue: deque[LogEntry] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._subscribed = False

    @classmethod
    def from_shared_filter(cls, store: LogStore, publish: Publish, **options: Any) -> LogRouter:
        try:
            filter_text = SHARED_FILTER_PATH.read_text(encoding="utf-8")
        except OSError as err:
            raise LocalCloudError(
                f"cannot read the shared sink filter {SHARED_FILTER_PATH}: {err}"
            ) from err
        return cls(store, filter_text, publish, **options)

    def start(self) -> LogRouter:
        if self._thread is not None:
            raise LocalCloudError("the log router is already started")
        self._stopping = False
        if not self._subscribed:
            # LogStore has no unsubscribe: subscribe once, and ignore entries while stopped.
            self.store.subscribe(self._on_entry)
            self._subscribed = True
        self._thread = threading.Thread(target=self._run, name="localcloud-log-router", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        with self._wake:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._log("WARNING", "log router stopped with entries not published", dropped=left)

    @property
    def pending(self) -> int:
        """Entries matched but not yet published."""
        with self._wake:
            return len(self._queue)

    def _on_entry(self, entry: LogEntry) -> None:
        # Runs inside LogStore.append: match and enqueue only, never raise.
        try:
            if self._stopping or self._thread is None or not self.filter.matches(entry):
                return
        except Exception as err:  # a malformed entry must not break the writer
            self._log("ERROR", "log router could not evaluate an entry", error=repr(err))
            return
        with self._wake:
            if len(self._queue) >= self._max_queued:
                dropped = self._queue.popleft()
                self._log(
                    "ERROR",
                    "log router queue full, dropping the oldest entry",
                    insert_id=str(dropped.get("insertId", "")),
                )
            self._queue.append(entry)
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                entry = self._queue[0]
            if self._try_publish(entry):
                with self._wake:
                    # stop() may have cleared the queue meanwhile.
                    if self._queue and self._queue[0] is entry:
                        self._queue.popleft()
            else:
                with self._wake:
                    self._wake.wait_for(lambda: self._stopping, timeout=self._retry_interval_s)

    def _try_publish(self, entry: LogEntry) -> bool:
        data, attributes = sink_message(entry)
        try:
            self._publish(data, attributes)
        except Exception as err:  # transient by assumption: kept at the head and retried
            self._log(
                "ERROR",
                "log router could not publish an entry, will retry",
                insert_id=str(entry.get("insertId", "")),
                error=repr(err),
            )
            return False
        return True

    def _log(self, severity: str, message: str, **fields: Any) -> None:
        record = {"severity": severity, "message": message, "component": "log-router", **fields}
        stream = self._stream if self._stream is not None else sys.stderr
        print(json.dumps(record), file=stream, flush=True)


def pubsub_publisher(project: str, topic: str, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> Publish:
    """A publish callable backed by the official Pub/Sub client, which honours
    PUBSUB_EMULATOR_HOST. It waits for each publish, so a failure raises to the router's
    retry queue instead of vanishing in a future."""
    # Imported here: only a running router needs the Pub/Sub client.
    from google.cloud.pubsub_v1 import PublisherClient

    client = PublisherClient()
    topic_path = topic if topic.startswith("projects/") else client.topic_path(project, topic)

    def publish(data: bytes, attributes: dict[str, str]) -> None:
        future = client.publish(topic_path, data, **attributes)
        try:
            future.result(timeout=timeout_s)
        except TimeoutError as err:
            raise LocalCloudError(
                f"publishing to {topic_path} got no answer within {timeout_s}s"
            ) from err

    return publish
