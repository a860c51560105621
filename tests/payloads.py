"""Captured payloads under tests/events/: HTTP headers + body as Eventarc posts them."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).parent / "events"


def load(name: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(CloudEvent attributes, data) of a captured payload."""
    raw = json.loads((EVENTS / name).read_text())
    attributes = {
        k.removeprefix("ce-"): v for k, v in raw["headers"].items() if k.startswith("ce-")
    }
    return attributes, copy.deepcopy(raw["body"])


def http(name: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(HTTP headers, JSON body) of a captured payload, to post to a served function."""
    raw = json.loads((EVENTS / name).read_text())
    return dict(raw["headers"]), copy.deepcopy(raw["body"])


def pubsub_body(
    payload: Any, message_id: str, attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {
        "subscription": "projects/acme-ml/subscriptions/test",
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes or {},
            "messageId": message_id,
            "publishTime": "2026-11-26T09:20:11.127Z",
        },
    }
