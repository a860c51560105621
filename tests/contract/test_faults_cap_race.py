"""`max_concurrent_jobs = 1` holds under a burst: 6 batches dropped into 2 pipelines at
once (markers duplicated, ticks every half second) never run two jobs of one pipeline at a
time — the job create and end times the Vertex emulator records say so — and every batch
ends exactly once. Before the concurrency slots, two deliveries both counted 0 active jobs
and both submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcloud.storage import StorageServer
from tests.reliability import races

pytestmark = pytest.mark.slow  # real job processes, one at a time per pipeline


def test_six_batches_into_two_pipelines_capped_at_one_never_overlap(
    gcs: StorageServer, tmp_path: Path
):
    result = races.run(gcs, tmp_path)
    batches = len(races.PIPELINES) * races.BATCHES
    assert result.overlaps == []
    assert result.most_at_once == dict.fromkeys(races.PIPELINES, 1)
    assert result.jobs == result.distinct_runs == result.run_records == batches
    assert result.outcomes == {"succeeded": batches}
    assert result.slots_left == 0 and result.open_left == 0
    assert result.unhandled == [] and result.never_acked == []
