"""The shipped pipelines config follows the schema and names what Terraform creates."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.infra.terraform import TERRAFORM_DIR, Module, load_hcl
from trainer.package import project_version

EXAMPLE = TERRAFORM_DIR / "pipelines.example.toml"
PREBUILT_PYTORCH = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu."


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
        "trainer_package": trainer_package_uri(module, bucket("artifacts"), tfvars),
    }


def trainer_package_uri(module: Module, bucket: str, tfvars: dict[str, Any]) -> str:
    """Where Terraform puts the package tfvars names: the file `make trainer-package`
    builds for this version."""
    package = tfvars["trainer_package"]
    assert package == f"../../dist/retrain_trainer-{project_version()}.tar.gz"
    name = module.resource("google_storage_bucket_object.trainer_package")["name"]
    assert name == "packages/${basename(var.trainer_package)}"
    return f"gs://{bucket}/packages/{package.rsplit('/', 1)[-1]}"


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
        training = pipeline["training"]
        if "image_uri" in training:
            assert training["image_uri"] == f"{names['registry']}/trainer:latest"
        else:  # the trainer package Terraform uploads, on Google's prebuilt PyTorch image
            assert training["executor_image_uri"].startswith(PREBUILT_PYTORCH)
            assert training["package_uris"] == [names["trainer_package"]]
            assert training["python_module"] == "trainer.task"
        assert pipeline["training"]["service_account"] == names["trainer"]
        assert pipeline["deploy"]["serving_image_uri"] == f"{names['registry']}/serving:latest"
        assert pipeline["notify"]["pubsub_topic"] == (
            f"projects/{names['project']}/topics/retrain-notifications"
        )
