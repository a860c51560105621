"""The trigger for a tuning pipeline, over fakes: one HyperparameterTuningJob per batch,
adopted by its labels after a crash, and counted against the concurrency cap."""

from __future__ import annotations

import pytest

from retrain.errors import TransientError
from retrain.events import ObjectFinalized, RetrainRequested
from tests.fakes import SAMPLE_CONFIG, fail_the_record_update_after_the_job_is_created
from tests.unit.test_trigger import World
from tests.unit.test_tuning_config import TUNING


def tuning_world() -> World:
    return World(SAMPLE_CONFIG + TUNING)


def test_a_tuning_pipeline_submits_one_tuning_job_per_object():
    world = tuning_world()
    event = ObjectFinalized("ev-1", "acme-landing", "events/a.csv", 1, 10)
    outcomes = [world.trigger.handle(event)[0] for _ in range(3)]
    assert [o.action for o in outcomes] == ["submitted", "duplicate", "duplicate"]
    (name,) = world.training.jobs
    assert "/hyperparameterTuningJobs/" in name
    assert world.training.specs[name].tuning == world.config.pipelines["events"].tuning


def test_a_tuning_job_created_before_a_crash_is_adopted_by_its_labels():
    world = tuning_world()
    fail_the_record_update_after_the_job_is_created(world)
    request = RetrainRequested("m-1", "events")
    with pytest.raises(TransientError):
        world.trigger.handle(request)
    (outcome,) = world.trigger.handle(request)
    assert outcome.action == "adopted"
    (name,) = world.training.jobs
    assert "/hyperparameterTuningJobs/" in name and outcome.job_name == name
    (run_key,) = world.store.keys("runs/events/")
    assert world.store.doc(run_key)["job_name"] == name


def test_active_tuning_jobs_count_against_max_concurrent_jobs():
    world = tuning_world()  # guards.max_concurrent_jobs = 2
    for n in range(3):
        world.trigger.handle(ObjectFinalized(f"ev-{n}", "acme-landing", f"events/{n}.csv", 1, 9))
    assert len(world.training.jobs) == 2
    (waiting,) = [
        r for r in world.store.keys("runs/events/") if world.store.doc(r)["status"] == "waiting"
    ]
    assert "max_concurrent_jobs" in world.store.doc(waiting)["wait_reason"]
