"""Outputs: what a user needs after `terraform apply`."""

from __future__ import annotations

import re

from tests.infra.terraform import Module


def test_names_and_urls_are_output(module: Module) -> None:
    assert set(module.outputs) >= {"buckets", "topics", "function_urls", "commands"}
    assert set(module.outputs["buckets"]["value"]) == {"landing", "artifacts", "state"}
    assert module.outputs["function_urls"]["value"] == "${local.function_uri}"


def test_try_it_commands(module: Module) -> None:
    commands = module.outputs["commands"]["value"]
    landing = "gs://${google_storage_bucket.landing.name}/${var.try_prefix}"
    drop = re.fullmatch(
        r"GOOGLE_CLOUD_PROJECT=\$\{var\.project_id\} retrain drop PATH\.\.\. --to (\S+)",
        commands["retrain_drop"],
    )
    assert drop is not None, commands["retrain_drop"]
    assert drop.group(1) == landing
    assert commands["retrain_request"] == (
        "GOOGLE_CLOUD_PROJECT=${var.project_id} retrain request ${var.try_pipeline} "
        f"--data-uri {landing}"
    )
    assert module.variables["try_prefix"]["default"].endswith("/")
