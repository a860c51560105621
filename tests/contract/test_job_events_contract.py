"""The job-events function as deployed: functions-framework serving `on_job_event`, the
official clients, fake-gcs-server, the Vertex AI emulator (jobs run as local processes,
deployed models really serve), the Logging v2 emulator and a real webhook receiver."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from localcloud.procs import wait_until
from localcloud.storage import StorageServer
from tests.contract.jobevents_fixtures import (  # noqa: F401 - fixtures used by name
    JobCloud,
    job_cloud_fixture,
    trained_model_fixture,
)

GOOD = {"val_accuracy": 0.9, "val_loss": 0.2}


def test_a_good_model_is_deployed_serves_and_is_announced(job_cloud: JobCloud):
    cloud = job_cloud
    job = cloud.run_job(metrics=GOOD)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert cloud.deliver_until_acked(*cloud.sink_entry(job, "sink-1")) == 200
    (version,) = cloud.versions()
    assert "champion" in version.version_aliases
    assert version.labels["retrain-run"] == job.labels["retrain-run"]
    assert version.artifact_uri.endswith(f"/churn/{job.labels['retrain-run']}/model/")
    ((deployed_id, (version_id, share)),) = cloud.serving().items()
    assert (version_id, share) == (version.version_id, 100)
    answer = cloud.predict(cloud.smoke_instances())
    assert answer.deployed_model_id == deployed_id and len(answer.predictions) > 0
    (text,) = cloud.webhook.texts()
    assert "run " + job.labels["retrain-run"] + " deployed" in text and "val_accuracy = 0.9" in text
    assert cloud.webhook.idempotency_keys() == [f"churn/{job.labels['retrain-run']}/deployed"]
    assert cloud.webhook.url not in cloud.log_path.read_text()  # the secret is never logged


def test_below_threshold_and_worse_than_champion_are_rejected(job_cloud: JobCloud):
    cloud = job_cloud
    first = cloud.run_job(metrics=GOOD)
    assert cloud.deliver_until_acked(*cloud.sink_entry(first, "sink-1")) == 200
    before = cloud.serving()
    low = cloud.run_job(metrics={"val_accuracy": 0.3})
    worse = cloud.run_job(metrics={"val_accuracy": 0.8})
    assert cloud.deliver_until_acked(*cloud.sink_entry(low, "sink-2")) == 200
    assert cloud.deliver_until_acked(*cloud.incident(worse, "incident-3")) == 200
    assert len(cloud.versions()) == 1 and cloud.serving() == before
    _, low_text, worse_text = cloud.webhook.texts()
    assert "rejected" in low_text and "does not reach the threshold (>= 0.6)" in low_text
    assert "not better than the champion's 0.9" in worse_text


def test_a_model_that_fails_its_smoke_test_is_rolled_back(job_cloud: JobCloud):
    cloud = job_cloud
    first = cloud.run_job(metrics=GOOD)
    assert cloud.deliver_until_acked(*cloud.sink_entry(first, "sink-1")) == 200
    before = cloud.serving()
    broken = cloud.run_job(metrics={"val_accuracy": 0.95}, broken_model=True)
    assert cloud.deliver_until_acked(*cloud.sink_entry(broken, "sink-2")) == 200
    assert cloud.serving() == before  # the previous version still serves 100%
    assert [share for _, share in before.values()] == [100]
    champion = [v for v in cloud.versions() if "champion" in v.version_aliases]
    assert [v.version_id for v in champion] == ["1"]
    assert len(cloud.predict(cloud.smoke_instances()).predictions) > 0
    texts = cloud.webhook.texts()
    assert len(texts) == 2 and "rolled back" in texts[1] and "deploy failed" in texts[1]


def test_a_failed_job_is_announced_with_its_error_and_log_tail(job_cloud: JobCloud):
    cloud = job_cloud
    job = cloud.run_job(image="local/trainer-fail:latest")
    assert job.state.name == "JOB_STATE_FAILED"
    assert cloud.deliver_until_acked(*cloud.sink_entry(job, "sink-1")) == 200
    (text,) = cloud.webhook.texts()
    assert "training failed" in text
    assert "error: data has no column 'churned'" in text  # the job's error message
    assert "error: error:" not in text  # shown once
    assert "workerpool0-0: reading gs://data/churn.csv" in text  # the replica's log tail
    assert f"gs://{cloud.landing}/churn/day-" in text  # the triggering data
    assert "console.cloud.google.com" in text


def test_50_concurrent_duplicates_from_every_source_do_everything_once(job_cloud: JobCloud):
    cloud = job_cloud
    job = cloud.run_job(metrics=GOOD)
    deliveries = []
    for i in range(50):
        kind = i % 3
        if kind == 0:
            deliveries.append(cloud.sink_entry(job, f"sink-{i}"))
        elif kind == 1:
            deliveries.append(cloud.incident(job, f"incident-{i}"))
        else:
            deliveries.append(cloud.tick(f"tick-{i}"))
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda d: cloud.deliver_until_acked(*d), deliveries))
    assert all(status < 300 for status in statuses)
    assert len(cloud.versions()) == 1
    assert len(cloud.serving()) == 1
    assert len(cloud.webhook.texts()) == 1


def test_a_job_end_never_delivered_is_handled_by_the_next_tick(job_cloud: JobCloud):
    cloud = job_cloud
    failed = cloud.run_job(image="local/trainer-fail:latest")
    good = cloud.run_job(metrics=GOOD)
    assert failed.state.name == "JOB_STATE_FAILED" and good.state.name == "JOB_STATE_SUCCEEDED"
    assert cloud.webhook.texts() == []
    assert cloud.deliver_until_acked(*cloud.tick("tick-1")) == 200
    headlines = {text.split("\n")[0] for text in cloud.webhook.texts()}
    assert headlines == {
        f"[retrain] churn: run {good.labels['retrain-run']} deployed",
        f"[retrain] churn: run {failed.labels['retrain-run']} training failed",
    }
    assert len(cloud.serving()) == 1
    assert cloud.deliver_until_acked(*cloud.tick("tick-2")) == 200
    assert len(cloud.webhook.texts()) == 2


def test_malformed_and_foreign_payloads_are_acknowledged_and_change_nothing(job_cloud: JobCloud):
    cloud = job_cloud
    bad_base64 = cloud.message(b"", "bad-1")
    bad_base64[1]["message"]["data"] = "%%%"
    foreign_entry = {"logName": "projects/acme-ml/logs/syslog", "textPayload": "hi",
                     "resource": {"type": "gce_instance", "labels": {}}}  # fmt: skip
    cases = {
        "not valid base64": bad_base64,
        "is not JSON": cloud.message(b"{broken", "bad-2"),
        "not about a Vertex AI job (resource.type='gce_instance')": cloud.message(
            foreign_entry, "bad-3"
        ),
        "incident names no job": cloud.message({"incident": {"state": "open"}}, "bad-4"),
        "is not a job event": cloud.message({"pipeline": "churn"}, "bad-5"),
        "customJobs/4242 not found": cloud.incident_for_id("4242", "bad-6"),
    }
    for expected, delivery in cases.items():
        assert cloud.post(*delivery) == 200, expected
    errors = cloud.errors()
    for expected in cases:
        assert sum(expected in message for message in errors) == 1, (expected, errors)
    assert cloud.versions() == [] and cloud.endpoint() is None
    assert cloud.webhook.texts() == [] and cloud.state_objects("") == []


def test_a_stockout_is_resubmitted_on_the_fallback_machine_before_anyone_hears(
    job_cloud: JobCloud,
):
    cloud = job_cloud
    starved = cloud.run_job(image="local/trainer-stockout:latest", metrics=GOOD)
    assert starved.state.name == "JOB_STATE_FAILED"
    assert cloud.deliver_until_acked(*cloud.sink_entry(starved, "sink-stockout")) == 200
    assert cloud.deliver_until_acked(*cloud.sink_entry(starved, "sink-stockout-dup")) == 200
    run_id = starved.labels["retrain-run"]
    jobs = [job for job in cloud.training.find({"retrain-run": run_id}) if job.name != starved.name]
    assert len(jobs) == 1, jobs  # resubmitted once, however often the end is delivered
    retry = cloud.wait_terminal(jobs[0].name)
    assert retry.labels["retrain-attempt"] == "1"
    assert retry.job_spec.worker_pool_specs[0].machine_spec.machine_type == "n1-standard-8"
    assert cloud.webhook.texts() == []  # nobody is told about the stockout itself
    assert cloud.deliver_until_acked(*cloud.sink_entry(retry, "sink-retry")) == 200
    texts = cloud.webhook.texts()
    assert len(texts) == 1 and "deployed" in texts[0], texts


def test_a_canary_takes_its_share_and_a_tick_promotes_it(
    gcs: StorageServer, tmp_path: Path, trained_model: Path
):
    cloud = JobCloud(gcs, tmp_path, trained_model, canary_percent=25)
    try:
        first = cloud.run_job(metrics=GOOD)
        assert cloud.deliver_until_acked(*cloud.sink_entry(first, "sink-1")) == 200
        assert [share for _, share in cloud.serving().values()] == [100]  # nothing to share with
        better = cloud.run_job(metrics={"val_accuracy": 0.95})
        assert cloud.deliver_until_acked(*cloud.sink_entry(better, "sink-2")) == 200
        shares = sorted(cloud.serving().values())
        assert shares == [("1", 75), ("2", 25)], shares  # the canary serves its 25%
        ticks = []

        def promoted_by_a_tick() -> bool:
            # canary_seconds = 1 must pass before a tick may promote the canary; the ticks
            # before that leave it serving its share.
            ticks.append(f"tick-{len(ticks) + 1}")
            assert cloud.deliver_until_acked(*cloud.tick(ticks[-1])) == 200
            return list(cloud.serving().values()) == [("2", 100)]

        wait_until(promoted_by_a_tick, what="the canary's promotion by a tick", timeout=60)
        assert cloud.deliver_until_acked(*cloud.tick("tick-after-promotion")) == 200
        assert list(cloud.serving().values()) == [("2", 100)]  # promoted, the old one gone
        champion = [v.version_id for v in cloud.versions() if "champion" in v.version_aliases]
        assert champion == ["2"]
        texts = cloud.webhook.texts()
        assert len(texts) == 2 and all("deployed" in t for t in texts), texts
    finally:
        cloud.stop()
