"""Guards under a burst: 6 batches dropped into 2 pipelines capped at 1 concurrent job at
once (every marker twice, ticks every half second). What the Vertex emulator recorded —
each job's create and end time — shows whether two jobs of one pipeline ever overlapped."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from localcloud.storage import StorageServer
from tests.reliability.loop import Loop, config_header

CONFIG = config_header(max_concurrent_jobs=1) + "".join(
    f"""
[pipelines.{name}]
bucket = "{{landing}}"
prefix = "{name}/"
include = ["*.csv"]
trigger = "marker"

[pipelines.{name}.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"
"""
    for name in ("alpha", "beta")
)

PIPELINES = ("alpha", "beta")
BATCHES = 3  # per pipeline


@dataclass(frozen=True)
class Result:
    jobs: int
    distinct_runs: int
    run_records: int
    outcomes: dict[str, int]
    overlaps: list[str]  # "a job created before the previous one of its pipeline ended"
    most_at_once: dict[str, int]  # per pipeline, from the recorded create/end times
    slots_left: int
    open_left: int
    unhandled: list[str]
    never_acked: list[str]
    seconds_per_job: float


def run(gcs: StorageServer, tmp: Path, job_seconds: float = 1.0) -> Result:
    loop = Loop(gcs, tmp, CONFIG, job_seconds=job_seconds)
    try:
        for pipeline, batch, part in itertools.product(PIPELINES, range(BATCHES), range(2)):
            loop.send("trigger", loop.finalize(f"{pipeline}/b{batch}/part-{part}.csv"))
        loop.drain()
        for pipeline, batch in itertools.product(PIPELINES, range(BATCHES)):
            loop.send("trigger", loop.finalize(f"{pipeline}/b{batch}/_SUCCESS", size=0), 2)
        loop.drain()
        total = len(PIPELINES) * BATCHES
        loop.wait_for(lambda: len(loop.state_objects("done/")) >= total, "every job end handled")
        loop.drain()
        jobs = loop.jobs()
        overlaps, most = [], {}
        for pipeline in PIPELINES:
            mine = sorted(
                (j for j in jobs if j.labels["retrain-pipeline"] == pipeline),
                key=lambda j: j.create_time,
            )
            spans = [(j.create_time, j.end_time) for j in mine]
            most[pipeline] = max(
                (sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0
            )
            for earlier, later in itertools.pairwise(mine):
                if later.create_time < earlier.end_time:
                    overlaps.append(f"{later.name} created before {earlier.name} ended")
        runs = loop.runs()
        outcomes: dict[str, int] = {}
        for record in runs.values():
            outcomes[str(record.get("outcome"))] = outcomes.get(str(record.get("outcome")), 0) + 1
        durations = [(j.end_time - j.create_time).total_seconds() for j in jobs]
        return Result(
            jobs=len(jobs),
            distinct_runs=len({j.labels["retrain-run"] for j in jobs}),
            run_records=len(runs),
            outcomes=outcomes,
            overlaps=overlaps,
            most_at_once=most,
            slots_left=len(loop.state_objects("slots/")),
            open_left=len(loop.state_objects("open/")),
            unhandled=loop.unhandled(),
            never_acked=list(loop.failures),
            seconds_per_job=sum(durations) / len(durations) if durations else 0.0,
        )
    finally:
        loop.stop()
