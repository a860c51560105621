"""Translate client-library exceptions into the core's permanent/transient split."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from retrain.errors import PermanentError, TransientError


def is_transient(err: BaseException) -> bool:
    """5xx, 429, timeouts and connection failures: a retry may succeed."""
    from google.api_core import exceptions as gexc

    if isinstance(
        err,
        gexc.TooManyRequests
        | gexc.InternalServerError
        | gexc.ServiceUnavailable
        | gexc.GatewayTimeout
        | gexc.DeadlineExceeded
        | gexc.RetryError
        | gexc.Aborted,
    ):
        return True
    if isinstance(err, gexc.GoogleAPICallError):
        return bool(err.code and int(err.code) >= 500)
    import requests

    return isinstance(
        err, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError
    )


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a client call; re-raise its failure as TransientError or PermanentError."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as err:
        from google.api_core import exceptions as gexc

        if is_transient(err):
            raise TransientError(f"{action}: {type(err).__name__}: {err}") from err
        if isinstance(err, gexc.GoogleAPICallError):
            raise PermanentError(f"{action}: {err}") from err
        raise
