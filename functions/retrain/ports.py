"""Ports: what the core needs from the outside world. Adapters implement them with the
official clients (`adapters/`); unit tests implement them with in-memory fakes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from retrain.jobspec import JobSpec

TERMINAL_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)


@dataclass(frozen=True)
class Stored:
    """A state document and the generation it was read at (for compare-and-swap)."""

    doc: dict[str, Any]
    generation: int
    updated: datetime


@dataclass(frozen=True)
class Listed:
    key: str
    generation: int
    updated: datetime


class StateStore(Protocol):
    """Small JSON documents under one prefix, with atomic create and compare-and-swap."""

    def create(self, key: str, doc: Mapping[str, Any]) -> int | None:
        """Create `key` if it does not exist; its generation, or None if it existed."""

    def read(self, key: str) -> Stored | None: ...

    def replace(self, key: str, doc: Mapping[str, Any], *, generation: int) -> int | None:
        """Overwrite `key` only if it is still at `generation`; the new generation or None."""

    def list(self, prefix: str) -> list[Listed]: ...

    def delete(self, key: str) -> None:
        """Delete `key`; a missing key is not an error."""


class Blobs(Protocol):
    """Whole objects by URI (gs:// or a local path)."""

    def read_text(self, uri: str) -> tuple[str, int]:
        """The object's text and its generation (0 for local files)."""

    def generation(self, uri: str) -> int | None: ...


@dataclass(frozen=True)
class JobInfo:
    name: str
    state: str  # aiplatform_v1.JobState name, e.g. "JOB_STATE_RUNNING"
    display_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    error_message: str | None = None
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    base_output_directory: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def job_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class TrainingService(Protocol):
    """Vertex AI custom training jobs."""

    def submit(self, spec: JobSpec) -> JobInfo: ...

    def get(self, name: str) -> JobInfo: ...

    def find(self, labels: Mapping[str, str]) -> list[JobInfo]:
        """Jobs carrying all of `labels`."""

    def cancel(self, name: str) -> None: ...
