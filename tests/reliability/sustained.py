"""Sustained faults: hundreds of distinct events through the whole loop while a seeded
share of the functions' calls to Cloud Storage, Vertex AI (gRPC) and the webhook fail
(503, 429, dropped and stalled connections, failures after the upstream applied the
call). Every event is delivered twice, and every non-2xx answer is redelivered, as
Eventarc does. At the end the exact numbers of jobs, model versions, deployments and
notifications are counted against what the events call for.

`run(...)` is used by the contract test (short form) and by `make reliability` (long form).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcloud.storage import StorageServer
from tests.reliability.loop import DEPLOYING_PIPELINE, Loop, config_header

CONFIG = (
    config_header(max_concurrent_jobs=32)
    + """
[pipelines.events]
bucket = "{landing}"
prefix = "events/"
include = ["*.csv"]
trigger = "each"

[pipelines.events.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"

[pipelines.events.training.hyperparameters]
lr = 0.01

[pipelines.audit]
bucket = "{landing}"
prefix = "audit/"
include = ["*.csv"]
trigger = "each"

[pipelines.audit.training]
image_uri = "local/fail:latest"
machine_type = "n1-standard-4"

[pipelines.audit.notify]
webhook_env = "RETRAIN_WEBHOOK_URL"
on = ["failed", "request_rejected"]

[pipelines.clicks]
bucket = "{landing}"
prefix = "clicks/"
include = ["*.csv"]
trigger = "quiet"
quiet_seconds = 2

[pipelines.clicks.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"

"""
    + DEPLOYING_PIPELINE
)

_TEXT = re.compile(
    r"^\[retrain\] (?P<pipeline>\S+): (?:run (?P<run>\S+) (?P<title>.+)"
    r"|retrain request (?P<message>\S+) rejected)$"
)
_KINDS = {"deployed": "deployed", "training failed": "failed"}


@dataclass(frozen=True)
class Size:
    each: int  # objects into the `each` pipeline: one job each
    failing: int  # objects into a pipeline whose jobs fail: one `failed` notification each
    quiet: int  # objects into one quiet batch: one job
    requests: int  # valid retrain requests: one job each
    invalid: int  # invalid retrain requests: one `request_rejected` notification each
    batches: int  # marker batches of a deploying pipeline, one after the other

    @property
    def events(self) -> int:
        """Distinct data events and requests (each delivered twice)."""
        return (
            self.each + self.failing + self.quiet + self.requests + self.invalid
        ) + self.batches * 3

    def jobs(self, quiet_runs: int = 1) -> int:
        return self.each + self.failing + quiet_runs + self.requests + self.batches


SHORT = Size(each=8, failing=3, quiet=8, requests=3, invalid=2, batches=1)
LONG = Size(each=60, failing=12, quiet=60, requests=12, invalid=8, batches=2)


@dataclass
class Report:
    size: Size
    rate: float
    seconds: float = 0.0
    jobs: int = 0
    distinct_runs: int = 0
    run_records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: int = 0
    deployments: int = 0
    notices: Counter[str] = field(default_factory=Counter)  # distinct (run, kind), by kind
    notices_received: int = 0  # webhook messages received, duplicates included
    notice_keys: int = 0  # distinct Idempotency-Key headers among them
    deliveries: Counter[str] = field(default_factory=Counter)
    redeliveries: Counter[str] = field(default_factory=Counter)
    calls: dict[str, int] = field(default_factory=dict)  # calls each proxy saw
    faults: dict[str, Counter[str]] = field(default_factory=dict)
    unhandled: list[str] = field(default_factory=list)
    never_acked: list[str] = field(default_factory=list)
    # A quiet batch is flushed once no object arrived for quiet_seconds: an object whose
    # delivery kept failing for longer lands in the next batch. What must hold is that every
    # object is in exactly one run.
    quiet_runs: int = 0
    quiet_objects: Counter[str] = field(default_factory=Counter)  # object -> runs covering it

    def expected(self) -> dict[str, Any]:
        s = self.size
        quiet = self.quiet_runs
        return {
            "jobs": s.jobs(quiet),
            "outcomes": Counter(
                {
                    "succeeded": s.each + quiet + s.requests,
                    "failed": s.failing,
                    "deployed": s.batches,
                }
            ),
            "versions": s.batches,
            "deployments": s.batches,
            "notices": Counter(
                {"deployed": s.batches, "failed": s.failing, "request_rejected": s.invalid}
            ),
        }

    def actual(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "outcomes": self.outcomes,
            "versions": self.versions,
            "deployments": self.deployments,
            "notices": self.notices,
        }

    def fault_rate(self, name: str) -> float:
        seen = self.calls.get(name, 0)
        return sum(self.faults.get(name, Counter()).values()) / seen if seen else 0.0


def train_model(root: Path) -> Path:
    """A real model directory written by the trainer (as the contract fixtures make it)."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "churn.csv"
    rows = ["x,y,churned"] + [
        f"{(i * 37 % 100) / 100},{(i * 61 % 100) / 100},{int((i * 37 % 100) + (i * 61 % 100) > 100)}"
        for i in range(200)
    ]
    data.write_text("\n".join(rows) + "\n")
    model = root / "model"
    subprocess.run(
        [sys.executable, "-m", "trainer.task", f"--data-uri={data}", "--label=churned",
         "--epochs=2", f"--model-dir={model}"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return model


def run(
    gcs: StorageServer, tmp: Path, model: Path, size: Size, rate: float, seed: int = 7
) -> Report:
    report = Report(size, rate)
    started = time.monotonic()
    loop = Loop(gcs, tmp, CONFIG, model=model, job_seconds=0.1, chaos=rate, seed=seed,
                duplicates=2)  # fmt: skip
    try:
        _drive(loop, size)
        report.seconds = time.monotonic() - started
        _observe(loop, report)
    finally:
        loop.stop()
    return report


def _drive(loop: Loop, size: Size) -> None:
    twice = 2
    for i in range(size.each):
        loop.send("trigger", loop.finalize(f"events/day-{i:05d}.csv"), twice)
    for i in range(size.failing):
        loop.send("trigger", loop.finalize(f"audit/day-{i:05d}.csv"), twice)
    for i in range(size.quiet):
        loop.send("trigger", loop.finalize(f"clicks/part-{i:05d}.csv"), twice)
    for i in range(size.requests):
        request = loop.message({"pipeline": "events", "reason": "sustained"}, f"req-{i}")
        loop.send("trigger", request, twice)
    for i in range(size.invalid):
        bad = {"pipeline": "audit", "hyperparameters": {"not_declared": 1}}
        loop.send("trigger", loop.message(bad, f"bad-{i}"), twice)
    for batch in range(size.batches):
        # One batch after the other: each run's model is judged and deployed in turn.
        for part in range(2):
            loop.send("trigger", loop.finalize(f"churn/b{batch}/part-{part}.csv"), twice)
        loop.drain(900)
        loop.send("trigger", loop.finalize(f"churn/b{batch}/_SUCCESS", size=0), twice)
        loop.wait_for(
            lambda batch=batch: _deployed(loop) > batch, f"churn batch {batch} deployed", 600
        )
    loop.drain(900)

    def settled() -> bool:
        jobs = loop.jobs()
        return (
            not loop.state_objects("pending/")
            and not loop.state_objects("open/")
            and len(jobs) >= size.jobs()
            and len(loop.state_objects("done/")) == len(jobs)
        )

    loop.wait_for(settled, "every batch flushed and every job end handled", 600)
    loop.drain(900)


def _deployed(loop: Loop) -> int:
    return len({(run, kind) for _p, run, kind in _notices(loop) if kind == "deployed"})


def _notices(loop: Loop) -> list[tuple[str, str, str]]:
    found = []
    for text in loop.webhook.texts():
        match = _TEXT.match(text.splitlines()[0])
        if match is None:
            continue
        if match["message"]:
            found.append((match["pipeline"], match["message"], "request_rejected"))
        else:
            found.append((match["pipeline"], match["run"], _KINDS.get(match["title"], "?")))
    return found


def _observe(loop: Loop, report: Report) -> None:
    jobs = loop.jobs()
    report.jobs = len(jobs)
    report.distinct_runs = len({j.labels.get("retrain-run") for j in jobs})
    runs = loop.runs()
    report.run_records = len(runs)
    report.outcomes = Counter(str(r.get("outcome")) for r in runs.values())
    report.versions = len(loop.versions("churn"))
    report.deployments = loop.deployments()
    notices = _notices(loop)
    report.notices_received = len(notices)
    report.notice_keys = len(set(loop.webhook.idempotency_keys()))
    report.notices = Counter(kind for _p, _r, kind in set(notices))
    report.deliveries = Counter(loop.attempts)
    report.redeliveries = Counter(loop.refused)
    report.calls = {
        "Cloud Storage": loop.chaos["gcs"].seen,
        "Vertex AI (gRPC)": loop.chaos["vertex"].seen,
        "webhook": loop.chaos["webhook"].seen,
    }
    report.faults = {
        "Cloud Storage": Counter(loop.chaos["gcs"].injected),
        "Vertex AI (gRPC)": Counter(loop.chaos["vertex"].injected),
        "webhook": Counter(loop.chaos["webhook"].injected),
    }
    report.unhandled = loop.unhandled()
    report.never_acked = list(loop.failures)
    quiet = [r for r in runs.values() if r.get("pipeline") == "clicks"]
    report.quiet_runs = len(quiet)
    report.quiet_objects = Counter(o for r in quiet for o in r.get("objects") or ())


def markdown(report: Report) -> str:
    """The report as a section of docs/reliability.md."""
    s = report.size
    expected, actual = report.expected(), report.actual()
    rows = [
        ("jobs", expected["jobs"], actual["jobs"]),
        ("model versions", expected["versions"], actual["versions"]),
        ("deployments", expected["deployments"], actual["deployments"]),
    ]
    for kind in sorted(set(expected["outcomes"]) | set(actual["outcomes"])):
        rows.append((f"runs ending `{kind}`", expected["outcomes"][kind], actual["outcomes"][kind]))
    for kind in sorted(set(expected["notices"]) | set(actual["notices"])):
        rows.append((f"`{kind}` notifications", expected["notices"][kind], actual["notices"][kind]))
    table = "\n".join(f"| {name} | {want} | {got} |" for name, want, got in rows)
    fault_rows = "\n".join(
        f"| {name} | {report.calls[name]} | {sum(report.faults[name].values())} "
        f"({report.fault_rate(name):.0%}) | "
        + ", ".join(f"{k} {v}" for k, v in sorted(report.faults[name].items()))
        + " |"
        for name in report.calls
    )
    lost = sum(max(0, expected["notices"][k] - actual["notices"][k]) for k in expected["notices"])
    lost += max(0, expected["jobs"] - actual["jobs"])
    lost += s.quiet - len(report.quiet_objects)
    duplicated = max(0, actual["jobs"] - expected["jobs"]) + max(
        0, actual["deployments"] - expected["deployments"]
    )
    duplicated += sum(n - 1 for n in report.quiet_objects.values() if n > 1)
    return (
        f"{s.events} distinct data events and requests ({s.each} `each` objects, {s.failing} "
        f"objects whose jobs fail, {s.quiet} objects of one `quiet` batch, {s.requests} valid "
        f"and {s.invalid} invalid retrain requests, {s.batches} marker batches of a deploying "
        f"pipeline), every one delivered twice, plus the job ends the log sink routes (each "
        f"twice) and a tick to both functions every half second; {report.seconds:.0f} s. "
        f"The quiet batch's {s.quiet} objects went into {report.quiet_runs} run(s) "
        f"({len(report.quiet_objects)} objects covered, "
        f"{sum(1 for n in report.quiet_objects.values() if n > 1)} covered twice): an object "
        "whose delivery kept failing past the quiet period lands in the next batch.\n\n"
        "| measure | expected | counted |\n|---|---:|---:|\n"
        f"{table}\n\n"
        "Faults injected into the functions' own calls (seeded):\n\n"
        "| service | calls | faults (rate) | by kind |\n|---|---:|---:|---|\n"
        f"{fault_rows}\n\n"
        f"Deliveries: trigger {report.deliveries['trigger']} "
        f"({report.redeliveries['trigger']} answered non-2xx and redelivered), job-events "
        f"{report.deliveries['job-events']} ({report.redeliveries['job-events']} redelivered); "
        f"never acknowledged: {len(report.never_acked)}. Webhook messages received: "
        f"{report.notices_received} for {sum(actual['notices'].values())} distinct "
        "notifications (a message the webhook took but answered 503 is sent again), carrying "
        f"{report.notice_keys} distinct `Idempotency-Key` headers: a receiver that drops a "
        "key it has seen gets each notification once (Slack and Chat ignore the header).\n\n"
        f"**{lost} lost, {duplicated} duplicated, {len(report.unhandled)} unhandled.**\n"
    )
