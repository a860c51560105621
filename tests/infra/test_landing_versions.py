"""The landing bucket keeps overwritten data as noncurrent versions, for a configurable
number of days: what lets a run be rerun on exactly the generations it pinned."""

from __future__ import annotations

from tests.infra.terraform import Module, block


def test_landing_bucket_keeps_noncurrent_versions_for_the_configured_days(module: Module) -> None:
    landing = module.resource("google_storage_bucket.landing")
    assert block(landing, "versioning")["enabled"] is True
    (rule,) = landing["lifecycle_rule"]
    condition = block(rule, "condition")
    assert condition["days_since_noncurrent_time"] == "${var.landing_noncurrent_retention_days}"
    assert condition["with_state"] == "ARCHIVED"  # live objects are never deleted by it
    assert block(rule, "action")["type"] == "Delete"
