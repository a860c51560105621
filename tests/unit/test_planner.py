"""The planner is pure: GIVEN event + config (+ snapshot) THEN a decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retrain.config import parse_config
from retrain.events import ObjectFinalized, RetrainRequested
from retrain.jobspec import build_job
from retrain.planner import (
    Admit,
    Ignore,
    Pending,
    Record,
    Reject,
    Submit,
    Wait,
    admit,
    plan_object,
    plan_quiet_flush,
    plan_request,
)
from tests.fakes import SAMPLE_CONFIG

CONFIG = parse_config(SAMPLE_CONFIG, "pipelines.toml")
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def obj(
    name: str, size: int = 100, bucket: str = "acme-landing", generation: int = 7
) -> ObjectFinalized:
    return ObjectFinalized("e-1", bucket, name, generation, size)


def only(decisions):
    assert len(decisions) == 1
    return decisions[0]


def test_each_mode_submits_one_run_per_generation():
    first = only(plan_object(obj("events/a.csv"), CONFIG))
    again = only(plan_object(obj("events/a.csv"), CONFIG))
    overwrite = only(plan_object(obj("events/a.csv", generation=8), CONFIG))
    assert isinstance(first, Submit) and first.run.data_uri == "gs://acme-landing/events/a.csv"
    assert isinstance(again, Submit) and again.run.run_id == first.run.run_id
    assert isinstance(overwrite, Submit) and overwrite.run.run_id != first.run.run_id


def test_marker_mode_records_data_and_submits_on_marker_with_folder_uri():
    data = only(plan_object(obj("churn/2026-11-26/part-0.csv"), CONFIG))
    marker = only(plan_object(obj("churn/2026-11-26/_SUCCESS", size=0), CONFIG))
    assert data == Record("churn", "churn/2026-11-26/part-0.csv@7")
    assert isinstance(marker, Submit)
    assert marker.run.data_uri == "gs://acme-landing/churn/2026-11-26/"
    assert marker.run.covers_folder == "churn/2026-11-26/"


def test_quiet_mode_records_then_flushes_after_quiet_period():
    recorded = only(plan_object(obj("clicks/x.json"), CONFIG))
    assert recorded == Record("clicks", "clicks/x.json@7")
    clicks = CONFIG.pipelines["clicks"]
    pending = [Pending("clicks/x.json@7", NOW - timedelta(seconds=100))]
    assert isinstance(plan_quiet_flush(clicks, pending, NOW), Ignore)
    flushed = plan_quiet_flush(clicks, pending, NOW + timedelta(seconds=200))
    assert isinstance(flushed, Submit)
    assert flushed.run.data_uri == "gs://acme-landing/clicks/"
    assert flushed.run.objects == ("clicks/x.json@7",)
    assert isinstance(plan_quiet_flush(clicks, [], NOW), Ignore)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (obj("events/empty.csv", size=0), "zero-byte"),
        (obj("events/notes.txt"), "matches none of include"),
        (obj("elsewhere/a.csv"), "no pipeline watches"),
        (obj("a.csv", bucket="other"), "no pipeline watches"),
        (obj("runs/churn/r1/model/metrics.json", bucket="acme-artifacts"), "own state or output"),
        (obj("state/runs/churn/r.json", bucket="acme-state"), "own state or output"),
    ],
)
def test_ignored_objects(event, reason):
    decision = only(plan_object(event, CONFIG))
    assert isinstance(decision, Ignore) and reason in decision.reason


def test_request_overrides_and_defaults():
    decision = plan_request(RetrainRequested("m-1", "churn", None, {"lr": 0.01}), CONFIG)
    assert isinstance(decision, Submit)
    assert decision.run.hyperparameters == {"lr": 0.01, "batch_size": 256}
    assert decision.run.data_uri == "gs://acme-landing/churn/"
    int_for_float = plan_request(RetrainRequested("m-2", "churn", None, {"lr": 1}), CONFIG)
    assert isinstance(int_for_float, Submit) and int_for_float.run.hyperparameters["lr"] == 1.0


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (RetrainRequested("m", "nope"), "unknown pipeline 'nope'"),
        (RetrainRequested("m", "churn", "gs://evil/x"), "bucket 'evil' is not allowed"),
        (RetrainRequested("m", "churn", "/local/path"), "must be a gs:// URI"),
        (
            RetrainRequested("m", "churn", None, {"epochs": 3}),
            "hyperparameters.epochs cannot be overridden",
        ),
        (
            RetrainRequested("m", "churn", None, {"batch_size": "big"}),
            "hyperparameters.batch_size must be int",
        ),
        (
            RetrainRequested("m", "churn", None, {"batch_size": True}),
            "hyperparameters.batch_size must be int",
        ),
    ],
)
def test_requests_outside_the_guards_are_rejected(request_, reason):
    decision = plan_request(request_, CONFIG)
    assert isinstance(decision, Reject) and reason in decision.reason


def test_admission_cap_and_cooldown():
    churn, clicks = CONFIG.pipelines["churn"], CONFIG.pipelines["clicks"]
    assert admit(churn, CONFIG, active_jobs=1, last_submit_at=None, now=NOW) == Admit()
    capped = admit(churn, CONFIG, active_jobs=2, last_submit_at=None, now=NOW)
    assert isinstance(capped, Wait) and "max_concurrent_jobs" in capped.reason
    cooling = admit(
        clicks, CONFIG, active_jobs=0, last_submit_at=NOW - timedelta(seconds=60), now=NOW
    )
    assert isinstance(cooling, Wait) and "cooldown" in cooling.reason
    later = admit(
        clicks, CONFIG, active_jobs=0, last_submit_at=NOW - timedelta(seconds=601), now=NOW
    )
    assert later == Admit()


def test_job_spec_follows_the_contract():
    decision = plan_request(
        RetrainRequested("m-1", "churn", "gs://acme-landing/churn/d/", {"lr": 0.01}), CONFIG
    )
    assert isinstance(decision, Submit)
    spec = build_job(CONFIG.pipelines["churn"], decision.run, CONFIG.defaults.output_uri)
    run_id = decision.run.run_id
    assert spec.display_name == f"retrain-churn-{run_id}"
    assert spec.labels["retrain-pipeline"] == "churn" and spec.labels["retrain-run"] == run_id
    assert spec.base_output_directory == f"gs://acme-artifacts/runs/churn/{run_id}"
    chief, workers = spec.worker_pools
    assert chief.replica_count == 1 and workers.replica_count == 1
    assert chief.machine.accelerator_type == "NVIDIA_L4"
    assert chief.args == (
        "--label=churned",
        "--epochs=20",
        "--data-uri=gs://acme-landing/churn/d/",
        "--batch_size=256",
        "--lr=0.01",
    )
    assert (spec.strategy, spec.timeout_seconds) == ("spot", 14400)
    assert spec.service_account == "trainer@acme-ml.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("churn/d1/\n--epochs=999/_SUCCESS", "control character"),
        ("churn/d1/\u202e_SUCCESS", "control character"),
        ("churn/../other/_SUCCESS", "'..' segment"),
        ("events/./a.csv", "'..' segment"),
    ],
)
def test_objects_whose_names_would_make_an_unclean_data_uri_are_ignored(name, reason):
    decision = only(plan_object(obj(name, size=0 if "_SUCCESS" in name else 9), CONFIG))
    assert isinstance(decision, Ignore) and reason in decision.reason
    assert "\n" not in decision.reason


def test_objects_with_odd_but_legal_names_are_planned():
    for name in ("events/ü ñ 😀.csv", "events/a b.csv", "events/x//y.csv"):
        decision = only(plan_object(obj(name), CONFIG))
        assert isinstance(decision, Submit) and decision.run.data_uri == f"gs://acme-landing/{name}"


def test_a_rejected_request_names_the_field():
    decision = plan_request(RetrainRequested("m", "churn", "gs://acme-landing/a/../b/"), CONFIG)
    assert isinstance(decision, Reject) and decision.field == "data_uri"
    unknown = plan_request(RetrainRequested("m", "nope"), CONFIG)
    assert isinstance(unknown, Reject) and unknown.field == "pipeline"
