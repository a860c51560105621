"""The trigger service over fakes of its ports: exactly one job per batch."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from retrain.config import parse_config
from retrain.errors import InvalidRequest, TransientError
from retrain.events import ObjectFinalized, RetrainRequested, Tick
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.slots import Slots
from retrain.trigger import Trigger
from tests.fakes import (
    SAMPLE_CONFIG,
    FakeTraining,
    MemoryStateStore,
    fail_the_record_update_after_the_job_is_created,
    fake_ports,
)


class World:
    def __init__(self, config_text: str = SAMPLE_CONFIG):
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        self.config = parse_config(config_text, "pipelines.toml")
        self.store = MemoryStateStore(clock=lambda: self.now)
        self.training = FakeTraining()
        self.stream = io.StringIO()
        self.trigger = Trigger(
            lambda: fake_ports(self.config, Ledger(self.store), self.training),
            Logger(self.stream),
            clock=lambda: self.now,
            sleep=lambda _s: None,
        )

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def obj(name: str, generation: int = 1, size: int = 10) -> ObjectFinalized:
    return ObjectFinalized(f"ev-{name}-{generation}", "acme-landing", name, generation, size)


def test_each_duplicates_and_concurrency_give_one_job():
    world = World()
    event = obj("events/a.csv")
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: _safe(world.trigger.handle, event), range(50)))
    assert len(world.training.jobs) == 1
    assert sum(1 for o in outcomes if o and o[0].action == "submitted") == 1
    world.trigger.handle(event)  # a late redelivery
    assert len(world.training.jobs) == 1
    world.trigger.handle(obj("events/a.csv", generation=2))  # an overwrite is new data
    assert len(world.training.jobs) == 2


def _safe(handle, event):
    try:
        return handle(event)
    except TransientError:
        return None


def test_marker_collects_pending_objects_and_submits_once():
    world = World()
    for i in range(3):
        world.trigger.handle(obj(f"churn/d1/part-{i}.csv"))
        world.trigger.handle(obj(f"churn/d1/part-{i}.csv"))  # duplicate
    assert len(world.store.keys("pending/churn/")) == 3
    assert world.training.jobs == {}
    world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))
    world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))
    (spec,) = world.training.specs.values()
    assert "--data-uri=gs://acme-landing/churn/d1/" in spec.worker_pools[0].args
    assert world.store.keys("pending/churn/") == []
    (run_key,) = world.store.keys("runs/churn/")
    assert len(world.store.doc(run_key)["objects"]) == 4  # 3 parts + the marker


def test_quiet_mode_waits_for_quiet_then_one_job_and_cooldown():
    world = World()
    for i in range(20):
        world.trigger.handle(obj(f"clicks/p{i}.json"))
    world.trigger.handle(Tick("t1"))
    assert world.training.jobs == {}
    world.now += timedelta(seconds=301)
    world.trigger.handle(Tick("t2"))
    world.trigger.handle(Tick("t3"))
    assert len(world.training.jobs) == 1
    assert world.store.keys("pending/clicks/") == []
    # cooldown: the next batch waits until 600 s after the first submission
    world.trigger.handle(obj("clicks/late.json"))
    world.now += timedelta(seconds=301)
    world.trigger.handle(Tick("t4"))
    assert len(world.training.jobs) == 1
    world.now += timedelta(seconds=300)
    world.trigger.handle(Tick("t5"))
    assert len(world.training.jobs) == 2


def test_runs_over_the_cap_wait_and_a_later_tick_submits_them():
    world = World()
    for i in range(3):
        world.trigger.handle(RetrainRequested(f"m{i}", "churn"))
    assert len(world.training.jobs) == 2
    world.trigger.handle(Tick("t1"))
    assert len(world.training.jobs) == 2
    first = next(iter(world.training.jobs))
    world.training.set_state(first, "JOB_STATE_SUCCEEDED")
    world.trigger.handle(Tick("t2"))
    assert len(world.training.jobs) == 2  # its slot is held until the end is handled
    # The job-events function frees the run's concurrency slot when it sees the end.
    run_id = world.training.jobs[first].labels["retrain-run"]
    slot = world.store.doc(f"runs/churn/{run_id}.json")["slot"]
    assert Slots(world.store).release("churn", slot, run_id, world.now)
    world.trigger.handle(Tick("t3"))
    assert len(world.training.jobs) == 3
    assert world.store.keys("open/") == []


def test_transient_submit_failure_raises_and_redelivery_submits_once():
    world = World()
    world.training.fail_submit.append(TransientError("503 from Vertex"))
    request = RetrainRequested("m-1", "churn")
    with pytest.raises(TransientError):
        world.trigger.handle(request)
    assert world.training.jobs == {}
    world.trigger.handle(request)
    world.trigger.handle(request)
    assert len(world.training.jobs) == 1


def test_crash_after_job_creation_is_adopted_on_redelivery():
    world = World()
    fail_the_record_update_after_the_job_is_created(world)
    request = RetrainRequested("m-1", "churn")
    with pytest.raises(TransientError):
        world.trigger.handle(request)
    assert len(world.training.jobs) == 1
    (outcome,) = world.trigger.handle(request)
    assert outcome.action == "adopted"
    assert len(world.training.jobs) == 1
    (run_key,) = world.store.keys("runs/churn/")
    assert world.store.doc(run_key)["job_name"] == next(iter(world.training.jobs))


def test_concurrent_duplicate_while_claim_is_fresh_asks_for_retry():
    world = World()
    request = RetrainRequested("m-1", "churn")
    world.training.fail_submit.append(RuntimeError("claimant died without releasing"))
    with pytest.raises(RuntimeError):
        world.trigger.handle(request)
    with pytest.raises(TransientError, match="being submitted by another delivery"):
        world.trigger.handle(request)
    world.now += timedelta(minutes=5)  # the claim goes stale: the next tick takes it over
    world.trigger.handle(Tick("t"))
    assert len(world.training.jobs) == 1


def test_rejected_request_raises_permanent_error_and_submits_nothing():
    world = World()
    with pytest.raises(InvalidRequest, match="unknown pipeline 'nope'"):
        world.trigger.handle(RetrainRequested("m-1", "nope"))
    assert world.training.jobs == {} and world.store.keys() == []


def test_a_duplicate_redelivered_after_its_batch_was_flushed_joins_no_second_batch():
    world = World()
    for i in range(3):
        world.trigger.handle(obj(f"clicks/p{i}.json"))
    world.now += timedelta(seconds=301)
    world.trigger.handle(Tick("t1"))
    assert len(world.training.jobs) == 1 and world.store.keys("pending/clicks/") == []
    # The first delivery of p1 recorded it but its answer was lost: redelivered late.
    (outcome,) = world.trigger.handle(obj("clicks/p1.json"))
    assert outcome.action == "duplicate"
    assert world.store.keys("pending/clicks/") == []
    world.trigger.handle(obj("clicks/new.json"))  # new data: the next batch
    world.now += timedelta(seconds=1000)
    world.trigger.handle(Tick("t2"))
    assert len(world.training.jobs) == 2
    second = max(world.store.keys("runs/clicks/"), key=lambda k: world.store.doc(k)["created_at"])
    assert world.store.doc(second)["objects"] == ["clicks/new.json@1"]


def test_a_crash_between_the_pending_record_and_its_marker_loses_nothing():
    world = World()
    ledger = Ledger(world.store)
    # As if a delivery wrote the pending record and died before its `seen/` marker.
    world.store.create("pending/clicks/clicks/p0.json@1", {"object": "clicks/p0.json@1"})
    assert not ledger.record_pending("clicks", "clicks/p0.json@1", "ev", world.now)
    assert world.store.keys("seen/clicks/") == ["seen/clicks/clicks/p0.json@1"]
    world.now += timedelta(seconds=301)
    world.trigger.handle(Tick("t1"))
    (run_key,) = world.store.keys("runs/clicks/")
    assert world.store.doc(run_key)["objects"] == ["clicks/p0.json@1"]


def test_a_flush_longer_than_the_claim_lease_keeps_its_claim_and_makes_one_job():
    world = World()
    for i in range(12_000):
        world.trigger.handle(obj(f"clicks/p{i:05}.json"))
    world.now += timedelta(seconds=301)
    delete, deletes, overlapping = world.store.delete, [0], []

    def slow_delete(key: str, **kwargs):
        deleted = delete(key, **kwargs)
        if key.startswith("pending/"):
            deletes[0] += 1
            world.now += timedelta(seconds=0.02)  # 12,000 removals: 240 s, past the lease
            if deletes[0] == 10_000:  # a tick arrives 200 s into the flush
                overlapping.extend(world.trigger.handle(Tick("t-overlap")))
        return deleted

    world.store.delete = slow_delete  # type: ignore[method-assign]
    (outcome,) = world.trigger.handle(Tick("t1"))
    assert outcome.action == "submitted"
    # The overlapping tick found the claim live: it left the run to the flush.
    assert overlapping and {o.action for o in overlapping} <= {"duplicate", "waiting"}
    assert len(world.training.jobs) == 1 and world.store.keys("pending/clicks/") == []
    (run_key,) = world.store.keys("runs/clicks/")
    assert len(world.store.doc(run_key)["objects"]) == 12_000


def test_a_flush_that_died_while_removing_its_objects_leaves_none_for_a_later_batch():
    world = World()
    for i in range(3):
        world.trigger.handle(obj(f"churn/d1/part-{i}.csv"))
    delete, crashed = world.store.delete, []

    def crash_after_one(key: str, **kwargs):
        if key.startswith("pending/") and crashed:
            raise SystemExit("killed")  # the process dies mid-removal
        crashed.append(key)
        return delete(key, **kwargs)

    world.store.delete = crash_after_one  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))
    world.store.delete = delete  # type: ignore[method-assign]
    assert len(world.store.keys("pending/churn/")) == 2 and world.training.jobs == {}
    world.now += timedelta(seconds=121)  # the dead delivery's claim goes stale
    world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))  # the redelivery takes over
    assert len(world.training.jobs) == 1 and world.store.keys("pending/churn/") == []
    (run_key,) = world.store.keys("runs/churn/")
    assert len(world.store.doc(run_key)["objects"]) == 4


def _dies_once(monkeypatch, owner: object, name: str, *, after: bool) -> list[str]:
    """Make `owner.name` kill the delivery once, before or after it did its work."""
    original, died = getattr(owner, name), []

    def dying(*args, **kwargs):
        if died:
            return original(*args, **kwargs)
        died.append(name)
        result = original(*args, **kwargs) if after else None
        raise SystemExit(f"killed {'after' if after else 'before'} {name}")
        return result  # pragma: no cover

    monkeypatch.setattr(owner, name, dying)
    return died


def test_a_takeover_covers_the_batch_its_dead_claimant_never_covered(monkeypatch):
    world = World()
    for i in range(3):
        world.trigger.handle(obj(f"churn/d1/part-{i}.csv"))
    _dies_once(monkeypatch, world.trigger, "_cover_pending", after=False)
    with pytest.raises(SystemExit):
        world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))
    assert world.training.jobs == {} and len(world.store.keys("pending/churn/")) == 3
    world.now += timedelta(seconds=121)  # the claim goes stale
    world.trigger.handle(obj("churn/d1/_SUCCESS", size=0))  # the redelivery
    assert len(world.training.jobs) == 1 and world.store.keys("pending/churn/") == []
    (run_key,) = world.store.keys("runs/churn/")
    assert len(world.store.doc(run_key)["objects"]) == 4


def test_a_takeover_keeps_the_slot_its_dead_claimant_took(monkeypatch):
    world = World()
    request = RetrainRequested("m-1", "churn")
    _dies_once(monkeypatch, Slots, "create", after=True)
    with pytest.raises(SystemExit):
        world.trigger.handle(request)
    assert world.store.keys("slots/churn/") == ["slots/churn/0"]
    world.now += timedelta(seconds=121)
    world.trigger.handle(request)
    (run_key,) = world.store.keys("runs/churn/")
    assert world.store.doc(run_key)["slot"] == 0
    assert world.store.keys("slots/churn/") == ["slots/churn/0"]
