"""`max_concurrent_jobs = 1` holds under a burst: 6 batches dropped into 2 pipelines at
once (markers duplicated, ticks every half second) never run two jobs of one pipeline at a
time — the job create and end times the Vertex emulator records say so — and every batch
ends exactly once. Before the concurrency slots, two deliveries both counted 0 active jobs
and both submitted."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.storage import StorageServer
from tests.reliability.loop import Loop

pytestmark = pytest.mark.slow  # real job processes, one at a time per pipeline

CONFIG = """
[defaults]
project = "{project}"
region = "{region}"
state_uri = "gs://{state}/state"
output_uri = "gs://{artifacts}/runs"

[guards]
allowed_buckets = ["{landing}"]
max_concurrent_jobs = 1

[pipelines.alpha]
bucket = "{landing}"
prefix = "alpha/"
include = ["*.csv"]
trigger = "marker"

[pipelines.alpha.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"

[pipelines.beta]
bucket = "{landing}"
prefix = "beta/"
include = ["*.csv"]
trigger = "marker"

[pipelines.beta.training]
image_uri = "local/ok:latest"
machine_type = "n1-standard-4"
"""

PIPELINES = ("alpha", "beta")
BATCHES = 3  # per pipeline


@pytest.fixture
def loop(gcs: StorageServer, tmp_path: Path) -> Iterator[Loop]:
    world = Loop(gcs, tmp_path, CONFIG, job_seconds=1.0)
    yield world
    world.stop()


def test_six_batches_into_two_pipelines_capped_at_one_never_overlap(loop: Loop):
    for pipeline in PIPELINES:
        for batch in range(BATCHES):
            for part in range(2):
                loop.send("trigger", loop.finalize(f"{pipeline}/b{batch}/part-{part}.csv"))
    loop.drain()
    for pipeline in PIPELINES:  # all markers at once, each delivered twice
        for batch in range(BATCHES):
            loop.send("trigger", loop.finalize(f"{pipeline}/b{batch}/_SUCCESS", size=0), 2)
    loop.drain()

    def all_handled() -> bool:
        return len(loop.state_objects("done/")) == len(PIPELINES) * BATCHES

    loop.wait_for(all_handled, "every batch's job ran and its end was handled")
    loop.drain()

    jobs = loop.jobs()
    assert len(jobs) == len(PIPELINES) * BATCHES
    assert len({j.labels["retrain-run"] for j in jobs}) == len(jobs)
    for pipeline in PIPELINES:
        mine = sorted(
            (j for j in jobs if j.labels["retrain-pipeline"] == pipeline),
            key=lambda j: j.create_time,
        )
        assert len(mine) == BATCHES
        for earlier, later in itertools.pairwise(mine):
            assert later.create_time >= earlier.end_time, (
                f"{pipeline}: {later.name} was created before {earlier.name} ended"
            )
    runs = loop.runs()
    assert len(runs) == len(jobs)
    assert sorted(r["outcome"] for r in runs.values()) == ["succeeded"] * len(jobs)
    assert loop.state_objects("slots/") == [] and loop.state_objects("open/") == []
    assert loop.unhandled() == [] and loop.failures == []
