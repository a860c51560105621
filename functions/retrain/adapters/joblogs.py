"""The last lines of a failed job's replica log, read with google-cloud-logging.

In production, and against a plaintext gRPC emulator (LOGGING_EMULATOR_HOST, localcloud),
entries are read over gRPC with the GAPIC `LoggingServiceV2Client` — the call the
high-level client makes underneath. Against an `http://` LOGGING_API_ENDPOINT the
high-level client reads them over REST. Both give entries with the same attributes
(`resource.labels`, `severity`, a payload), which is all `tail` reads."""

from __future__ import annotations

from typing import Any

from retrain.adapters.clients import logging_gapic_client, logging_rest_client
from retrain.adapters.errors import translated
from retrain.settings import Settings

# Lines looked at to find the failing replica: its last ERROR line names it.
SCAN_ENTRIES = 200


def logging_client(settings: Settings, project: str) -> Any:
    """An object with `list_entries(resource_names, filter_, order_by, max_results,
    page_size)` returning entries, over the transport the settings select."""
    rest = logging_rest_client(settings, project)
    if rest is not None:
        return rest
    return _GrpcEntries(logging_gapic_client(settings))


class _GrpcEntries:
    """`list_entries` of the high-level client, over a GAPIC client."""

    def __init__(self, gapic: Any):
        self._gapic = gapic

    def list_entries(
        self,
        *,
        resource_names: list[str],
        filter_: str = "",
        order_by: str | None = None,
        max_results: int | None = None,
        page_size: int | None = None,
    ) -> list[Any]:
        request: dict[str, Any] = {"resource_names": resource_names, "filter": filter_}
        if order_by:
            request["order_by"] = order_by
        if page_size:
            request["page_size"] = page_size
        entries: list[Any] = []
        for raw in self._gapic.list_log_entries(request=request):
            entries.append(_GrpcEntry(raw))
            if max_results is not None and len(entries) >= max_results:
                break
        return entries


class _GrpcEntry:
    """A GAPIC LogEntry seen with the high-level client's attribute names."""

    def __init__(self, raw: Any):
        self.resource = raw.resource
        # LogSeverity is a plain protobuf enum: proto-plus hands it over as an int.
        from google.logging.type import log_severity_pb2

        self.severity = log_severity_pb2.LogSeverity.Name(int(raw.severity))
        if raw.text_payload:
            self.payload: Any = raw.text_payload
        elif raw.json_payload:
            self.payload = dict(raw.json_payload)
        else:
            self.payload = None


class CloudJobLogs:
    def __init__(self, project: str, client: Any):
        self._project = project
        self._client = client

    def tail(self, job_id: str, lines: int) -> list[str]:
        from google.cloud.logging import DESCENDING

        query = (
            f'resource.type="ml_job" AND resource.labels.job_id="{job_id}" '
            'AND resource.labels.task_name!="service"'
        )
        with translated(f"read the log of job {job_id}"):
            entries = list(
                self._client.list_entries(
                    resource_names=[f"projects/{self._project}"],
                    filter_=query,
                    order_by=DESCENDING,
                    max_results=SCAN_ENTRIES,
                    page_size=SCAN_ENTRIES,
                )
            )
        if not entries:
            return []
        failing = next((e for e in entries if _is_error(e)), entries[0])
        task = _task(failing)
        mine = [entry for entry in entries if _task(entry) == task][:lines]
        return [f"{task}: {_text(entry)}" for entry in reversed(mine)]


def _task(entry: Any) -> str:
    resource = getattr(entry, "resource", None)
    labels = getattr(resource, "labels", None) or {}
    return str(labels.get("task_name", ""))


def _is_error(entry: Any) -> bool:
    return str(getattr(entry, "severity", "") or "") in ("ERROR", "CRITICAL", "ALERT", "EMERGENCY")


def _text(entry: Any) -> str:
    payload = getattr(entry, "payload", None)
    if isinstance(payload, dict):
        return str(payload.get("message", payload))
    return str(payload if payload is not None else "")
