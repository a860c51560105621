"""A local webhook receiver standing in for a Slack or Google Chat incoming webhook.

localcloud sends notifications there when the webhook URL a pipeline names is not set, so
`make demo` shows what the channel would have received; tests point the functions at one
to see what they sent. Every JSON POST is kept (in memory, and as one JSON line in `path`
when given) and answered 200 `ok`; a body that is not JSON is refused with 400, as Slack
refuses an invalid payload."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.wrappers import Request, Response

from localcloud.httpserver import HttpServer

Messages = list[Any]


class WebhookSink:
    """`WebhookSink(path).start()` takes POSTs on `url` (`route` is the URL's path, so a
    test can give it a secret-looking token) until `stop()`."""

    def __init__(
        self,
        path: Path | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        route: str = "/webhook",
    ) -> None:
        self.path = path
        self.route = route
        self._messages: Messages = []
        self._keys: list[str] = []  # each message's Idempotency-Key header ("" if none)
        # Notified on every message, so wait_for() wakes when there is news.
        self._arrived = threading.Condition()
        self._http = HttpServer(
            Request.application(self._receive), name="webhook receiver", host=host, port=port
        )

    @property
    def url(self) -> str:
        return self._http.url + self.route

    def start(self) -> WebhookSink:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def received(self) -> Messages:
        """Every message received so far, oldest first."""
        with self._arrived:
            return list(self._messages)

    def texts(self) -> list[str]:
        """The `text` of each message: the field Slack and Chat show."""
        return [str(m["text"]) for m in self.received() if isinstance(m, dict) and "text" in m]

    def idempotency_keys(self) -> list[str]:
        """Each message's `Idempotency-Key` header, in the order of `received()`."""
        with self._arrived:
            return list(self._keys)

    def wait_for(self, condition: Callable[[Messages], bool], timeout: float = 30.0) -> Messages:
        """The messages once `condition(messages)` holds; TimeoutError after `timeout`
        seconds, naming what did arrive."""
        with self._arrived:
            if self._arrived.wait_for(lambda: condition(list(self._messages)), timeout):
                return list(self._messages)
            raise TimeoutError(
                f"the webhook receiver did not get the expected messages within {timeout}s; "
                f"received {self._messages}"
            )

    def _receive(self, request: Request) -> Response:
        if request.method != "POST":
            return Response("POST a JSON message", status=405, headers={"Allow": "POST"})
        try:
            message = json.loads(request.get_data())
        except ValueError:
            return Response("invalid_payload", status=400)
        with self._arrived:
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(message) + "\n")
            self._messages.append(message)
            self._keys.append(request.headers.get("Idempotency-Key", ""))
            self._arrived.notify_all()
        return Response("ok")
