"""Guards hold under races: concurrency slots and the cooldown window are claimed with
preconditions, the job-events function frees a run's slot when its job ends, and a
crashed delivery's lease on a job end runs out within a minute."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from retrain.errors import TransientError
from retrain.events import JobEnded, RetrainRequested, Tick
from retrain.heartbeat import Heartbeat
from retrain.jobevents import LEASE
from retrain.slots import Slots
from retrain.trigger import CLAIM_LEASE, FULL_MEMO
from tests.fakes import SAMPLE_CONFIG
from tests.unit import test_jobevents
from tests.unit.test_trigger import World

CAPPED_AT_1 = SAMPLE_CONFIG.replace("max_concurrent_jobs = 2", "max_concurrent_jobs = 1")


def _deliver(world: World, event: object) -> None:
    for _ in range(50):
        try:
            world.trigger.handle(event)  # type: ignore[arg-type]
            return
        except TransientError:
            continue
    raise AssertionError("never acknowledged")


def _active(world: World, pipeline: str) -> list[str]:
    return [
        name
        for name, job in world.training.jobs.items()
        if job.labels["retrain-pipeline"] == pipeline and not job.terminal
    ]


def _end_and_release(world: World, name: str, pipeline: str = "churn") -> None:
    """The job ends and the job-events function frees its run's slot, as it does."""
    world.training.set_state(name, "JOB_STATE_SUCCEEDED")
    run_id = world.training.jobs[name].labels["retrain-run"]
    record = world.store.doc(f"runs/{pipeline}/{run_id}.json")
    assert Slots(world.store).release(pipeline, record["slot"], run_id, world.now)


def test_a_burst_of_requests_never_runs_two_jobs_of_a_pipeline_capped_at_1():
    world = World(CAPPED_AT_1)
    requests = [RetrainRequested(f"m{i}", "churn") for i in range(6)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda e: _deliver(world, e), requests * 2))  # with duplicates
    assert len(_active(world, "churn")) == 1
    assert len(world.training.jobs) == 1
    for tick in range(12):
        with ThreadPoolExecutor(4) as pool:  # a tick storm
            ticks = [Tick(f"t{tick}-{i}") for i in range(4)]
            list(pool.map(lambda event: _deliver(world, event), ticks))
        assert len(_active(world, "churn")) <= 1
        for name in _active(world, "churn"):
            _end_and_release(world, name)
    assert len(world.training.jobs) == 6  # every request ran, one at a time
    assert world.store.keys("open/") == [] and world.store.keys("slots/") == []


def test_a_slot_whose_claimant_crashed_before_submitting_is_freed_after_the_claim_lease():
    world = World(CAPPED_AT_1)
    assert Slots(world.store).create("churn", 0, "crashed-run", world.now)
    world.trigger.handle(RetrainRequested("m1", "churn"))
    assert world.training.jobs == {}  # the slot looks held
    world.now += CLAIM_LEASE + timedelta(seconds=1)
    world.trigger.handle(Tick("t1"))
    (job,) = world.training.jobs.values()
    assert world.store.doc("slots/churn/0")["run_id"] == job.labels["retrain-run"]


def test_a_burst_into_a_full_pipeline_searches_its_slots_for_stale_ones_once_in_a_while():
    world = World(CAPPED_AT_1)
    world.trigger.handle(RetrainRequested("m0", "churn"))
    assert len(_active(world, "churn")) == 1  # a long job holds the only slot
    world.now += CLAIM_LEASE + timedelta(seconds=1)
    world.training.find = _counting(world.training.find, found := [])  # type: ignore[method-assign]
    for i in range(1, 21):  # 20 requests wait for the slot, within seconds
        world.trigger.handle(RetrainRequested(f"m{i}", "churn"))
        world.now += timedelta(seconds=1)
    # The holder's job is looked up once (the first), not once per waiting request.
    assert len(found) == 1
    world.now += timedelta(seconds=30)
    world.trigger.handle(RetrainRequested("m21", "churn"))
    assert len(found) == 2 and len(world.training.jobs) == 1


def test_a_burst_into_a_full_pipeline_lists_its_slots_once_per_memo_and_a_tick_looks():
    world = World(CAPPED_AT_1)
    world.trigger.handle(RetrainRequested("m0", "churn"))
    (first,) = _active(world, "churn")
    listed: list[str] = []
    store_list = world.store.list
    world.store.list = lambda prefix: listed.append(prefix) or store_list(prefix)  # type: ignore[method-assign]
    for i in range(1, 11):  # 10 requests within one memo: the first lists the slots (and
        world.trigger.handle(RetrainRequested(f"m{i}", "churn"))  # searches them for stale
    assert listed.count("slots/churn/") == 2  # holders, once per 30 s), the others do not
    _end_and_release(world, first)
    world.trigger.handle(RetrainRequested("m11", "churn"))
    assert len(world.training.jobs) == 1  # within the memo: it waits for a tick
    world.now += FULL_MEMO
    world.trigger.handle(RetrainRequested("m12", "churn"))
    assert listed.count("slots/churn/") == 3 and len(_active(world, "churn")) == 1
    (second,) = _active(world, "churn")
    _end_and_release(world, second)
    world.trigger.handle(RetrainRequested("m13", "churn"))  # found full a moment ago
    world.trigger.handle(Tick("t1"))  # a tick looks at once, and submits a waiting run
    assert len(_active(world, "churn")) == 1 and len(world.training.jobs) == 3


def _counting(find, calls: list):
    def counted(labels, **kwargs):
        calls.append(labels)
        return find(labels, **kwargs)

    return counted


def test_concurrent_runs_after_the_cooldown_submit_one_job():
    world = World()
    world.trigger.handle(RetrainRequested("first", "clicks"))
    world.now += timedelta(seconds=601)
    later = [RetrainRequested(f"later-{i}", "clicks") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda e: _deliver(world, e), later))
    assert len(world.training.jobs) == 2
    for name in _active(world, "clicks"):
        _end_and_release(world, name, "clicks")
    world.trigger.handle(Tick("t1"))
    assert len(world.training.jobs) == 2  # the window the second run took is still on
    world.now += timedelta(seconds=601)
    world.trigger.handle(Tick("t2"))
    assert len(world.training.jobs) == 3


def test_the_job_end_frees_the_slot_but_a_capacity_fallback_keeps_it():
    world = test_jobevents.World()
    failed = world.job("JOB_STATE_FAILED", error="boom")
    run_id = failed.labels["retrain-run"]
    slots = Slots(world.store)
    assert slots.create("churn", 0, run_id, world.now)
    world.end(failed)
    assert world.store.keys("slots/") == []

    stockout = world.job("JOB_STATE_FAILED", error="RESOURCE_EXHAUSTED: stockout")
    run_id = stockout.labels["retrain-run"]
    assert slots.create("churn", 1, run_id, world.now)
    assert world.end(stockout)[0].action == "resubmitted"
    assert world.store.keys("slots/") == ["slots/churn/1"]  # the run goes on


def test_a_crashed_deliverys_lease_is_taken_over_within_a_minute():
    assert timedelta(minutes=1) >= LEASE
    world = test_jobevents.World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    # A delivery claimed the job end and died: its lease is as fresh as it gets.
    world.store.create(
        f"handled/churn/{job.job_id}.json",
        {"step": "claimed", "lease_until": (world.now + LEASE).isoformat()},
    )
    with pytest.raises(TransientError, match="being handled by another delivery"):
        world.handler.handle(JobEnded("ev-2", job.job_id, "log"))
    world.now += timedelta(minutes=1)
    assert world.handler.handle(JobEnded("ev-3", job.job_id, "log"))[0].action == "deployed"


def test_the_heartbeat_renews_while_the_work_goes_on_and_stops_after():
    heartbeat = Heartbeat(0.02)
    beats: list[float] = []
    lock = threading.Lock()

    def renew() -> None:
        with lock:
            beats.append(time.monotonic())

    with heartbeat.keep(renew):
        deadline = time.monotonic() + 10
        while len(beats) < 3:
            assert time.monotonic() < deadline, "the heartbeat never renewed"
            time.sleep(0.01)
    with lock:
        seen = len(beats)
    heartbeat.beat()  # what the thread does next: nothing is registered any more
    assert len(beats) == seen


def test_overlapping_ticks_submit_a_waiting_run_once():
    world = World(CAPPED_AT_1)
    world.trigger.handle(RetrainRequested("m1", "churn"))
    world.trigger.handle(RetrainRequested("m2", "churn"))  # waits for the slot
    (first,) = world.training.jobs
    _end_and_release(world, first)
    with ThreadPoolExecutor(8) as pool:  # ticks that overlap, as slow ones do
        list(pool.map(lambda i: _deliver(world, Tick(f"t{i}")), range(8)))
    assert len(world.training.jobs) == 2
