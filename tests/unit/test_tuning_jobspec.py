"""GIVEN a pipeline with a tuning study WHEN its job is built THEN the trial job is the
CustomJob the pipeline would get, and the study travels with it."""

from __future__ import annotations

from retrain.config import parse_config
from retrain.jobspec import build_job
from retrain.planner import RunPlan
from tests.fakes import SAMPLE_CONFIG
from tests.unit.test_tuning_config import TUNING

PLAN = RunPlan("events", "r1", "each", "gs://acme-landing/events/a.csv", {"epochs": 3})


def test_a_tuning_pipeline_gets_the_custom_job_shape_plus_its_study():
    plain = parse_config(SAMPLE_CONFIG, "p.toml").pipelines["events"]
    tuned = parse_config(SAMPLE_CONFIG + TUNING, "p.toml").pipelines["events"]
    custom = build_job(plain, PLAN, "gs://acme-artifacts/runs")
    tuning = build_job(tuned, PLAN, "gs://acme-artifacts/runs")
    assert custom.tuning is None
    assert tuning.tuning is tuned.tuning
    # Same display name, labels (so adoption by label finds it), output and worker pools.
    assert tuning.display_name == custom.display_name == "retrain-events-r1"
    assert tuning.labels == custom.labels
    assert tuning.labels["retrain-run"] == "r1"
    assert tuning.base_output_directory == "gs://acme-artifacts/runs/events/r1"
    assert tuning.worker_pools == custom.worker_pools
    # The tuned parameters are appended per trial by Vertex, never fixed in the args.
    (pool,) = tuning.worker_pools
    assert pool.args == ("--data-uri=gs://acme-landing/events/a.csv", "--epochs=3")
