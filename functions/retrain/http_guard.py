"""A thin WSGI layer in front of functions-framework: deliveries it cannot parse get a
clear 4xx at once instead of a 500 that Eventarc would retry for a day.

functions-framework (with the CloudEvents SDK inside) fails with HTTP 500 before our code
runs on a batch-mode CloudEvent, on JSON nested a few thousand levels deep, on an integer
literal past Python's int-conversion limit, on a structured body that is not UTF-8 or not
an object. This layer answers, in Google's error format:

* 415 to `application/cloudevents-batch+json` (Eventarc never batches; one event a request);
* 413 to a body larger than Cloud Run accepts;
* 400 to a body with a JSON hazard (`safejson.hazard`), or a structured-mode body that is
  not a UTF-8 JSON object;
* 400 instead of a 500 that the framework raised before the function was entered (the
  request, not the function, was at fault); a 500 from inside the function stays a 500,
  since that is how a transient failure asks for a retry.

functions-framework has no middleware hook, but it executes the source module inside the
app's context: `install()`, called from main.py at import, wraps that app.
"""

from __future__ import annotations

import contextvars
import functools
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from retrain import safejson

MAX_BODY = 32 * 1024 * 1024  # Cloud Run's request limit; a Pub/Sub message is at most 10 MB
BATCH = "application/cloudevents-batch+json"
STRUCTURED = "application/cloudevents+json"
_BINARY_HEADERS = ("ce-specversion", "ce-source", "ce-type", "ce-id")

# Set by the function wrapper when a delivery reaches our code: a 500 without it came
# from the framework's own parsing.
_entered: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "retrain_entered", default=None
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def entered(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an entry point so the guard knows a delivery reached it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        marks = _entered.get()
        if marks is not None:
            marks.append(True)
        return function(*args, **kwargs)

    return wrapper


class Guard:
    def __init__(self, app: WsgiApp):
        self.app = app

    def __call__(self, wsgi_env: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(wsgi_env)
        if request.method != "POST":
            return self.app(wsgi_env, start_response)
        refusal = self._refusal(request, wsgi_env)
        if refusal is not None:
            return refusal(wsgi_env, start_response)
        marks: list[bool] = []
        token = _entered.set(marks)
        try:
            response = Response.from_app(self.app, wsgi_env, buffered=True)
        finally:
            _entered.reset(token)
        if response.status_code >= 500 and not marks:
            response = _error(400, "the request is not a CloudEvent this function can read")
        return response(wsgi_env, start_response)

    def _refusal(self, request: Request, wsgi_env: dict[str, Any]) -> Response | None:
        if request.mimetype == BATCH:
            return _error(
                415,
                "batch-mode CloudEvents are not supported: send one event per request "
                "(binary or structured mode)",
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, f"request body is larger than {MAX_BODY} bytes")
        body = request.stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _error(413, f"request body is larger than {MAX_BODY} bytes")
        # The framework reads the body again: hand it an unread copy.
        wsgi_env["wsgi.input"] = io.BytesIO(body)
        wsgi_env["CONTENT_LENGTH"] = str(len(body))
        problem = safejson.hazard(body)
        if problem:
            return _error(400, f"request body: {problem}")
        headers = {key.lower() for key, _value in request.headers.items()}
        if all(name in headers for name in _BINARY_HEADERS):
            return None  # binary mode: the body is the event's data, ours to judge
        try:
            event = safejson.loads(body)
        except safejson.JsonRejected as err:
            if request.mimetype == STRUCTURED:
                return _error(400, f"structured CloudEvent is not JSON: {err}")
            return None  # not a CloudEvent at all: the framework answers that itself
        if not isinstance(event, dict):
            return _error(400, "request body must be a JSON object (one CloudEvent)")
        return None


def install() -> None:
    """Wrap the functions-framework app whose context is active, if any (none when main.py
    is imported by a test or a tool rather than served)."""
    import flask

    if not flask.has_app_context():
        return
    app = flask.current_app
    if not isinstance(app.wsgi_app, Guard):
        app.wsgi_app = Guard(app.wsgi_app)  # type: ignore[method-assign, assignment]


def _error(code: int, message: str) -> Response:
    body = {"error": {"code": code, "message": message, "status": "INVALID_ARGUMENT"}}
    return Response(json.dumps(body), status=code, mimetype="application/json")
