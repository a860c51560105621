"""GIVEN a notification WHEN rendered THEN people read each fact once, and a request's own
text cannot add lines to the message."""

from __future__ import annotations

from retrain import notify
from retrain.config import parse_config
from retrain.notify import Notification
from tests.fakes import SAMPLE_CONFIG

JOB = "projects/acme-ml/locations/us-central1/customJobs/2208815734829776896"


def failed(error: str | None) -> Notification:
    return Notification(
        kind=notify.FAILED, pipeline="churn", run_id="r1", job=JOB, state="JOB_STATE_FAILED",
        project="acme-ml", region="us-central1", error=error,
    )  # fmt: skip


def test_a_failed_run_shows_its_error_once():
    for error in (
        "error: bad CSV in part-3",
        "Error: bad CSV in part-3",
        "error:error: bad CSV in part-3",
    ):
        text = notify.text(failed(error))
        assert "error: bad CSV in part-3" in text.splitlines()
        assert text.lower().count("error:") == 1
        assert notify.document(failed(error))["error"] == "bad CSV in part-3"
    assert "error: The replica workerpool0-0 exited" in notify.text(
        failed("The replica workerpool0-0 exited")
    )
    assert "error:" not in notify.text(failed(None))


def test_a_rejected_request_names_message_field_and_reason_without_job_links():
    message = notify.request_rejection(
        "churn", "r1", "m-1\n--x", "data_uri", "data_uri must not contain '..' path segments",
        requester="ana\nbob", project="acme-ml", region="us-central1",
    )  # fmt: skip
    text = notify.text(message)
    assert text.splitlines() == [
        "[retrain] churn: retrain request 'm-1\\n--x' rejected",
        "field: data_uri",
        "reason: data_uri must not contain '..' path segments",
        "requester: 'ana\\nbob'",
    ]
    document = notify.document(message)
    assert document["kind"] == "request_rejected" and document["links"] == {}
    assert (document["message_id"], document["field"]) == ("m-1\n--x", "data_uri")


def test_request_rejected_is_a_notify_kind_of_the_config():
    config = parse_config(
        SAMPLE_CONFIG + '[pipelines.churn.notify]\non = ["request_rejected"]\n', "p.toml"
    )
    churn = config.pipelines["churn"].notify
    assert notify.wanted(churn, notify.REQUEST_REJECTED)
    assert not notify.wanted(churn, notify.FAILED)


def test_job_links_open_the_page_of_the_kind_of_job_that_ran():
    custom = notify.links(failed("boom"))["job"]
    assert custom == (
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/training/"
        "2208815734829776896/cpu?project=acme-ml"
    )
    tuning_job = JOB.replace("customJobs", "hyperparameterTuningJobs")
    tuned = Notification(
        kind=notify.FAILED, pipeline="churn", run_id="r1", job=tuning_job,
        state="JOB_STATE_FAILED", project="acme-ml", region="us-central1",
    )  # fmt: skip
    assert notify.links(tuned)["job"] == (
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/training/"
        "2208815734829776896?project=acme-ml"
    )
