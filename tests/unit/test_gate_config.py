"""GIVEN the deploy table's gate keys WHEN parsed THEN frozen values, or an error naming
the key: gates, eval_uri, on_schema_change."""

from __future__ import annotations

import pytest

from retrain.config import GateCondition, parse_config
from retrain.errors import ConfigError
from tests.fakes import SAMPLE_CONFIG

DEPLOY = """
[pipelines.churn.deploy]
model = "churn"
endpoint = "churn"
serving_image_uri = "us-docker.pkg.dev/acme-ml/retrain/serving:latest"
"""


def _parse(extra: str):
    return parse_config(SAMPLE_CONFIG + DEPLOY + extra, "pipelines.toml")


def test_gate_keys_parse_and_default():
    plain = _parse("").pipelines["churn"].deploy
    assert plain is not None
    assert (plain.gates, plain.eval_uri, plain.on_schema_change) == ((), None, "reject")

    deploy = (
        _parse(
            'gates = [{ metric = "val_loss", max = 0.5 }, { metric = "val_recall", min = 0.6, max = 1 }]\n'
            'eval_uri = "gs://acme-landing/churn-eval/golden.csv"\n'
            'on_schema_change = "judge_alone"\n'
        )
        .pipelines["churn"]
        .deploy
    )

    assert deploy is not None
    assert deploy.gates == (
        GateCondition("val_loss", max=0.5),
        GateCondition("val_recall", 0.6, 1.0),
    )
    assert deploy.eval_uri == "gs://acme-landing/churn-eval/golden.csv"
    assert deploy.on_schema_change == "judge_alone"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('gates = { metric = "val_loss" }', "pipelines.churn.deploy.gates: must be a list"),
        ('gates = ["val_loss"]', "pipelines.churn.deploy.gates[0] must be a table"),
        ("gates = [{ max = 0.5 }]", "pipelines.churn.deploy.gates[0].metric: is required"),
        ('gates = [{ metric = "val_loss" }]', "pipelines.churn.deploy.gates[0]: needs min or max"),
        ('gates = [{ metric = "val_loss", max = "low" }]', "gates[0].max: must be a number"),
        (
            'gates = [{ metric = "a", min = 0.1 }, { metric = "b", min = 0.9, max = 0.1 }]',
            "pipelines.churn.deploy.gates[1].min: 0.9 is above max 0.1",
        ),
        ('gates = [{ metric = "a", min = 0.1, above = 1 }]', "gates[0].above: unknown key"),
        ('eval_uri = "/data/golden.csv"', "deploy.eval_uri: must be a gs://bucket/path URI"),
        ('eval_uri = "gs://acme-landing"', "deploy.eval_uri: must be a gs://bucket/path URI"),
        ('eval_uri = ""', "deploy.eval_uri: must be a non-empty string"),
        (
            'eval_uri = "gs://other/golden.csv"',
            "eval_uri: bucket 'other' is not in guards.allowed_buckets",
        ),
        (
            'eval_uri = "gs://acme-landing/a/../b.csv"',
            "eval_uri: 'gs://acme-landing/a/../b.csv' has an empty",
        ),
        (
            'eval_uri = "gs://acme-landing/a b.csv"',
            "eval_uri: 'gs://acme-landing/a b.csv' holds whitespace",
        ),
        (
            'on_schema_change = "ignore"',
            "deploy.on_schema_change: must be one of reject, judge_alone",
        ),
    ],
)
def test_invalid_gate_keys_are_named(extra: str, message: str):
    with pytest.raises(ConfigError) as caught:
        _parse(extra + "\n")
    assert str(caught.value).startswith("pipelines.toml: ")
    assert message in str(caught.value)
