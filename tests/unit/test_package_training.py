"""GIVEN a pipeline whose training code is a Python package on a prebuilt container
WHEN the config is parsed and its job built THEN Vertex's python_package_spec shape, or an
error naming the file and the key at fault."""

from __future__ import annotations

import pytest

from retrain.config import PythonPackage, parse_config
from retrain.errors import ConfigError
from retrain.jobspec import build_job
from retrain.planner import RunPlan
from tests.fakes import SAMPLE_CONFIG

IMAGE_LINE = 'image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"\nargs'
EXECUTOR = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest"
PACKAGE = "gs://acme-artifacts/packages/retrain_trainer-0.2.0.tar.gz"
PACKAGE_FORM = f"""executor_image_uri = "{EXECUTOR}"
package_uris = ["{PACKAGE}"]
python_module = "trainer.task"
args"""
WHERE = "pipelines.toml: pipelines.churn.training"
PLAN = RunPlan("churn", "r1", "marker", "gs://acme-landing/churn/b1/", {"lr": 0.01})


def parse(old: str = IMAGE_LINE, new: str = PACKAGE_FORM):
    assert old in SAMPLE_CONFIG
    return parse_config(SAMPLE_CONFIG.replace(old, new, 1), "pipelines.toml")


def test_the_package_form_becomes_a_frozen_python_package():
    training = parse().pipelines["churn"].training
    assert training.image_uri == ""
    assert training.package == PythonPackage(EXECUTOR, (PACKAGE,), "trainer.task")
    # The other keys keep their meaning.
    assert training.args == ("--label=churned", "--epochs=20")
    assert training.machine.accelerator_type == "NVIDIA_L4"


def test_the_image_form_has_no_package():
    assert parse_config(SAMPLE_CONFIG, "p.toml").pipelines["churn"].training.package is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # Both forms at once: the first package key is named.
        (
            "args",
            f'executor_image_uri = "{EXECUTOR}"\nargs',
            "training.executor_image_uri: cannot be combined with image_uri",
        ),
        (
            "args",
            f'package_uris = ["{PACKAGE}"]\nargs',
            "training.package_uris: cannot be combined with image_uri",
        ),
        # Neither form.
        (IMAGE_LINE, "args", "training.image_uri: is required (or, for a Python package"),
        # A partial package form names the missing key.
        (
            IMAGE_LINE,
            f'package_uris = ["{PACKAGE}"]\npython_module = "trainer.task"\nargs',
            "training.executor_image_uri: is required",
        ),
        (
            IMAGE_LINE,
            f'executor_image_uri = "{EXECUTOR}"\npython_module = "trainer.task"\nargs',
            "training.package_uris: must list at least one gs:// URI",
        ),
        (
            IMAGE_LINE,
            f'executor_image_uri = "{EXECUTOR}"\npackage_uris = ["{PACKAGE}"]\nargs',
            "training.python_module: is required",
        ),
        (
            f'["{PACKAGE}"]',
            '["/home/me/dist/retrain_trainer-0.2.0.tar.gz"]',
            "training.package_uris: must hold gs://bucket/object URIs",
        ),
        (f'["{PACKAGE}"]', '["gs://acme-artifacts/packages/"]', "training.package_uris"),
        (f'["{PACKAGE}"]', '["gs://acme-artifacts/a b.tar.gz"]', "whitespace"),
        (f'["{PACKAGE}"]', f'"{PACKAGE}"', "training.package_uris: must be a list of strings"),
        ('"trainer.task"', '"trainer/task.py"', "training.python_module: must be a dotted"),
        ('"trainer.task"', '"trainer..task"', "training.python_module: must be a dotted"),
        (f'"{EXECUTOR}"', '""', "training.executor_image_uri: must be a non-empty string"),
    ],
)
def test_invalid_package_form_names_the_key(old: str, new: str, message: str) -> None:
    # Edits of the image form's lines start from the sample, the others from the package form.
    from_image = old in ("args", IMAGE_LINE)
    base = SAMPLE_CONFIG if from_image else SAMPLE_CONFIG.replace(IMAGE_LINE, PACKAGE_FORM, 1)
    assert old in base
    with pytest.raises(ConfigError) as caught:
        parse_config(base.replace(old, new, 1), "pipelines.toml")
    assert str(caught.value).startswith(WHERE)
    assert message in str(caught.value)


def test_the_job_of_a_package_pipeline_carries_the_package_in_every_pool():
    pipeline = parse().pipelines["churn"]
    job = build_job(pipeline, PLAN, "gs://acme-artifacts/runs")
    chief, workers = job.worker_pools  # replica_count = 2: a chief and one worker
    for pool in (chief, workers):
        assert pool.package == PythonPackage(EXECUTOR, (PACKAGE,), "trainer.task")
        assert pool.image_uri == ""
        # The module gets what a container would: pipeline args, the data, hyperparameters.
        assert pool.args == (
            "--label=churned",
            "--epochs=20",
            "--data-uri=gs://acme-landing/churn/b1/",
            "--lr=0.01",
        )
    assert (chief.replica_count, workers.replica_count) == (1, 1)
    assert job.base_output_directory == "gs://acme-artifacts/runs/churn/r1"


def test_the_job_of_an_image_pipeline_has_no_package():
    pipeline = parse_config(SAMPLE_CONFIG, "p.toml").pipelines["churn"]
    job = build_job(pipeline, PLAN, "gs://acme-artifacts/runs")
    assert all(pool.package is None for pool in job.worker_pools)
    assert job.worker_pools[0].image_uri == "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
