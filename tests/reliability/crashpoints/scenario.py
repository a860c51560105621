"""Kill -9 each function right after each step (injector.py), redeliver as Eventarc
does, and compare the end state with a crash-free run of the same batch.

One loop (tests/reliability/loop.py: both functions served by functions-framework, the
Vertex AI emulator running jobs, fake-gcs-server, the log sink, ticks, a webhook) serves
every case in turn, one batch folder per case. A case arms its point (the function it
kills is restarted with `RETRAIN_CRASH_AT`), drops a marker batch, waits for the process
to die, restarts it without the point on the same port, lets the deliveries that were
cut off be redelivered until acknowledged, waits for the batch to settle and takes an
id-free snapshot of what the batch left behind. Both functions run with short leases
(injector.LEASE_S) so that a dead delivery's work is taken over within seconds.

`run(...)` is used by the contract test and by `python -m tests.reliability crash`.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core.exceptions import NotFound

from localcloud.functions import FunctionServer
from localcloud.procs import port_is_open, wait_until
from localcloud.storage import StorageServer
from tests.reliability.crashpoints.injector import CRASH_AT, CRASH_MARK, POINTS, function_env
from tests.reliability.loop import (
    DEPLOYING_PIPELINE,
    PROJECT,
    REGION,
    TERMINAL,
    Loop,
    config_header,
)

LEASE_S = 5.0  # leases in the served functions (production: 120 s run claim, 45 s job end)
SETTLE_S = 60.0  # a case that has not settled by then is compared as it stands

CONFIG = (
    config_header(max_concurrent_jobs=2)
    + """
[pipelines.batches]
bucket = "{landing}"
prefix = "batches/"
include = ["*.csv"]
trigger = "marker"

[pipelines.batches.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"

[pipelines.batches.notify]
webhook_env = "RETRAIN_WEBHOOK_URL"
on = ["failed", "rejected"]

"""
    + DEPLOYING_PIPELINE
)

# Points where a crash still changes the end state, and why (the product's defects as
# found; the test expects them to fail, strictly, so a fix shows until its entry goes).
KNOWN = {
    "job_events.notification_sent": "a crash after the webhook took a notification and "
    "before its record says `sent` repeats it: the redelivery cannot tell a send that "
    "happened from one that did not (a claim alone, before, lost the notification of a "
    "crash one step earlier instead). Both sends carry the same `Idempotency-Key` header "
    "(and a Pub/Sub notification the same `notification_id` attribute), so a receiver of "
    "its own can drop the repeat; Slack and Chat webhooks ignore the header",
}


# Points these checks found broken and the product was fixed for.
FIXED = {
    "job_events.end_finished": "the job end's lease record was finished before its done "
    "marker was written: a crash between the two left a handled end that no delivery "
    'marked done (each redelivery saw "done" and stopped), so every tick reconciled the '
    "job again; the marker is now written first, and a crash between the two "
    "(`job_events.end_marked_done`) leaves a lease that the redelivery takes over",
    "trigger.run_claimed": "a takeover of a marker run whose claimant died before covering "
    "the batch never covered it (the manifest held the marker only, the parts stayed "
    "pending); a takeover of a marker or quiet run now covers the batch",
    "trigger.slot_taken": "a takeover did not find the slot the dead claimant took for the "
    "run and took a second one; it now looks the run's slot up first",
    "trigger.job_created": "a job adopted by its label was recorded without `data_manifest` "
    "and `champion_model_dir`; they are now read back from the job's args",
    "job_events.version_uploaded": "a takeover that found the run's model version lost the "
    "gate's figures; they are now recorded before the upload",
    "job_events.notification_claimed": "a notification claimed and not sent was never sent; "
    "its record now says `sending` until the send returned, and a lapsed one is sent by "
    "the next delivery",
}

# Trigger points run the non-deploying marker pipeline; job-events points the deploying one.
PIPELINE = {"trigger": "batches", "job-events": "churn"}
PARTS = 2


def pipeline_of(point: str) -> str:
    return PIPELINE[POINTS[point].function]


@dataclass
class Case:
    point: str | None  # None: the crash-free baseline
    pipeline: str
    crashed: bool = False  # the process died at the point
    settled: bool = False
    seconds: float = 0.0
    redeliveries: int = 0  # non-2xx answers to the batch's deliveries (ticks not counted)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    baselines: dict[str, Case] = field(default_factory=dict)  # by pipeline
    cases: list[Case] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)
    never_acked: list[str] = field(default_factory=list)

    def differences(self, case: Case) -> dict[str, tuple[Any, Any]]:
        """What differs from the baseline: key -> (baseline, after the crash)."""
        base = self.baselines[case.pipeline].state
        keys = sorted(set(base) | set(case.state))
        return {
            k: (base.get(k), case.state.get(k)) for k in keys if base.get(k) != case.state.get(k)
        }


class CrashLoop(Loop):
    """The loop, keeping each delivery's answer by event id (to count redeliveries)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.answers: list[tuple[str, str, int]] = []  # (target, ce-id, status)
        super().__init__(*args, **kwargs)

    def _post(self, target: str, headers: dict[str, str], body: Any) -> int:
        status = super()._post(target, headers, body)
        self.answers.append((target, headers.get("ce-id", ""), status))
        return status

    def server(self, target: str) -> FunctionServer:
        return self.trigger if target == "trigger" else self.job_events


def run(gcs: StorageServer, tmp: Path, model: Path, points: list[str] | None = None) -> Report:
    """Every point (or those given), each against the baseline of its pipeline."""
    wanted = list(POINTS) if points is None else points
    report = Report()
    loop = CrashLoop(gcs, tmp / "loop", CONFIG, model=model, job_seconds=0.2)
    marks = tmp / "marks"
    marks.mkdir(parents=True, exist_ok=True)
    try:
        for target in ("trigger", "job-events"):
            _serve(loop, target, None, None)  # short leases from the start
        batch = 0
        for pipeline in dict.fromkeys(pipeline_of(p) for p in wanted):
            # A first batch makes the world every later one meets (a champion to judge
            # against, a deployment to replace); the second is the baseline.
            _case(loop, pipeline, None, batch, marks)
            report.baselines[pipeline] = _case(loop, pipeline, None, batch + 1, marks)
            batch += 2
        for point in wanted:
            report.cases.append(_case(loop, pipeline_of(point), point, batch, marks))
            batch += 1
        loop.drain(300)
        report.unhandled = loop.unhandled()
        report.never_acked = list(loop.failures)
    finally:
        loop.stop()
    return report


def _serve(
    loop: CrashLoop, target: str, point: str | None, mark: Path | None, *, died: bool = False
) -> None:
    """(Re)start `target` on its port (its URL is what Eventarc posts to), with `point`
    armed or none: after a crash, what is left of the dead instance goes first; else the
    running one stops gracefully, finishing the deliveries it is serving."""
    server = loop.server(target)
    base = {k: v for k, v in server.env.items() if k not in (CRASH_AT, CRASH_MARK, "PYTHONPATH")}
    server.env = {**base, **function_env(point, mark, LEASE_S)}
    if died:
        server.restart()
        return
    server.stop()
    wait_until(lambda: not port_is_open(server.host, server.port),
               what=f"the release of port {server.port}", timeout=30)  # fmt: skip
    server.start()


def _case(loop: CrashLoop, pipeline: str, point: str | None, batch: int, marks: Path) -> Case:
    case = Case(point, pipeline)
    started = time.monotonic()
    folder = f"{pipeline}/b{batch}/"
    target = POINTS[point].function if point else None
    if target is not None:
        _serve(loop, target, point, marks / f"{point}.fired")
    before = _totals(loop, pipeline)
    first_answer = len(loop.answers)
    for part in range(PARTS):
        loop.send("trigger", _drop(loop, f"{folder}part-{part}.csv", b"x,y\n1,2\n"))
    loop.drain(120)
    loop.send("trigger", _drop(loop, f"{folder}_SUCCESS", b""))
    if target is not None:
        server = loop.server(target)
        deadline = time.monotonic() + SETTLE_S
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        case.crashed = not server.alive() and (marks / f"{point}.fired").exists()
        # The instance is gone; Eventarc's redeliveries reach the new one on the same URL.
        _serve(loop, target, None, None, died=True)
    deadline = time.monotonic() + SETTLE_S
    while not (settled := _settled(loop, pipeline, folder)) and time.monotonic() < deadline:
        time.sleep(0.25)
    case.settled = settled
    loop.drain(300)
    case.seconds = time.monotonic() - started
    answers = loop.answers[first_answer:]
    case.redeliveries = sum(
        1 for t, ce_id, status in answers
        if t == target and status >= 300 and not ce_id.startswith("tick-")
    )  # fmt: skip
    case.state = _snapshot(loop, pipeline, folder, before)
    return case


def _drop(loop: Loop, name: str, data: bytes) -> tuple[dict[str, str], Any]:
    """Write the object (so that the run's manifest pins it) and make its finalize event."""
    blob = loop.gcs.bucket(loop.landing).blob(name)
    blob.upload_from_string(data)
    return loop.finalize(name, size=len(data), generation=int(blob.generation or 1))


# observations ---------------------------------------------------------------------------
def _runs_of(loop: Loop, pipeline: str, folder: str) -> dict[str, dict[str, Any]]:
    uri = f"gs://{loop.landing}/{folder}"
    return {
        run_id: doc
        for run_id, doc in loop.runs().items()
        if doc.get("pipeline") == pipeline and doc.get("data_uri") == uri
    }


def _jobs_of(loop: Loop, runs: dict[str, dict[str, Any]]) -> list[Any]:
    return [j for j in loop.jobs() if j.labels.get("retrain-run") in runs]


def _settled(loop: Loop, pipeline: str, folder: str) -> bool:
    """The batch's run ended: its job ended and was handled (done), its outcome recorded,
    nothing of it left open or leased."""
    runs = _runs_of(loop, pipeline, folder)
    if not runs or any(not doc.get("outcome") for doc in runs.values()):
        return False
    jobs = _jobs_of(loop, runs)
    done = {n.rsplit("/", 1)[-1] for n in loop.state_objects(f"done/{pipeline}/")}
    return bool(jobs) and all(
        j.state.name in TERMINAL and j.name.rsplit("/", 1)[-1] in done for j in jobs
    )


def _totals(loop: CrashLoop, pipeline: str) -> dict[str, int]:
    return {
        "jobs": len(loop.jobs()),
        "versions": len(loop.versions("churn")),
        "deployments": loop.deployments(),
        "webhook messages": len(loop.webhook.texts()),
        "done": len(loop.state_objects(f"done/{pipeline}/")),
    }


def _snapshot(
    loop: CrashLoop, pipeline: str, folder: str, before: dict[str, int]
) -> dict[str, Any]:
    """What the batch left behind, with its own ids replaced by placeholders, so that two
    batches' snapshots compare equal when they ended the same way."""
    runs = _runs_of(loop, pipeline, folder)
    jobs = _jobs_of(loop, runs)
    names = _Names(loop, folder, runs, jobs)
    after = _totals(loop, pipeline)
    state: dict[str, Any] = {
        f"{k} added": after[k] - before[k] for k in after if k != "webhook messages"
    }
    state["run records"] = [names.record(doc) for doc in runs.values()]
    state["job states"] = sorted(j.state.name for j in jobs)
    state["manifests"] = [names.manifest(doc.get("data_manifest")) for doc in runs.values()]
    texts = loop.webhook.texts()[before["webhook messages"] :]
    state["notifications (run, kind)"] = sorted(
        Counter((names.text(run), kind) for _p, run, kind in loop.notices() if run in runs).items()
    )
    state["notification texts"] = sorted(names.text(_no_duration(t)) for t in texts)
    state.update(_leftovers(loop, pipeline, folder, runs, jobs, names))
    if pipeline == "churn":
        state.update(_serving(loop, names, runs))
    return state


def _leftovers(
    loop: CrashLoop,
    pipeline: str,
    folder: str,
    runs: dict[str, dict[str, Any]],
    jobs: list[Any],
    names: _Names,
) -> dict[str, list[str]]:
    """What of this batch is still pending, open, held or leased: the batch's own, so that
    one case's leftovers do not show again in the cases after it."""
    job_ids = {j.name.rsplit("/", 1)[-1] for j in jobs}

    def docs(prefix: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for key in loop.state_objects(prefix):
            try:
                found.append((key, loop.state_doc(key)))
            except NotFound:  # removed between the listing and the read
                continue
        return found

    return {
        "pending/ left": [names.text(k) for k in loop.state_objects(f"pending/{pipeline}/{folder}")],
        "open/ left": [names.text(k) for k in loop.state_objects(f"open/{pipeline}/")
                       if k.rsplit("/", 1)[-1] in runs],
        "slots held": [names.text(k) for k, doc in docs(f"slots/{pipeline}/")
                       if doc.get("run_id") in runs],
        "canary/ left": [names.text(k) for k, doc in docs(f"canary/{pipeline}/")
                         if doc.get("run_id") in runs],
        "job ends not done": [names.text(k) for k, doc in docs(f"handled/{pipeline}/")
                              if k.rsplit("/", 1)[-1].removesuffix(".json") in job_ids
                              and doc.get("step") != "done"],
    }  # fmt: skip


def _serving(loop: CrashLoop, names: _Names, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The endpoint's deployments and traffic, and which version holds the champion alias."""
    versions = loop.versions("churn")
    ours = {v.version_id for v in versions if v.labels.get("retrain-run") in runs}
    parent = f"projects/{PROJECT}/locations/{REGION}"
    endpoints = list(loop.endpoints.list_endpoints(parent=parent))
    serving = sorted(
        ("this run's version" if d.model_version_id in ours else "another version",
         e.traffic_split.get(d.id, 0))
        for e in endpoints
        for d in e.deployed_models
    )  # fmt: skip
    champions = [v for v in versions if "champion" in v.version_aliases]
    return {
        "endpoints": len(endpoints),
        "deployed (version, traffic %)": serving,
        "champion": ["this run's version" if v.version_id in ours else "another version"
                     for v in champions],
        "versions of this run": len(ours),
    }  # fmt: skip


class _Names:
    """Replaces a batch's own names (run ids, job ids, bucket, folder, versions) by
    placeholders."""

    def __init__(self, loop: CrashLoop, folder: str, runs: dict[str, Any], jobs: list[Any]):
        self._loop = loop
        self._pairs = [(run_id, "<run>") for run_id in runs]
        self._pairs += [(j.name.rsplit("/", 1)[-1], "<job>") for j in jobs]
        self._pairs += [(folder, "<batch>/"), (loop.landing, "<landing>"),
                        (loop.artifacts, "<artifacts>"), (loop.state, "<state>")]  # fmt: skip

    def text(self, value: str) -> str:
        for old, new in self._pairs:
            value = value.replace(old, new)
        value = re.sub(r"@\d+", "@<version>", value)
        value = re.sub(r"/versions/\d+", "/versions/<version>", value)
        return re.sub(r"/[0-9a-f]{16}/", "/<another run>/", value)  # e.g. the champion's

    def record(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A run record without what differs between any two runs (times, write ids)."""
        dropped = {"write_id", "claimed_at", "created_at", "submitted_at", "events"}
        kept = {k: v for k, v in doc.items() if k not in dropped}
        return json.loads(self.text(json.dumps(kept, sort_keys=True)))

    def manifest(self, uri: Any) -> list[str]:
        if not uri:
            return []
        bucket, _, name = str(uri).removeprefix("gs://").partition("/")
        text = self._loop.gcs.bucket(bucket).blob(name).download_as_text()
        lines = []
        for line in text.splitlines():
            entry = json.loads(line)
            lines.append(self.text(f"{entry['uri']} size={entry.get('size')}"))
        return lines


def _no_duration(text: str) -> str:
    """A notification's text without the job's duration (it differs from run to run)."""
    return "\n".join(line for line in text.splitlines() if "duration" not in line.lower())


def markdown(report: Report) -> str:
    """The report as the body of docs/reliability.md's "Crash points" section."""
    rows = []
    for case in report.cases:
        assert case.point is not None
        point = POINTS[case.point]
        diff = report.differences(case)
        same = "yes" if case.crashed and case.settled and not diff else "**no**"
        if not case.crashed:
            same += " (the point was never reached)"
        elif not case.settled:
            same += f" (not settled within {SETTLE_S:.0f} s)"
        rows.append(
            f"| `{case.point}` | {point.step} | {same} | {case.redeliveries} | "
            f"{case.seconds:.0f} s | {_cell(_summary(diff)) or '—'} |"
        )
    known = "\n".join(
        f"- `{point}`: {why}." for point, why in KNOWN.items()
        if any(c.point == point for c in report.cases)
    )  # fmt: skip
    alike = sum(1 for c in report.cases if c.crashed and c.settled and not report.differences(c))
    return (
        "`.venv/bin/python -m pytest tests/contract/test_crash_points.py` (or `.venv/bin/python "
        "-m tests.reliability crash`). Each function is killed with `kill -9` (its whole "
        "process group: a lost instance) right after one step of its protocol "
        "(tests/reliability/crashpoints/injector.py wraps the method whose return marks the "
        "step, in the function process only), restarted on the same URL, and every delivery "
        "the crash cut off is redelivered until acknowledged, as Eventarc does; ticks go on "
        "throughout. Each point is one marker batch (two parts and the marker) compared with "
        "a crash-free batch of the same pipeline in the same world: trigger points on a "
        "pipeline that does not deploy (`max_concurrent_jobs = 2`), job-events points on one "
        "that deploys (a champion in place). Compared: jobs and their states, the run record "
        "(all but times and write ids), the input manifest, model versions, deployments "
        "(counted where Vertex makes them), the endpoint's traffic, the champion alias, "
        "webhook messages (text and count per run and kind), and what is left pending, open, "
        f"held (slots), leased or without its done marker. Leases are shortened to "
        f"{LEASE_S:.0f} s in the served functions (production: 120 s run claim, 45 s job end, "
        "set as module constants with no setting) so that a takeover comes within seconds; "
        "*redeliveries* counts the batch's deliveries answered non-2xx or cut off.\n\n"
        "| crash point | the process dies right after | end state same as baseline | "
        "redeliveries | case time | what differed |\n|---|---|---|---:|---:|---|\n"
        + "\n".join(rows)
        + f"\n\n**{alike} of {len(report.cases)} points end as without the crash**; "
        f"unhandled exceptions: {len(report.unhandled)}, deliveries never acknowledged: "
        f"{len(report.never_acked)}.\n\nWhy the points marked no differ (product defects, "
        "known to the test):\n\n"
        + known
        + "\n\nFound and fixed:\n\n"
        + "\n".join(f"- `{point}`: {why}." for point, why in FIXED.items())
        + "\n"
    )


def _summary(diff: dict[str, tuple[Any, Any]]) -> str:
    """What differed, in a line: run record fields one by one, lists as counts."""
    parts = []
    for key, (base, after) in diff.items():
        if key == "run records" and len(base or []) == len(after or []) == 1:
            fields = sorted(set(base[0]) | set(after[0]))
            changed = [f for f in fields if base[0].get(f) != after[0].get(f)]
            parts += [f"run record `{f}`: {base[0].get(f)!r} → {after[0].get(f)!r}"
                      for f in changed]  # fmt: skip
        elif key == "notification texts":
            count = f"webhook messages: {len(base or [])} → {len(after or [])}"
            if len(base or []) != len(after or []):
                parts.append(count)
                continue
            before_lines = {ln for text in base or [] for ln in text.splitlines()}
            after_lines = {ln for text in after or [] for ln in text.splitlines()}
            changed = _changed_lines(before_lines, after_lines)
            parts.append(count + "".join(f", line {a!r} → {b!r}" for a, b in changed))
        else:
            parts.append(f"{key}: {base!r} → {after!r}")
    return "; ".join(parts)


def _changed_lines(before: set[str], after: set[str]) -> list[tuple[str, str]]:
    """Lines of a message that changed, paired by their label (`metric: ...`)."""
    gone, came = sorted(before - after), sorted(after - before)
    pairs = []
    for line in gone:
        label = line.split(":", 1)[0]
        match = next((c for c in came if c.split(":", 1)[0] == label), "(none)")
        pairs.append((line, match))
    return pairs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
