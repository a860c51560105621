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


class RetrainError(Exception):
    """Root of every error the core raises on purpose."""


class PermanentError(RetrainError):
    """Retrying the same delivery cannot succeed: log it and acknowledge."""


class InvalidEvent(PermanentError):
    """The incoming event cannot be parsed into one of the product's events."""


class InvalidRequest(PermanentError):
    """A retrain request names an unknown pipeline, a bad field or a value outside the guards."""


class JobRejected(PermanentError):
    """The training service refused the job for a reason a retry will not change."""


class TransientError(RetrainError):
    """Temporary failure of a dependency: raise so that the delivery is retried."""


class ConfigError(RetrainError):
    """The pipelines config is missing or invalid; the message names the file and key."""
