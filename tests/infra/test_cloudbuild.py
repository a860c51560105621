"""infra/cloudbuild.yaml builds both images from trainer/ and pushes them to the repository."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.infra.terraform import REPO_ROOT, Module

CLOUDBUILD = REPO_ROOT / "infra" / "cloudbuild.yaml"
TRAINER = REPO_ROOT / "trainer"
# The development environment has no YAML parser; checkov's environment has PyYAML.
YAML_PYTHON = REPO_ROOT / ".venv-checkov" / "bin" / "python"
REGISTRY = "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}"
IMAGES = {"trainer": "Dockerfile", "serving": "Dockerfile.serving"}


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    read = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    completed = subprocess.run(
        [str(YAML_PYTHON), "-c", read, str(CLOUDBUILD)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded: dict[str, Any] = json.loads(completed.stdout)
    return loaded


def test_both_images_are_built_from_the_trainer_directory(build: dict[str, Any]) -> None:
    built = {}
    for step in build["steps"]:
        args = step["args"]
        assert args[0] == "build" and args[-1] == ".", "the build context is trainer/ itself"
        dockerfile = next(arg.removeprefix("--file=") for arg in args if arg.startswith("--file="))
        tag = next(arg.removeprefix("--tag=") for arg in args if arg.startswith("--tag="))
        built[tag] = dockerfile
    expected = {f"{REGISTRY}/{name}:${{_TAG}}": dockerfile for name, dockerfile in IMAGES.items()}
    assert built == expected
    assert sorted(build["images"]) == sorted(expected)


def test_dockerfiles_exist() -> None:
    for dockerfile in IMAGES.values():
        assert (TRAINER / dockerfile).is_file(), f"trainer/{dockerfile} is missing"


def test_substitutions_match_the_repository(build: dict[str, Any], module: Module) -> None:
    substitutions = build["substitutions"]
    assert set(substitutions) == {"_REGION", "_REPOSITORY", "_TAG"}
    repository = module.resource("google_artifact_registry_repository.images")
    assert substitutions["_REPOSITORY"] == repository["repository_id"]
    assert substitutions["_REGION"] == module.variables["region"]["default"]
    # A build running as a user-managed account must log to Cloud Logging only.
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"
