"""The last lines of a failed job's replica log, read with google-cloud-logging.

Against an `http://` LOGGING_API_ENDPOINT (localcloud) the client speaks REST with
anonymous credentials; otherwise it uses its defaults."""

from __future__ import annotations

from typing import Any

from retrain.adapters.errors import translated
from retrain.settings import Settings

# Lines looked at to find the failing replica: its last ERROR line names it.
SCAN_ENTRIES = 200


def logging_client(settings: Settings, project: str) -> Any:
    from google.cloud import logging as gcl

    endpoint = settings.logging_endpoint
    if endpoint and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return gcl.Client(
            project=project or "local",
            credentials=AnonymousCredentials(),
            _use_grpc=False,
            client_options={"api_endpoint": endpoint},
        )
    if endpoint:
        return gcl.Client(project=project or None, client_options={"api_endpoint": endpoint})
    return gcl.Client(project=project or None)


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
