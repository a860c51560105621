"""Notification channels: a Slack/Google Chat-compatible webhook over HTTP, and a JSON
document published to a Pub/Sub topic with google-cloud-pubsub.

The webhook URL is a secret: it never appears in a log line or an error message."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from retrain.adapters.errors import translated
from retrain.errors import PermanentError, TransientError

WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_S = 0.5  # doubled after each failed attempt
PUBLISH_TIMEOUT_S = 30.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


class WebhookNotifier:
    """POSTs `{"text": ...}`: the field both Slack and Google Chat incoming webhooks read,
    with the notification's id as the `Idempotency-Key` header (Slack and Chat ignore it;
    a receiver of its own can drop a repeated send by it)."""

    channel = "webhook"

    def __init__(
        self,
        url: str,
        session: Any = None,
        *,
        timeout: float = WEBHOOK_TIMEOUT_S,
        attempts: int = WEBHOOK_ATTEMPTS,
        backoff: float = WEBHOOK_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._url = url
        self._session = session
        self._timeout, self._attempts, self._backoff, self._sleep = (
            timeout,
            attempts,
            backoff,
            sleep,
        )

    def send(self, document: Mapping[str, Any], text: str) -> None:
        import requests

        session = self._session or requests
        headers = {IDEMPOTENCY_HEADER: str(document.get("notification_id", ""))}
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff * 2 ** (attempt - 1))
            try:
                reply = session.post(
                    self._url, json={"text": text}, headers=headers, timeout=self._timeout
                )
            except requests.RequestException as err:
                # The exception text holds the URL: report only its kind.
                problem = f"{type(err).__name__}"
                continue
            if reply.status_code < 300:
                return
            if reply.status_code == 429 or reply.status_code >= 500:
                problem = f"HTTP {reply.status_code}"
                continue
            raise PermanentError(f"webhook refused the notification: HTTP {reply.status_code}")
        raise TransientError(f"webhook unreachable after {self._attempts} attempts: {problem}")


class PubSubNotifier:
    """Publishes the notification document as JSON, with kind and pipeline as attributes
    so subscribers can filter, and its notification_id so they can drop a repeat."""

    channel = "pubsub"

    def __init__(self, publisher: Callable[[], Any], topic: str):
        self._publisher = publisher
        self._topic = topic

    def send(self, document: Mapping[str, Any], text: str) -> None:
        data = json.dumps(document, default=str).encode("utf-8")
        attributes = {
            "kind": str(document.get("kind", "")),
            "pipeline": str(document.get("pipeline", "")),
            "notification_id": str(document.get("notification_id", "")),
        }
        with translated(f"publish to {self._topic}"):
            future = self._publisher().publish(self._topic, data, **attributes)
            future.result(timeout=PUBLISH_TIMEOUT_S)
