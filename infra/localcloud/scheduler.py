"""The local Cloud Scheduler job: publishes a tick (`{"tick": true}`) every interval, as the
Terraform-managed job publishes to `retrain-ticks`."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from localcloud.errors import LocalCloudError

Publish = Callable[[bytes, dict[str, str]], None]

TICK = b'{"tick": true}'


class Scheduler:
    """The first tick comes one interval after `start()`, as with a fresh cron job."""

    def __init__(
        self, interval_s: float, publish: Publish, *, stream: TextIO | None = None
    ) -> None:
        if not interval_s > 0:
            raise LocalCloudError(f"scheduler interval must be positive seconds, got {interval_s}")
        self.interval_s = interval_s
        self._publish = publish
        self._stream = stream
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Scheduler:
        if self._thread is not None:
            raise LocalCloudError("the scheduler is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="localcloud-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._publish(TICK, {})
            except Exception as err:  # a missed tick is harmless: the next one follows
                self._log("ERROR", "scheduler could not publish a tick", error=repr(err))

    def _log(self, severity: str, message: str, **fields: Any) -> None:
        record = {"severity": severity, "message": message, "component": "scheduler", **fields}
        stream = self._stream if self._stream is not None else sys.stderr
        print(json.dumps(record), file=stream, flush=True)
