"""GIVEN a pipelines TOML WHEN parsed THEN frozen values, or an error naming file and key."""

from __future__ import annotations

import pytest

from retrain.config import parse_config
from retrain.errors import ConfigError
from tests.fakes import SAMPLE_CONFIG


def test_sample_config_parses_with_defaults_applied():
    config = parse_config(SAMPLE_CONFIG, "pipelines.toml")
    churn = config.pipelines["churn"]
    assert churn.prefix == "churn/" and churn.trigger == "marker"
    assert churn.training.machine.accelerator_type == "NVIDIA_L4"
    assert churn.training.fallback[0].machine_type == "n1-standard-8"
    assert churn.training.hyperparameters == {"lr": 0.001, "batch_size": 256}
    events = config.pipelines["events"]
    assert events.include == ("*.csv",) and events.training.machine.accelerator_count == 0
    assert config.guards.max_concurrent_jobs == 2
    assert config.defaults.output_uri == "gs://acme-artifacts/runs"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('trigger = "marker"', 'trigger = "sometimes"', "pipelines.churn.trigger: must be one of"),
        ('strategy = "spot"', 'strategy = "cheap"', "pipelines.churn.training.strategy"),
        (
            'machine_type = "g2-standard-8"',
            'machine_type = "a3-highgpu-8g"',
            "not in guards.allowed_machine_types",
        ),
        (
            "accelerator_count = 1\nreplica_count",
            "accelerator_count = 8\nreplica_count",
            "exceeds guards.max_accelerator_count",
        ),
        ("replica_count = 2", "replica_count = 9", "exceeds guards.max_replica_count"),
        (
            'prefix = "churn/"',
            'prefix = "churn/"\nprefx = "x"',
            "pipelines.churn.prefx: unknown key",
        ),
        (
            'state_uri = "gs://acme-state/state"',
            'state_uri = "/tmp/state"',
            "defaults.state_uri: must be a gs:// URI",
        ),
        (
            "timeout_seconds = 14400",
            'timeout_seconds = "4h"',
            "pipelines.churn.training.timeout_seconds: must be an integer",
        ),
        (
            'bucket = "acme-landing"\nprefix = "churn/"',
            'bucket = "other"\nprefix = "churn/"',
            "not in guards.allowed_buckets",
        ),
        (
            'image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"\nargs',
            "args",
            "pipelines.churn.training.image_uri: is required",
        ),
        (
            "[pipelines.churn.training.hyperparameters]\nlr = 0.001",
            "[pipelines.churn.training.hyperparameters]\nlr = [1]",
            "hyperparameters.lr",
        ),
    ],
)
def test_invalid_config_names_file_and_key(old, new, message):
    assert old in SAMPLE_CONFIG
    with pytest.raises(ConfigError) as caught:
        parse_config(SAMPLE_CONFIG.replace(old, new, 1), "pipelines.toml")
    assert str(caught.value).startswith("pipelines.toml: ")
    assert message in str(caught.value)


def test_invalid_toml_and_empty_config():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[defaults\n", "bad.toml")
    with pytest.raises(ConfigError, match=r"defaults\.state_uri: is required"):
        parse_config("[pipelines]\n", "empty.toml")
