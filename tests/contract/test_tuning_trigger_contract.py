"""The trigger function as deployed, for a pipeline with a [tuning] table: exactly one
HyperparameterTuningJob per batch however often the event is delivered, over gRPC and REST
to the Vertex emulator."""

from __future__ import annotations

from google.cloud import aiplatform_v1

from tests.contract.conftest import PROJECT, Cloud, vertex_client

TUNING = """
[pipelines.events.tuning]
metric = "val_accuracy"
goal = "maximize"
max_trial_count = 4
parallel_trial_count = 2
max_failed_trial_count = 1
algorithm = "random"

[pipelines.events.tuning.parameters]
lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }
hidden = { type = "integer", min = 32, max = 256 }
"""


def tuned(cloud: Cloud) -> list[aiplatform_v1.HyperparameterTuningJob]:
    jobs = vertex_client(cloud.vertex, cloud.transport, "JobServiceClient")
    parent = f"projects/{PROJECT}/locations/us-central1"
    return list(jobs.list_hyperparameter_tuning_jobs(parent=parent))


def test_50_concurrent_duplicates_give_one_tuning_job(cloud: Cloud):
    # GIVEN the `events` pipeline (one run per object) tunes instead of training once
    with cloud.config_path.open("a") as config:
        config.write(TUNING)
    cloud.function.restart()  # the function reads its config at a cold start
    # WHEN one object's finalize event arrives 50 times at once
    event = cloud.finalize("events/day1.csv")
    statuses = cloud.deliver_concurrently([event] * 50)
    # THEN every delivery is acknowledged and exactly one tuning job (no CustomJob) exists
    assert all(status < 300 for status in statuses)
    assert cloud.jobs() == []
    (job,) = tuned(cloud)
    run_id = job.labels["retrain-run"]
    assert job.display_name == f"retrain-events-{run_id}"
    assert job.labels["retrain-pipeline"] == "events"
    assert (job.max_trial_count, job.parallel_trial_count, job.max_failed_trial_count) == (4, 2, 1)
    assert job.study_spec.algorithm == aiplatform_v1.StudySpec.Algorithm.RANDOM_SEARCH
    assert [p.parameter_id for p in job.study_spec.parameters] == ["hidden", "lr"]
    spec = job.trial_job_spec
    assert spec.base_output_directory.output_uri_prefix == (
        f"gs://{cloud.artifacts}/runs/events/{run_id}"
    )
    (pool,) = spec.worker_pool_specs
    assert f"--data-uri=gs://{cloud.landing}/events/day1.csv" in pool.container_spec.args
    # AND the run record names the tuning job: a redelivery finds it submitted
    record = cloud.run_record("events")
    assert record["status"] == "submitted" and record["job_name"] == job.name
    assert cloud.post(*event) == 200
    assert len(tuned(cloud)) == 1
