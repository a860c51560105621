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


def _new_logs(cloud: Cloud, seen: int) -> tuple[list[dict[str, Any]], int]:
    records = cloud.logs()
    return records[seen:], len(records)


def requests_refused(cloud: Cloud) -> list[Row]:
    rows, seen = [], len(cloud.logs())
    for n, (name, text, field, phrase) in enumerate(hostile_requests.CASES):
        delivery = cloud.message(hostile_requests.payload(text, cloud.landing), f"hostile-{n}")
        status = cloud.post(*delivery)
        records, seen = _new_logs(cloud, seen)
        refusal = next((r for r in records if r.get("severity") == "ERROR"), {})
        logged = str(refusal.get("field", ""))
        message = str(refusal.get("message", ""))
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
    rows, seen = [], len(cloud.logs())
    for n, (case, name, phrase) in enumerate(BAD_NAMES):
        delivery = cloud.finalize(name, size=0 if "_SUCCESS" in name else 9)
        status = cloud.post(*_structured(delivery, f"bad-name-{n}"))
        records, seen = _new_logs(cloud, seen)
        ignored = next((r for r in records if r.get("message") == "object ignored"), {})
        reason = str(ignored.get("reason", ""))
        rows.append(Row(case, status, "object name", reason, status == 200 and phrase in reason))
    return rows


def guard_answers(cloud: Cloud) -> list[Row]:
    """Deliveries that would fail inside functions-framework: a 4xx, never a 5xx."""
    headers, body = cloud.message({"pipeline": "churn"}, "raw-1")
    structured = {"specversion": "1.0", "id": "raw-1", "source": headers["ce-source"],
                  "type": headers["ce-type"], "data": body}  # fmt: skip
    deep = "[" * 100_000 + "]" * 100_000
    structured_type = {"content-type": "application/cloudevents+json"}
    cases: list[tuple[str, dict[str, str], str | bytes, int]] = [
        ("batch-mode CloudEvents", {"content-type": "application/cloudevents-batch+json"},
         json.dumps([structured]), 415),
        ("JSON nested 100,000 deep", structured_type, f'{{"data": {deep}}}', 400),
        ("an integer of 5,000 digits", headers,
         '{"message": {"messageId": ' + "9" * 5000 + "}}", 400),
        ("bytes that are not UTF-8", structured_type, b"\xff\xfe{}", 400),
        ("a body of 40 MiB", structured_type, b" " * (40 << 20), 413),
    ]  # fmt: skip
    rows = []
    for case, case_headers, raw, expected in cases:
        response = requests.post(cloud.function.url, headers=case_headers, data=raw, timeout=60)
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
    def table(rows: list[Row], field_header: str) -> str:
        lines = [f"| case | answer | {field_header} | message | as required |",
                 "|---|---:|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r.case} | {r.status} | `{r.field}` | {_cell(r.message)} | "
            f"{'yes' if r.ok else '**no**'} |"
            for r in rows
        ]
        return "\n".join(lines)

    def guard_table(rows: list[Row]) -> str:
        lines = ["| delivery | answer | error | as required |", "|---|---:|---|---|"]
        lines += [f"| {r.case} | {r.status} | {_cell(r.message)} | "
                  f"{'yes' if r.ok else '**no**'} |" for r in rows]  # fmt: skip
        return "\n".join(lines)

    hostile = len(report.refused) + len(report.ignored) + len(report.guarded)
    named = sum(r.ok for r in report.refused)
    odd = ", ".join(
        f"`{json.dumps(n, ensure_ascii=False)}` {c}" for n, c in report.odd_jobs.items()
    )
    return (
        "## Hostile input, case by case\n\n"
        "`.venv/bin/python -m tests.reliability hostile` (in `make test`: "
        "`tests/contract/test_trigger_contract.py -k hostile`, `tests/unit/test_hostile_requests.py`). "
        "Each case posted once to the trigger function served by functions-framework "
        "(fake-gcs-server, the Vertex AI emulator over gRPC); the field and message are the "
        "function's own ERROR log line. A refused request is acknowledged (200): it could "
        "never succeed, so it is not retried.\n\n"
        f"**{named} of {len(report.refused)} hostile retrain requests refused naming the "
        f"expected field; {hostile} hostile inputs in all left {report.hostile_jobs} jobs and "
        f"{report.hostile_runs} run records.** Odd but legal object names, one job each with "
        f"the name intact in `--data-uri`: {odd}.\n\n"
        "Retrain requests (the pipeline `churn`, its bucket in `allowed_buckets`):\n\n"
        f"{table(report.refused, 'field named')}\n\n"
        "Object names that would make an unclean data URI (ignored, with the reason logged):\n\n"
        f"{table(report.ignored, 'refused on')}\n\n"
        "Deliveries that could never succeed, answered in front of functions-framework:\n\n"
        f"{guard_table(report.guarded)}\n"
    )
