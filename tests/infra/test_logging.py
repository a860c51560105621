"""Job endings: the sink with the shared filter file, the alert for humans, the tick."""

from __future__ import annotations

import base64
import json
import re

from localcloud.router import SHARED_FILTER_PATH
from tests.infra.terraform import TERRAFORM_DIR, Module, block, expression, reference

_FILE_IN_MODULE = re.compile(r'file\("\$\{path\.module\}/(?P<path>[^"]+)"\)')


def test_sink_filter_is_the_file_localcloud_reads(module: Module) -> None:
    sink = module.resource("google_logging_project_sink.job_events")
    found = _FILE_IN_MODULE.search(expression(sink["filter"]) or "")
    assert found, f"the sink filter is not read from a file: {sink['filter']!r}"
    shared = (TERRAFORM_DIR / found.group("path")).resolve()
    assert shared == SHARED_FILTER_PATH.resolve()
    assert 'resource.type="ml_job"' in shared.read_text(encoding="utf-8")


def test_sink_publishes_to_job_events(module: Module) -> None:
    sink = module.resource("google_logging_project_sink.job_events")
    name, key = reference(sink["destination"], "google_pubsub_topic")
    assert sink["destination"].startswith("pubsub.googleapis.com/")
    assert module.instances(f"google_pubsub_topic.{name}")[key]["name"] == "job-events"
    assert sink["unique_writer_identity"] is True
    writer = module.resource("google_pubsub_topic_iam_member.sink_publishes_job_events")
    assert writer["member"] == "${google_logging_project_sink.job_events.writer_identity}"
    assert writer["role"] == "roles/pubsub.publisher"
    assert reference(writer["topic"], "google_pubsub_topic") == (name, key)


def test_job_failure_alert_pages_humans_and_names_the_job(module: Module) -> None:
    (policy,) = module.of_type("google_monitoring_alert_policy").values()
    condition = block(block(policy, "conditions"), "condition_matched_log")
    # A heredoc comes back as an escaped string.
    log_filter = condition["filter"].replace('\\"', '"')
    assert 'resource.type="ml_job"' in log_filter
    assert 'resource.labels.task_name="service"' in log_filter
    assert '=~"^Job failed"' in log_filter

    strategy = block(policy, "alert_strategy")
    assert block(strategy, "notification_rate_limit")["period"]
    assert strategy["auto_close"]

    # `$${` is HCL's escape: the alert sees ${resource.labels.job_id}.
    documentation = block(policy, "documentation")
    assert "$${resource.labels.job_id}" in documentation["content"]

    email = module.resource("google_monitoring_notification_channel.email")
    assert email["type"] == "email"
    assert email["labels"]["email_address"] == "${var.alert_email}"
    channels = policy["notification_channels"]
    assert "google_monitoring_notification_channel.email.id" in channels
    assert "google_monitoring_notification_channel.job_events[*].id" in channels


def test_optional_incident_channel_goes_to_job_events(module: Module) -> None:
    channel = module.resource("google_monitoring_notification_channel.job_events")
    assert channel["count"] == "${var.alert_to_job_events ? 1 : 0}"
    assert channel["type"] == "pubsub"
    name, key = reference(channel["labels"]["topic"], "google_pubsub_topic")
    assert module.instances(f"google_pubsub_topic.{name}")[key]["name"] == "job-events"


def test_scheduler_ticks_every_minute(module: Module) -> None:
    (job,) = module.of_type("google_cloud_scheduler_job").values()
    assert job["schedule"] == "* * * * *"
    target = block(job, "pubsub_target")
    assert json.loads(base64.b64decode(target["data"])) == {"tick": True}
    name, key = reference(target["topic_name"], "google_pubsub_topic")
    assert module.instances(f"google_pubsub_topic.{name}")[key]["name"] == "retrain-ticks"
