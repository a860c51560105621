"""The trigger function as deployed: functions-framework serving functions/main.py, the
official clients, fake-gcs-server and the Vertex AI emulator. Deliveries are HTTP posts
of binary-mode CloudEvents, redelivered on non-2xx as Eventarc does."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from google.cloud import aiplatform_v1

from localcloud.procs import wait_until
from tests.contract.conftest import Cloud
from tests.unit import hostile_requests


def test_200_concurrent_duplicates_give_one_job_or_one_pending_record(cloud: Cloud):
    each = cloud.finalize("events/day1.csv")
    quiet = cloud.finalize("clicks/day1.csv")
    marker_data = cloud.finalize("churn/d1/part-0.csv")
    statuses = cloud.deliver_concurrently([each] * 200 + [quiet] * 200 + [marker_data] * 200)
    assert all(status < 300 for status in statuses)
    assert len(cloud.jobs()) == 1
    assert cloud.state_objects("pending/clicks/") == ["state/pending/clicks/clicks/day1.csv@1"]
    assert cloud.state_objects("pending/churn/") == ["state/pending/churn/churn/d1/part-0.csv@1"]
    marker = cloud.finalize("churn/d1/_SUCCESS", size=0)
    assert all(s < 300 for s in cloud.deliver_concurrently([marker] * 200))
    jobs = cloud.jobs()
    assert len(jobs) == 2
    churn = [j for j in jobs if j.labels["retrain-pipeline"] == "churn"]
    assert len(churn) == 1
    assert (
        f"--data-uri=gs://{cloud.landing}/churn/d1/"
        in churn[0].job_spec.worker_pool_specs[0].container_spec.args
    )
    assert cloud.state_objects("pending/churn/") == []


def test_each_mode_one_job_per_generation(cloud: Cloud):
    for generation in (1, 1, 2, 3, 3):
        assert cloud.post(*cloud.finalize("events/a.csv", generation=generation)) == 200
    assert len(cloud.jobs()) == 3


def test_quiet_burst_of_2000_objects_gives_one_job_after_the_quiet_period(quiet_cloud: Cloud):
    cloud = quiet_cloud
    burst = [cloud.finalize(f"clicks/2026-11-26/part-{i:04d}.csv") for i in range(2000)]
    started = time.monotonic()
    statuses = cloud.deliver_concurrently(burst, workers=16)
    print(f"burst: {len(burst) / (time.monotonic() - started):.0f} events/s")
    assert all(status < 300 for status in statuses)
    assert cloud.post(*cloud.tick("tick-during-burst")) == 200
    assert cloud.jobs() == []
    assert len(cloud.state_objects("pending/clicks/")) == 2000
    ticks = []

    def flushed_by_a_tick() -> bool:
        # Ticks before the quiet period (2 s) has passed find the batch not quiet yet; the
        # first one after it flushes the whole batch into one job.
        ticks.append(f"tick-after-burst-{len(ticks)}")
        started = time.monotonic()
        assert cloud.post(*cloud.tick(ticks[-1])) == 200
        flushed = bool(cloud.jobs())
        if flushed:
            print(f"flush tick: {time.monotonic() - started:.1f}s")
        return flushed

    wait_until(flushed_by_a_tick, what="the flush after the quiet period", timeout=60)
    assert cloud.post(*cloud.tick("tick-again")) == 200
    (job,) = cloud.jobs()
    assert (
        f"--data-uri=gs://{cloud.landing}/clicks/"
        in job.job_spec.worker_pool_specs[0].container_spec.args
    )
    record = cloud.run_record("clicks")
    assert len(record["objects"]) == 2000 and record["job_name"] == job.name
    assert cloud.state_objects("pending/clicks/") == []


def test_crash_between_job_creation_and_run_record_update_is_adopted(cloud: Cloud):
    # The function process dies after CreateCustomJob succeeded, while its run record
    # update to "submitted" is in flight: the update never lands.
    held = threading.Event()
    rule = cloud.gcs_faults.fail(
        lambda m, p, body: m == "POST" and b'"status": "submitted"' in body, 503, hold=held
    )
    request = cloud.message({"pipeline": "churn"}, "req-crash")
    with ThreadPoolExecutor(1) as pool:
        delivery = pool.submit(cloud.post, *request)
        deadline = time.monotonic() + 60
        while rule.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rule.hits == 1, "the run record update never started"
        cloud.function.kill()
        held.set()
        assert delivery.exception(timeout=60) is not None  # the connection died with it
    assert len(cloud.jobs()) == 1
    assert cloud.run_record("churn")["status"] == "claimed"
    cloud.function.start()
    assert cloud.deliver_until_acked(*request) == 200
    (job,) = cloud.jobs()
    record = cloud.run_record("churn")
    assert record["status"] == "submitted" and record["job_name"] == job.name
    assert any(r["message"].startswith("adopted job") for r in cloud.logs())


def test_vertex_503_and_429_on_create_are_retried_into_exactly_one_job(cloud: Cloud):
    cloud.vertex_faults.fail(cloud.creates_job, 503)
    cloud.vertex_faults.fail(cloud.creates_job, 429)
    request = cloud.message({"pipeline": "churn"}, "req-503")
    assert cloud.post(*request) >= 500
    assert cloud.post(*request) >= 500
    assert cloud.jobs() == []
    assert cloud.post(*request) == 200
    assert cloud.post(*request) == 200
    assert len(cloud.jobs()) == 1


def test_permanent_errors_are_acknowledged_logged_and_submit_nothing(cloud: Cloud):
    bad_base64 = cloud.message(b"", "bad-1")
    bad_base64[1]["message"]["data"] = "%%%"
    cases = {
        "not valid base64": bad_base64,
        "is not JSON": cloud.message(b"{broken", "bad-2"),
        "unknown pipeline 'nope'": cloud.message({"pipeline": "nope"}, "bad-3"),
        "is not allowed": cloud.message({"pipeline": "churn", "data_uri": "gs://evil/x/"}, "bad-4"),
        "hyperparameters.epochs cannot be overridden": cloud.message(
            {"pipeline": "churn", "hyperparameters": {"epochs": 3}}, "bad-5"
        ),
        "hyperparameters.batch_size must be int": cloud.message(
            {"pipeline": "churn", "hyperparameters": {"batch_size": "x"}}, "bad-6"
        ),
        "no 'pipeline'": cloud.message({"reason": "?"}, "bad-7"),
    }
    for expected, delivery in cases.items():
        assert cloud.post(*delivery) == 200, expected
    errors = cloud.errors()
    for expected in cases:
        assert sum(expected in message for message in errors) == 1, (expected, errors)
    assert cloud.jobs() == []
    assert cloud.state_objects("runs/") == []


def test_submitted_job_carries_the_configured_shape(cloud: Cloud):
    request = cloud.message(
        {
            "pipeline": "churn",
            "data_uri": f"gs://{cloud.landing}/churn/x/",
            "hyperparameters": {"lr": 0.01},
        },
        "req-shape",
    )
    assert cloud.post(*request) == 200
    (job,) = cloud.jobs()
    run_id = job.labels["retrain-run"]
    assert job.display_name == f"retrain-churn-{run_id}"
    assert job.labels["retrain-pipeline"] == "churn"
    spec = job.job_spec
    assert (
        spec.base_output_directory.output_uri_prefix
        == f"gs://{cloud.artifacts}/runs/churn/{run_id}"
    )
    chief, workers = spec.worker_pool_specs
    for pool in (chief, workers):
        assert pool.machine_spec.machine_type == "g2-standard-8"
        assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_L4
        assert pool.machine_spec.accelerator_count == 2
        assert pool.container_spec.image_uri == "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
        assert list(pool.container_spec.args) == [
            "--label=churned",
            "--epochs=20",
            f"--data-uri=gs://{cloud.landing}/churn/x/",
            f"--data-manifest=gs://{cloud.artifacts}/runs/churn/{run_id}/inputs.jsonl",
            "--batch_size=256",
            "--lr=0.01",
        ]
    assert (chief.replica_count, workers.replica_count) == (1, 2)
    assert spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
    assert spec.scheduling.timeout.total_seconds() == 14400
    assert spec.scheduling.restart_job_on_worker_restart
    assert spec.service_account == "trainer@acme-ml.iam.gserviceaccount.com"
    # The manifest was written before the job: the objects under the data URI, pinned.
    manifest = cloud.gcs_client.bucket(cloud.artifacts).blob(f"runs/churn/{run_id}/inputs.jsonl")
    assert manifest.exists()


def test_a_data_objects_generations_are_pinned_in_the_manifest(cloud: Cloud):
    blob = cloud.gcs_client.bucket(cloud.landing).blob("churn/pinned/part-0.csv")
    blob.upload_from_string("a,churned\n1,0\n")
    request = cloud.message({"pipeline": "churn", "data_uri": f"gs://{cloud.landing}/churn/pinned/"},
                            "req-pinned")  # fmt: skip
    assert cloud.post(*request) == 200
    (job,) = cloud.jobs()
    run_id = job.labels["retrain-run"]
    text = (
        cloud.gcs_client.bucket(cloud.artifacts)
        .blob(f"runs/churn/{run_id}/inputs.jsonl")
        .download_as_text()
    )
    assert [json.loads(line) for line in text.splitlines()] == [
        {
            "uri": f"gs://{cloud.landing}/churn/pinned/part-0.csv",
            "generation": str(blob.generation),
            "size": blob.size,
        }
    ]


def test_an_each_run_pins_its_one_object_among_many_in_its_folder(cloud: Cloud):
    bucket = cloud.gcs_client.bucket(cloud.landing)
    for i in range(5):
        bucket.blob(f"events/day1/other-{i}.csv").upload_from_string("a\n1\n")
    blob = bucket.blob("events/day1/mine.csv")
    blob.upload_from_string("a,b\n1,2\n")
    blob.upload_from_string("a,b\n1,2\n3,4\n")  # overwritten: the event names this one
    event = cloud.finalize("events/day1/mine.csv", size=blob.size, generation=blob.generation)
    assert cloud.post(*event) == 200
    (job,) = cloud.jobs()
    text = (
        cloud.gcs_client.bucket(cloud.artifacts)
        .blob(f"runs/events/{job.labels['retrain-run']}/inputs.jsonl")
        .download_as_text()
    )
    assert [json.loads(line) for line in text.splitlines()] == [
        {
            "uri": f"gs://{cloud.landing}/events/day1/mine.csv",
            "generation": str(blob.generation),
            "size": blob.size,
        }
    ]


def test_hostile_requests_are_refused_naming_the_field_with_no_job(cloud: Cloud):
    for n, (name, text, _field, _phrase) in enumerate(hostile_requests.CASES):
        delivery = cloud.message(hostile_requests.payload(text, cloud.landing), f"hostile-{n}")
        assert cloud.post(*delivery) == 200, name
    refused = [r for r in cloud.logs() if r.get("severity") == "ERROR"]
    assert len(refused) == len(hostile_requests.CASES)
    for record, (name, _text, field, phrase) in zip(refused, hostile_requests.CASES, strict=True):
        assert record["field"] == field and phrase in record["message"], (name, record)
    assert cloud.jobs() == []
    assert cloud.state_objects("runs/") == []


def test_batch_mode_and_unparseable_bodies_get_a_4xx_not_a_500(cloud: Cloud):
    for name, headers, raw, expected in hostile_requests.unservable(
        *cloud.message({"pipeline": "churn"}, "raw-1")
    ):
        response = requests.post(cloud.function.url, headers=headers, data=raw, timeout=60)
        assert response.status_code == expected, (name, response.text)
        assert response.json()["error"]["code"] == expected
    assert cloud.jobs() == []
