"""The one exception hierarchy of the retrain core.

Each class says what the delivering platform should do about it:

* `PermanentError` — retrying cannot help (a malformed event, an unknown pipeline, a
  request outside the guards). Handlers log one structured ERROR and *return*, so the
  delivery is acknowledged and no retry storm follows.
* `TransientError` — the world may look different in a moment (5xx, 429, timeouts from
  GCS or Vertex AI, a run another delivery is still submitting). Handlers *raise*, the
  function answers HTTP 5xx and Eventarc/Pub/Sub redeliver; every step is idempotent.
* `ConfigError` — the pipelines config cannot be used. Raised (not acknowledged): once an
  operator fixes the config, the redeliveries succeed and no data event is lost.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = 6


def shown(value: Any) -> str:
    """`value` as quoted in an error message: short and one line, however large, deep or
    hostile the input was (a message lands in logs and notifications)."""
    try:
        return _SHOWN.repr(value)
    except ValueError:  # an int past Python's int-to-text limit
        return f"<{type(value).__name__} too large to show>"


class RetrainError(Exception):
    """Root of every error the core raises on purpose."""

    @property
    def log_fields(self) -> Mapping[str, str]:
        """Fields for the structured log record of this error (beyond its message)."""
        return {}


class PermanentError(RetrainError):
    """Retrying the same delivery cannot succeed: log it and acknowledge."""


class InvalidEvent(PermanentError):
    """The incoming event cannot be parsed into one of the product's events."""


class InvalidRequest(PermanentError):
    """A retrain request names an unknown pipeline, a bad field or a value outside the guards."""

    def __init__(self, message: str, *, field: str, pipeline: str | None = None):
        super().__init__(message)
        self.field = field
        self.pipeline = pipeline

    @property
    def log_fields(self) -> Mapping[str, str]:
        found = {"field": self.field}
        if self.pipeline is not None:
            found["pipeline"] = self.pipeline
        return found


class JobRejected(PermanentError):
    """The training service refused the job for a reason a retry will not change."""


class TransientError(RetrainError):
    """Temporary failure of a dependency: raise so that the delivery is retried."""


class ConfigError(RetrainError):
    """The pipelines config is missing or invalid; the message names the file and key."""
