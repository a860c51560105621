"""Hostile input, case by case, through the served trigger function: every hostile retrain
request (tests/unit/hostile_requests.py), object names that would make an unclean data URI,
and deliveries that fail before the product runs. Each row is what the function answered
and logged; the totals count the jobs and run records they left (none may exist)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from localcloud.storage import StorageServer
from tests.contract.conftest import Cloud
from tests.unit import hostile_requests


@dataclass(frozen=True)
class Row:
    case: str
    status: int
    field: str  # what the function's log names ("" where no field is named)
    message: str
    ok: bool  # the answer and the log are what the case must get


# Object names that must be ignored, naming why: a marker whose folder (the data URI) would
# carry a line break and a flag, a bidi override, dot segments; an each-mode object likewise.
BAD_NAMES: list[tuple[str, str, str]] = [
    ("marker under a line break and a flag", "churn/d1/\n--epochs=999/_SUCCESS", "control"),
    ("marker after a bidi override", "churn/d1/\u202e/_SUCCESS", "control"),
    ("marker under '..'", "churn/../events/_SUCCESS", "'..'"),
    ("object under '.'", "events/./a.csv", "'..'"),
    ("object with a line break", "events/a\n--epochs=999.csv", "control"),
    ("object with a NUL", "events/a\x00.csv", "control"),
]
# Names that are odd but legal GCS names: each is one job, with the name intact.
ODD_NAMES = ["events/ü ñ 😀.csv", "events/a b.csv", "events/x//y.csv"]


def _clip(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(text: str) -> str:
    return _clip(text).replace("|", "\\|")


def requests_refused(cloud: Cloud) -> list[Row]:
    statuses = [
        cloud.post(*cloud.message(hostile_requests.payload(text, cloud.landing), f"hostile-{n}"))
        for n, (_name, text, _field, _phrase) in enumerate(hostile_requests.CASES)
    ]
    errors = [r for r in cloud.logs() if r.get("severity") == "ERROR"]
    rows = []
    for n, ((name, _text, field, phrase), status) in enumerate(
        zip(hostile_requests.CASES, statuses, strict=True)
    ):
        prefix = f"retrain request hostile-{n}: "
        refusal = next((r for r in errors if str(r.get("message")).startswith(prefix)), {})
        logged, message = str(refusal.get("field", "")), str(refusal.get("message", ""))
        ok = status == 200 and logged == field and phrase in message
        rows.append(Row(name, status, logged, message, ok))
    return rows


def _structured(delivery: tuple[dict[str, str], Any], event_id: str) -> tuple[dict[str, str], Any]:
    """A binary-mode CloudEvent in structured mode: names with line breaks cannot be
    header values, so Eventarc's JSON carries them."""
    headers, data = delivery
    attributes = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    attributes["id"] = event_id
    attributes["subject"] = "objects/" + data["name"]
    return {"content-type": "application/cloudevents+json"}, {**attributes, "data": data}


def names_ignored(cloud: Cloud) -> list[Row]:
    statuses = [
        cloud.post(*_structured(cloud.finalize(name, size=0 if "_SUCCESS" in name else 9),
                                f"bad-name-{n}"))
        for n, (_case, name, _phrase) in enumerate(BAD_NAMES)
    ]  # fmt: skip
    ignored = {r.get("event_id"): r for r in cloud.logs() if r.get("message") == "object ignored"}
    rows = []
    for n, ((case, _name, phrase), status) in enumerate(zip(BAD_NAMES, statuses, strict=True)):
        reason = str(ignored.get(f"bad-name-{n}", {}).get("reason", ""))
        rows.append(Row(case, status, "object name", reason, status == 200 and phrase in reason))
    return rows


def guard_answers(cloud: Cloud) -> list[Row]:
    """Deliveries that would fail inside functions-framework: a 4xx, never a 5xx."""
    rows = []
    for case, headers, raw, expected in hostile_requests.unservable(
        *cloud.message({"pipeline": "churn"}, "raw-1")
    ):
        response = requests.post(cloud.function.url, headers=headers, data=raw, timeout=60)
        try:
            error = response.json()["error"]
            message = f"{error['code']} {error.get('status', '')}: {error.get('message', '')}"
        except (ValueError, KeyError, TypeError):
            message = response.text
        rows.append(Row(case, response.status_code, "", message,
                        response.status_code == expected))  # fmt: skip
    return rows


@dataclass(frozen=True)
class Report:
    refused: list[Row]
    ignored: list[Row]
    guarded: list[Row]
    hostile_jobs: int  # jobs and run records left by the hostile inputs: 0
    hostile_runs: int
    odd_jobs: dict[str, int]  # legal odd names: jobs whose data URI is the name, 1 each

    @property
    def ok(self) -> bool:
        rows = self.refused + self.ignored + self.guarded
        return (all(r.ok for r in rows) and self.hostile_jobs == 0 and self.hostile_runs == 0
                and all(n == 1 for n in self.odd_jobs.values()))  # fmt: skip


def run(gcs: StorageServer, tmp: Path) -> Report:
    cloud = Cloud(gcs, tmp, faults=False, transport="grpc")
    try:
        refused = requests_refused(cloud)
        ignored = names_ignored(cloud)
        guarded = guard_answers(cloud)
        hostile_jobs, hostile_runs = len(cloud.jobs()), len(cloud.state_objects("runs/"))
        for n, name in enumerate(ODD_NAMES):
            cloud.post(*_structured(cloud.finalize(name), f"odd-name-{n}"))
        uris = [
            arg
            for job in cloud.jobs()
            for arg in job.job_spec.worker_pool_specs[0].container_spec.args
            if arg.startswith("--data-uri=")
        ]
        odd = {n: uris.count(f"--data-uri=gs://{cloud.landing}/{n}") for n in ODD_NAMES}
        return Report(refused, ignored, guarded, hostile_jobs, hostile_runs, odd)
    finally:
        cloud.stop()


def markdown(report: Report) -> str:
    def table(rows: list[Row], first: str, field: str | None) -> str:
        """Rows of case, answer, (the field named,) message and verdict."""
        named = f" {field} |" if field else ""
        lines = [f"| {first} | answer |{named} message | as required |",
                 f"|---|---:|{'---|' if field else ''}---|---|"]  # fmt: skip
        for r in rows:
            cell = f" `{r.field}` |" if field else ""
            verdict = "yes" if r.ok else "**no**"
            lines.append(f"| {r.case} | {r.status} |{cell} {_cell(r.message)} | {verdict} |")
        return "\n".join(lines)

    hostile = len(report.refused) + len(report.ignored) + len(report.guarded)
    named = sum(r.ok for r in report.refused)
    odd = ", ".join(
        f"`{json.dumps(n, ensure_ascii=False)}` {c}" for n, c in report.odd_jobs.items()
    )
    return (
        "## Hostile input, case by case\n\n"
        "`.venv/bin/python -m tests.reliability hostile` (in `make test`: "
        "`tests/contract/test_trigger_contract.py -k 'hostile or batch_mode'`, "
        "`tests/unit/test_hostile_requests.py`). "
        "Each case posted once to the trigger function served by functions-framework "
        "(fake-gcs-server, the Vertex AI emulator over gRPC); the field and message are the "
        "function's own ERROR log line. A refused request is acknowledged (200): it could "
        "never succeed, so it is not retried.\n\n"
        f"**{named} of {len(report.refused)} hostile retrain requests refused naming the "
        f"expected field; {hostile} hostile inputs in all left {report.hostile_jobs} jobs and "
        f"{report.hostile_runs} run records.** Odd but legal object names, one job each with "
        f"the name intact in `--data-uri`: {odd}.\n\n"
        "Retrain requests (the pipeline `churn`, its bucket in `allowed_buckets`):\n\n"
        f"{table(report.refused, 'case', 'field named')}\n\n"
        "Object names that would make an unclean data URI (ignored, with the reason logged):\n\n"
        f"{table(report.ignored, 'case', 'refused on')}\n\n"
        "Deliveries that could never succeed, answered in front of functions-framework:\n\n"
        f"{table(report.guarded, 'delivery', None)}\n"
    )
