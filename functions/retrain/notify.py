"""Notifications as pure values: the JSON document published to Pub/Sub and the text a
Slack or Google Chat webhook shows (a top-level "text" works for both)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from retrain.config import Notify
from retrain.errors import shown
from retrain.gate import basis_text

DEPLOYED, REJECTED, ROLLED_BACK, FAILED, CANCELLED, REQUEST_REJECTED = (
    "deployed",
    "rejected",
    "rolled_back",
    "failed",
    "cancelled",
    "request_rejected",
)
CONSOLE = "https://console.cloud.google.com"
_TITLES = {
    DEPLOYED: "deployed",
    REJECTED: "rejected by the quality gate",
    ROLLED_BACK: "rolled back (smoke test failed)",
    FAILED: "training failed",
    CANCELLED: "training cancelled",
}
# A trainer's failure line already says "error: …" (and Vertex may say "Error: …"): the
# message shows it under its own "error:" label, once.
_ERROR_LABEL = re.compile(r"^(?:\s*error\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class Notification:
    kind: str
    pipeline: str
    run_id: str  # for a rejected request: the id its run would have had
    job: str  # the CustomJob resource name ("" when no job was submitted)
    state: str
    project: str
    region: str
    data_uri: str | None = None
    duration_seconds: float | None = None
    metric_name: str | None = None
    metric: float | None = None
    champion_metric: float | None = None
    basis: str | None = None  # what the two metrics were measured on (see gate.py)
    basis_rows: int | None = None
    model_version: str | None = None  # projects/…/models/ID@VERSION
    endpoint: str | None = None
    reason: str | None = None  # why rejected or rolled back
    error: str | None = None  # the job's error message
    log_tail: tuple[str, ...] = ()
    canary_percent: int | None = None
    trials: tuple[str, ...] = ()  # a tuning job's best trials and failures, a line each
    extra: Mapping[str, Any] = field(default_factory=dict)


def wanted(notify: Notify | None, kind: str) -> bool:
    return notify is not None and kind in notify.on


def duration(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def request_rejection(
    pipeline: str,
    run_id: str,
    message_id: str,
    field: str,
    reason: str,
    *,
    requester: str | None,
    project: str,
    region: str,
) -> Notification:
    """A retrain request refused before any job: which message, which field, and why."""
    return Notification(
        kind=REQUEST_REJECTED,
        pipeline=pipeline,
        run_id=run_id,
        job="",
        state="REQUEST_REJECTED",
        project=project,
        region=region,
        reason=reason,
        extra={"message_id": message_id, "field": field, "requester": requester},
    )


def error_text(error: str | None) -> str | None:
    """The job's error without the "error:" label(s) it may already carry."""
    if error is None:
        return None
    return _ERROR_LABEL.sub("", error, count=1) or error


def links(n: Notification) -> dict[str, str]:
    """Console links for the job, its logs, the model version and the endpoint."""
    project = f"?project={n.project}"
    found: dict[str, str] = {}
    if n.job:
        job_id = n.job.rsplit("/", 1)[-1]
        query = quote(f'resource.type="ml_job" resource.labels.job_id="{job_id}"', safe="")
        # A CustomJob's page opens on its CPU tab; a tuning job's page (same path, as the
        # SDK's dashboard links have it) has no such tab.
        tab = "" if "/hyperparameterTuningJobs/" in n.job else "/cpu"
        found["job"] = f"{CONSOLE}/vertex-ai/locations/{n.region}/training/{job_id}{tab}{project}"
        found["logs"] = f"{CONSOLE}/logs/query;query={query}{project}"
    if n.model_version:
        model, _, version = n.model_version.partition("@")
        model_id = model.rsplit("/", 1)[-1]
        found["model"] = (
            f"{CONSOLE}/vertex-ai/models/locations/{n.region}/models/{model_id}"
            f"/versions/{version}{project}"
        )
    if n.endpoint:
        endpoint_id = n.endpoint.rsplit("/", 1)[-1]
        found["endpoint"] = (
            f"{CONSOLE}/vertex-ai/locations/{n.region}/endpoints/{endpoint_id}{project}"
        )
    return found


def notification_id(n: Notification) -> str:
    """The same for every send of one notification (a repeat after a crash included): the
    webhook's `Idempotency-Key` header and the Pub/Sub message's `notification_id`
    attribute, so a receiver of its own can drop a repeat."""
    return f"{n.pipeline}/{n.run_id}/{n.kind}"


def document(n: Notification) -> dict[str, Any]:
    """The Pub/Sub message: one flat JSON object per notification."""
    return {
        "notification_id": notification_id(n),
        "kind": n.kind,
        "pipeline": n.pipeline,
        "run_id": n.run_id,
        "job": n.job,
        "state": n.state,
        "data_uri": n.data_uri,
        "duration_seconds": n.duration_seconds,
        "metric_name": n.metric_name,
        "metric": n.metric,
        "champion_metric": n.champion_metric,
        "basis": n.basis,
        "basis_rows": n.basis_rows,
        "model_version": n.model_version,
        "endpoint": n.endpoint,
        "canary_percent": n.canary_percent,
        "reason": n.reason,
        "error": error_text(n.error),
        "log_tail": list(n.log_tail),
        "trials": list(n.trials),
        "links": links(n),
        **n.extra,
    }


def text(n: Notification, tail_lines: int = 20) -> str:
    """The webhook message: a headline, the facts, the log tail in a code block."""
    if n.kind == REQUEST_REJECTED:
        return _request_rejection_text(n)
    lines = [f"[retrain] {n.pipeline}: run {n.run_id} {_TITLES.get(n.kind, n.kind)}"]
    facts: Sequence[tuple[str, Any]] = (
        ("job", n.job or None),
        ("state", n.state),
        ("data", n.data_uri),
        ("duration", f"{n.duration_seconds:.0f}s" if n.duration_seconds is not None else None),
        ("metric", _metric_text(n)),
        ("model", n.model_version),
        ("endpoint", n.endpoint),
        ("canary", f"{n.canary_percent}% of traffic" if n.canary_percent else None),
        ("reason", n.reason),
        ("error", error_text(n.error)),
    )
    lines += [f"{name}: {value}" for name, value in facts if value is not None]
    lines += [f"{name}: {url}" for name, url in links(n).items()]
    if n.trials:
        lines += ["trials:", *(f"  {line}" for line in n.trials)]
    if n.log_tail:
        lines += ["last log lines:", "```", *n.log_tail[-tail_lines:], "```"]
    return "\n".join(lines)


def _request_rejection_text(n: Notification) -> str:
    message_id = _printable(n.extra.get("message_id"))
    lines = [f"[retrain] {n.pipeline}: retrain request {message_id} rejected"]
    facts = (
        ("field", _printable(n.extra.get("field"))),
        ("reason", n.reason),
        ("requester", _printable(n.extra.get("requester"))),
    )
    lines += [f"{name}: {value}" for name, value in facts if value]
    return "\n".join(lines)


def _printable(value: Any) -> str | None:
    # Ids and names from a request are the sender's text: quoted when not plain, so that
    # they cannot add lines to the message.
    if value is None or (isinstance(value, str) and value.isprintable()):
        return value
    return shown(value)


def _metric_text(n: Notification) -> str | None:
    if n.metric is None:
        return None
    shown = f"{n.metric_name} = {n.metric:g}"
    if n.champion_metric is not None:
        shown += f" vs champion {n.champion_metric:g}"
        where = basis_text(n.basis, n.basis_rows)
        if where:
            shown += f" ({where})"
    return shown
