"""The shipped pipelines config follows the schema and names what Terraform creates."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.infra.terraform import TERRAFORM_DIR, Module, load_hcl

EXAMPLE = TERRAFORM_DIR / "pipelines.example.toml"


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def names(module: Module) -> dict[str, str]:
    """Names Terraform gives resources with terraform.tfvars.example's values."""
    tfvars = load_hcl(TERRAFORM_DIR / "terraform.tfvars.example")
    project, region = tfvars["project_id"], tfvars["region"]
    assert "name_prefix" not in tfvars, "the example relies on the project id as prefix"
    assert module.locals["prefix"] == "${coalesce(var.name_prefix, var.project_id)}"

    def bucket(name: str) -> str:
        template: str = module.resource(f"google_storage_bucket.{name}")["name"]
        return template.replace("${local.prefix}", project)

    repository = module.resource("google_artifact_registry_repository.images")["repository_id"]
    trainer = module.resource("google_service_account.trainer")["account_id"]
    return {
        "project": project,
        "region": region,
        "landing": bucket("landing"),
        "artifacts": bucket("artifacts"),
        "state": bucket("state"),
        "registry": f"{region}-docker.pkg.dev/{project}/{repository}",
        "trainer": f"{trainer}@{project}.iam.gserviceaccount.com",
    }


def test_example_passes_the_functions_config_validation() -> None:
    from retrain.config import parse_config

    config = parse_config(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert config.pipeline("churn") is not None


def test_example_names_the_deployed_resources(
    example: dict[str, Any], names: dict[str, str]
) -> None:
    defaults = example["defaults"]
    assert defaults["project"] == names["project"]
    assert defaults["region"] == names["region"]
    assert defaults["state_uri"].startswith(f"gs://{names['state']}/")
    assert defaults["output_uri"] == f"gs://{names['artifacts']}/runs"
    assert example["guards"]["allowed_buckets"] == [names["landing"]]
    for name, pipeline in example["pipelines"].items():
        assert pipeline["bucket"] == names["landing"], name
        assert pipeline["training"]["image_uri"] == f"{names['registry']}/trainer:latest"
        assert pipeline["training"]["service_account"] == names["trainer"]
        assert pipeline["deploy"]["serving_image_uri"] == f"{names['registry']}/serving:latest"
        assert pipeline["notify"]["pubsub_topic"] == (
            f"projects/{names['project']}/topics/retrain-notifications"
        )
