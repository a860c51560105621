"""GIVEN a HyperparameterTuningJob that ended WHEN job-events handles it THEN the best
succeeded trial's model goes through the gate, registry and endpoint, and people see the
best trials and the failures."""

from __future__ import annotations

import json

import pytest

from retrain.config import parse_config
from retrain.events import JobEnded, Tick
from retrain.jobspec import build_job
from retrain.planner import RunPlan
from retrain.ports import JobInfo, Trial
from tests.unit.test_jobevents import CONFIG, World

TUNING = """
[pipelines.churn.tuning]
metric = "val_accuracy"
goal = "@GOAL@"
max_trial_count = 6
parallel_trial_count = 2
max_failed_trial_count = 3

[pipelines.churn.tuning.parameters]
hidden = { type = "integer", min = 32, max = 256 }
optimizer = { type = "categorical", values = ["adamw", "sgd"] }
"""
BASE = "gs://acme-artifacts/runs/churn/{run}"


class TuningWorld(World):
    def __init__(self, goal: str = "maximize"):
        super().__init__()
        text = CONFIG.replace("@CANARY@", "0") + TUNING.replace("@GOAL@", goal)
        if goal == "minimize":
            # A loss-like study, and a gate that reads the same way (lower is better).
            gate = 'metric = "val_accuracy"\nmin_value = 0.8'
            assert gate in text
            text = text.replace(gate, 'metric = "val_loss"\ngoal = "minimize"\nmin_value = 0.5')
            text = text.replace(
                'metric = "val_accuracy"\ngoal = "minimize"',
                'metric = "val_loss"\ngoal = "minimize"',
            )
        self.config = parse_config(text, "pipelines.toml")

    def tuning_job(self, state: str, trials: tuple[Trial, ...], error: str | None = None):
        """A submitted run of `churn` whose tuning job ended with these trials; each trial
        with a metric has a model dir whose metrics.json says so."""
        run_id = f"run-{next(self.runs)}"
        plan = RunPlan("churn", run_id, "marker", "gs://acme-landing/churn/d1/")
        stored = self.ledger.claim_run(plan, self.now)
        assert stored is not None
        spec = build_job(self.config.pipelines["churn"], plan, "gs://acme-artifacts/runs")
        job = self.training.submit(spec)
        assert job.is_tuning
        self.ledger.update_run(
            "churn", run_id, stored, {"status": "submitted", "job_name": job.name}
        )
        self.training.set_state(job.name, state, error, trials=trials)
        metric = job.objective.metric if job.objective else ""
        for trial in trials:
            directory = f"{BASE.format(run=run_id)}/{trial.id}/model/"
            if trial.metric is not None:
                self.blobs.files[directory + "metrics.json"] = json.dumps({metric: trial.metric})
            self.blobs.files[directory + "smoke.json"] = json.dumps({"instances": [{"a": 1}]})
        return self.training.get(job.name)


def ok(trial_id: str, metric: float, hidden: int, optimizer: str = "adamw") -> Trial:
    return Trial(trial_id, "SUCCEEDED", {"hidden": float(hidden), "optimizer": optimizer}, metric)


def bad(trial_id: str, reason: str) -> Trial:
    return Trial(trial_id, "INFEASIBLE", {"hidden": 64.0, "optimizer": "sgd"}, None, reason)


SUCCEEDED = "JOB_STATE_SUCCEEDED"


def test_the_best_trial_by_a_maximized_metric_is_deployed_and_recorded():
    world = TuningWorld("maximize")
    trials = (
        ok("1", 0.86, 32),
        bad("2", "error: CUDA out of memory"),
        ok("3", 0.93, 128, "sgd"),
        Trial("4", "INFEASIBLE", {"hidden": 256.0}, 0.99, "stopped: infeasible"),
        ok("5", 0.91, 64),
    )
    job = world.tuning_job(SUCCEEDED, trials)
    (outcome,) = world.end(job)
    assert outcome.action == "deployed"
    (spec,) = world.registry.uploads
    assert spec.artifact_uri == f"{BASE.format(run='run-1')}/3/model/"
    assert spec.metric_value == 0.93
    assert spec.labels["retrain-trial"] == "3" and spec.labels["retrain-run"] == "run-1"
    assert "trial 3 of" in spec.description and "hidden=128, optimizer=sgd" in spec.description
    (note,) = world.notifier.sent
    assert note["kind"] == "deployed" and note["metric"] == 0.93
    assert note["trials"][:3] == [
        "trial 3: val_accuracy=0.93 (hidden=128, optimizer=sgd)",
        "trial 5: val_accuracy=0.91 (hidden=64, optimizer=adamw)",
        "trial 1: val_accuracy=0.86 (hidden=32, optimizer=adamw)",
    ]
    assert "2 of 5 trials failed" in note["trials"]
    assert "trial 2 failed: error: CUDA out of memory" in note["trials"]
    assert "trials:\n  trial 3: val_accuracy=0.93" in world.notifier.texts[0]
    record = world.run_record(job)
    assert record["outcome"] == "deployed"
    assert record["trial"] == {
        "id": "3",
        "parameters": {"hidden": 128.0, "optimizer": "sgd"},
        "metric": 0.93,
    }


def test_the_best_trial_by_a_minimized_metric_is_the_lowest():
    world = TuningWorld("minimize")
    trials = (ok("1", 0.40, 32), ok("2", 0.20, 64), ok("3", 0.30, 128), bad("4", "boom"))
    job = world.tuning_job(SUCCEEDED, trials)
    assert job.objective is not None and job.objective.goal == "minimize"
    (outcome,) = world.end(job)
    assert outcome.action == "deployed", outcome.detail
    (spec,) = world.registry.uploads
    assert spec.artifact_uri.endswith("/2/model/") and spec.labels["retrain-trial"] == "2"
    assert (
        world.notifier.sent[0]["trials"][0] == "trial 2: val_loss=0.2 (hidden=64, optimizer=adamw)"
    )


def test_ties_go_to_the_earlier_trial():
    world = TuningWorld()
    job = world.tuning_job(SUCCEEDED, (ok("10", 0.9, 32), ok("2", 0.9, 64), ok("3", 0.85, 64)))
    world.end(job)
    assert world.registry.uploads[0].labels["retrain-trial"] == "2"


def test_the_best_trial_still_faces_the_gate():
    world = TuningWorld()
    job = world.tuning_job(SUCCEEDED, (ok("1", 0.5, 32), ok("2", 0.6, 64)))
    (outcome,) = world.end(job)
    assert outcome.action == "rejected" and "threshold" in outcome.detail
    assert world.registry.uploads == []
    assert world.notifier.sent[0]["trials"][0].startswith("trial 2: val_accuracy=0.6")


def test_all_trials_failed_is_a_failed_notification_with_the_trials_errors():
    world = TuningWorld()
    world.logs.lines["1000"] = ["service Trial 3 failed: error: bad column"]
    trials = (
        bad("1", "error: data file has no column 'y'"),
        bad("2", "replica workerpool0-0 exited with code 137"),
        bad("3", "the trial reported no value of val_accuracy"),
    )
    job = world.tuning_job(
        "JOB_STATE_FAILED", trials, error="3 trials failed, reaching max_failed_trial_count 3"
    )
    (outcome,) = world.end(job)
    assert outcome.action == "failed" and "max_failed_trial_count" in outcome.detail
    (note,) = world.notifier.sent
    assert note["kind"] == "failed"
    assert note["trials"] == [
        "3 of 3 trials failed",
        "trial 1 failed: error: data file has no column 'y'",
        "trial 2 failed: replica workerpool0-0 exited with code 137",
        "trial 3 failed: the trial reported no value of val_accuracy",
    ]
    assert note["log_tail"] == ["service Trial 3 failed: error: bad column"]
    assert world.registry.uploads == [] and world.endpoints.state is None


def test_a_succeeded_job_without_a_usable_trial_fails_instead_of_deploying_nothing():
    world = TuningWorld()
    no_metric = Trial("1", "SUCCEEDED", {"hidden": 32.0}, None)
    job = world.tuning_job(SUCCEEDED, (no_metric, bad("2", "boom")))
    (outcome,) = world.end(job)
    assert outcome.action == "failed"
    assert outcome.detail == "no trial succeeded with a value of val_accuracy"
    assert world.notifier.sent[0]["trials"][0] == "2 of 2 trials failed"


def test_a_tuning_job_is_found_by_its_id_and_handled_once():
    world = TuningWorld()
    job = world.tuning_job(SUCCEEDED, (ok("1", 0.9, 32),))
    assert "/hyperparameterTuningJobs/" in job.name
    first = world.handler.handle(JobEnded("ev-1", job.job_id, "log"))
    again = world.handler.handle(JobEnded("ev-2", job.job_id, "log"))
    assert [first[0].action, again[0].action] == ["deployed", "duplicate"]
    assert len(world.registry.uploads) == 1


def test_a_trials_custom_job_carrying_the_runs_labels_is_not_the_runs_end():
    world = TuningWorld()
    job = world.tuning_job("JOB_STATE_RUNNING", ())
    # What Vertex would show if it copied the run's labels onto a trial's CustomJob.
    plain = build_job(
        world.config.pipelines["events"],
        RunPlan("events", "x", "each", "gs://acme-landing/events/a.csv"),
        "gs://acme-artifacts/runs",
    )
    trial_job = world.training.submit(plain)
    world.training.jobs[trial_job.name] = JobInfo(
        trial_job.name, SUCCEEDED, labels=dict(job.labels), base_output_directory="gs://x/1"
    )
    (outcome,) = world.end(world.training.get(trial_job.name))
    assert outcome.action == "ignored" and "trial" in outcome.detail
    assert world.notifier.sent == []


@pytest.mark.parametrize("state", ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"])
def test_a_tick_reconciles_ended_tuning_jobs_too(state: str):
    world = TuningWorld()
    job = world.tuning_job(state, (ok("1", 0.9, 32),) if state == SUCCEEDED else (bad("1", "x"),))
    outcomes = world.handler.handle(Tick("tick-1"))
    assert [(o.action, o.job_name) for o in outcomes] == [
        ("deployed" if state == SUCCEEDED else "failed", job.name)
    ]
