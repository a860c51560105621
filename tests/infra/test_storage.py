"""Buckets: private, versioned where state lives, old runs cleaned up."""

from __future__ import annotations

from tests.infra.terraform import Module, block


def test_every_bucket_has_uniform_access_and_public_access_prevention(module: Module) -> None:
    buckets = module.of_type("google_storage_bucket")
    assert set(buckets) >= {"landing", "artifacts", "state"}
    for name, bucket in buckets.items():
        assert bucket.get("uniform_bucket_level_access") is True, name
        assert bucket.get("public_access_prevention") == "enforced", name


def test_state_bucket_is_versioned(module: Module) -> None:
    state = module.resource("google_storage_bucket.state")
    assert block(state, "versioning")["enabled"] is True


def test_old_runs_expire(module: Module) -> None:
    rules = module.resource("google_storage_bucket.artifacts")["lifecycle_rule"]
    assert any(
        block(rule, "condition").get("matches_prefix") == ["runs/"]
        and block(rule, "condition").get("age") == "${var.run_retention_days}"
        and block(rule, "action")["type"] == "Delete"
        for rule in rules
    )


def test_seen_markers_expire_after_every_redelivery_window(module: Module) -> None:
    rules = module.resource("google_storage_bucket.state")["lifecycle_rule"]
    assert any(
        block(rule, "condition").get("matches_prefix") == ["${var.state_prefix}seen/"]
        and block(rule, "condition").get("age") == "${var.seen_marker_days}"
        and block(rule, "action")["type"] == "Delete"
        for rule in rules
    )


def test_config_object_goes_to_the_state_bucket(module: Module) -> None:
    config = module.resource("google_storage_bucket_object.pipelines_config")
    assert config["bucket"] == "${google_storage_bucket.state.name}"
    assert config["name"] == "${local.config_object}"
