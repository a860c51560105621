"""A quiet batch is one run however long its flush takes: ticks that arrive while a tick
is still removing thousands of pending records (slowed here by holding one of its deletes
in the fault proxy) see the claimed batch and plan no second run from what is left."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from localcloud.storage import StorageServer
from tests.contract.conftest import Cloud
from tests.contract.faults import Rule

BATCH = 2000


@pytest.fixture
def quiet_world(gcs: StorageServer, tmp_path: Path) -> Iterator[Cloud]:
    # The race is in the state on GCS; one Vertex transport is enough.
    world = Cloud(gcs, tmp_path, quiet_seconds=2)
    yield world
    world.stop()


def _deletes_pending(method: str, path: str, _body: bytes) -> bool:
    return method == "DELETE" and "pending" in path


def _start_flush(cloud: Cloud, pool: ThreadPoolExecutor, held_delete: Rule) -> Future[int]:
    """Tick until one tick starts flushing (its first delete of a pending record is held);
    earlier ticks find the batch not quiet yet."""
    deadline = time.monotonic() + 120
    ticks = 0
    tick: Future[int] | None = None
    while held_delete.hits == 0:
        assert time.monotonic() < deadline, "no tick started the flush"
        if tick is None or tick.done():
            if tick is not None:
                assert tick.result() == 200
            ticks += 1
            tick = pool.submit(cloud.post, *cloud.tick(f"tick-{ticks}"))
        time.sleep(0.05)
    assert tick is not None
    return tick


def test_ticks_overlapping_a_slow_flush_of_2000_objects_give_one_job(quiet_world: Cloud):
    cloud = quiet_world
    burst = [cloud.finalize(f"clicks/2026-12-01/part-{i:04d}.csv") for i in range(BATCH)]
    assert all(status < 300 for status in cloud.deliver_concurrently(burst))
    assert len(cloud.state_objects("pending/clicks/")) == BATCH

    release = threading.Event()
    held = cloud.gcs_faults.fail(_deletes_pending, 0, hold=release)  # 0: held, not failed
    with ThreadPoolExecutor(1) as pool:
        flushing = _start_flush(cloud, pool, held)
        # The other delete workers go on: the pending set shrinks under the later ticks.
        deadline = time.monotonic() + 60
        while len(cloud.state_objects("pending/clicks/")) > BATCH // 2:
            assert time.monotonic() < deadline, "the flush made no progress"
            time.sleep(0.1)
        left = len(cloud.state_objects("pending/clicks/"))
        overlapping = cloud.deliver_concurrently(
            [cloud.tick(f"overlapping-{i}") for i in range(4)], workers=4
        )
        assert overlapping == [200] * 4
        assert cloud.jobs() == []  # the flushing tick has not submitted yet
        release.set()
        assert flushing.result(timeout=120) == 200
    assert cloud.post(*cloud.tick("after-the-flush")) == 200

    (job,) = cloud.jobs()
    record = cloud.run_record("clicks")
    assert record["job_name"] == job.name and len(record["objects"]) == BATCH
    assert 0 < left < BATCH  # the later ticks really listed a partial pending set
    assert cloud.state_objects("pending/clicks/") == []
    flushed = [
        r
        for r in cloud.logs()
        if r["message"] == "quiet batch is being flushed by another delivery"
    ]
    assert len(flushed) == 4


def test_the_next_quiet_batch_gets_its_own_run(quiet_world: Cloud):
    cloud = quiet_world
    for batch in range(2):
        names = [f"clicks/b{batch}/part-{i}.csv" for i in range(3)]
        assert all(s < 300 for s in cloud.deliver_concurrently([cloud.finalize(n) for n in names]))
        deadline = time.monotonic() + 60
        while len(cloud.jobs()) < batch + 1:
            assert time.monotonic() < deadline, f"batch {batch} was never flushed"
            assert cloud.post(*cloud.tick(f"b{batch}-{time.monotonic()}")) == 200
            time.sleep(0.2)
    assert cloud.post(*cloud.tick("late")) == 200
    jobs = cloud.jobs()
    assert len(jobs) == 2
    assert len({j.labels["retrain-run"] for j in jobs}) == 2
    assert cloud.state_objects("pending/clicks/") == []
