"""The ports one config's handlers use, in one bundle built by the composition root
(bootstrap.py) once per config, or by a test over its fakes. Handlers take the bundle and
use what they need; none builds an adapter itself.

Ports that need a client are `Lazy`: built on first use and then kept, so an event that is
ignored never imports the Vertex or Cloud Logging client libraries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from retrain.config import Config, Pipeline
from retrain.ledger import JobLedger, Ledger
from retrain.ports import (
    Blobs,
    DataObjects,
    Endpoints,
    JobLogs,
    ModelRegistry,
    Notifier,
    TrainingService,
)

T = TypeVar("T")


class Lazy(Generic[T]):
    """A value built on first call, once (a build that raises is tried again next time)."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None
        self._built = False

    @classmethod
    def of(cls, value: T) -> Lazy[T]:
        """A value already built (tests' fakes)."""
        lazy = cls(lambda: value)
        lazy._value, lazy._built = value, True
        return lazy

    def __call__(self) -> T:
        with self._lock:
            if not self._built:
                self._value = self._build()
                self._built = True
            return self._value  # type: ignore[return-value]


@dataclass(frozen=True)
class Ports:
    config: Config
    project: Lazy[str]  # defaults.project or the environment's; ConfigError when neither
    ledger: Lazy[Ledger]
    training: Lazy[TrainingService]
    notifiers: Callable[[Pipeline], list[Notifier]]  # a pipeline's channels, read at use
    # Not every handler needs these: the trigger's unit tests run without the input
    # manifest (objects) or the champion lookup (registry), and it reads no model files.
    blobs: Lazy[Blobs] | None = None
    registry: Lazy[ModelRegistry] | None = None
    endpoints: Lazy[Endpoints] | None = None
    job_logs: Lazy[JobLogs] | None = None
    objects: Lazy[DataObjects] | None = None

    def claims(self) -> JobLedger:
        """The job-events function's records (and the notifications' claims)."""
        return JobLedger(self.ledger().store)
