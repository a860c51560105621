"""GIVEN a retrain request and the config WHEN checked THEN the request as it will run, or
the first field at fault — the one check the trigger and `retrain request` share."""

from __future__ import annotations

import pytest

from retrain.config import parse_config
from retrain.events import MalformedRequest, RetrainRequested
from retrain.request_rules import Accepted, Refused, check, data_uri_problem, value_problem
from tests.fakes import SAMPLE_CONFIG

CONFIG = parse_config(SAMPLE_CONFIG, "pipelines.toml")
ALLOWED = ("acme-landing",)


@pytest.mark.parametrize(
    "uri",
    [
        "gs://acme-landing",
        "gs://acme-landing/",
        "gs://acme-landing/churn/2026-11-26/",
        "gs://acme-landing/churn/part-0001.csv",
        "gs://acme-landing/données/été/",
        "gs://acme-landing/a.b/c..d/...e",  # dots inside a segment are names, not steps
    ],
)
def test_clean_uris_in_an_allowed_bucket_pass(uri):
    assert data_uri_problem(uri, ALLOWED) is None


@pytest.mark.parametrize(
    ("uri", "phrase"),
    [
        ("gs://acme-landing/churn/..", "'..' path segments"),
        ("gs://acme-landing/./", "'.' path segments"),
        ("gs://acme-landing/a//", "empty path segments"),
        ("gs://acme-landing/a\r", "control characters"),
        ("gs://acme-landing/a\u00a0b", "whitespace"),
        ("gs://acme-landing/a\u2028b", "control characters"),
        ("gs://acme-landing/a%0a", "percent-escapes"),
        ("gs://acme-l\u0430nding/a", "not allowed"),  # a Cyrillic a
        ("gs://acme-landing-2/a", "not allowed"),
        ("gs://acme/landing/a", "not allowed"),
        ("gs:/acme-landing/a", "gs:// URI"),
        ("s3://acme-landing/a", "gs:// URI"),
        ("gs://acme-landing/" + "a" * 2100, "longer than"),
    ],
)
def test_unclean_or_foreign_uris_are_refused(uri, phrase):
    problem = data_uri_problem(uri, ALLOWED)
    assert problem is not None and phrase in problem and len(problem) < 200


@pytest.mark.parametrize(
    ("default", "value", "ok"),
    [
        (0.001, 0.5, True),
        (0.001, 3, True),  # an int is a fine float
        (0.001, True, False),
        (0.001, float("inf"), False),
        (0.001, float("nan"), False),
        (256, 512, True),
        (256, 2**63, False),
        (256, -(2**63), True),
        (256, 1.0, False),
        (True, False, True),
        (True, 1, False),
        ("adamw", "sgd", True),
        ("adamw", "x" * 257, False),
        ("adamw", "sgd\n--epochs=999", False),
        ("adamw", 1, False),
    ],
)
def test_override_values_keep_the_default_type_and_stay_finite(default, value, ok):
    assert (value_problem(default, value) is None) is ok


def test_accepted_request_merges_overrides_into_the_defaults():
    verdict = check(RetrainRequested("m", "churn", None, {"lr": 1}), CONFIG)
    assert isinstance(verdict, Accepted)
    assert verdict.data_uri == "gs://acme-landing/churn/"
    assert verdict.hyperparameters == {"lr": 1.0, "batch_size": 256}
    assert isinstance(verdict.hyperparameters["lr"], float)


def test_without_allowed_buckets_only_the_pipelines_own_bucket_is_allowed():
    config = parse_config(
        SAMPLE_CONFIG.replace('allowed_buckets = ["acme-landing"]', ""), "pipelines.toml"
    )
    own = check(RetrainRequested("m", "churn", "gs://acme-landing/x/"), config)
    other = check(RetrainRequested("m", "churn", "gs://elsewhere/x/"), config)
    assert isinstance(own, Accepted)
    assert isinstance(other, Refused) and "'elsewhere' is not allowed" in other.message


def test_a_malformed_request_is_refused_on_its_field_and_an_unknown_pipeline_first():
    malformed = MalformedRequest("m", "churn", "hyperparameters", "hyperparameters must be…")
    assert check(malformed, CONFIG) == Refused("hyperparameters", "hyperparameters must be…")
    unknown = check(MalformedRequest("m", "nope", "hyperparameters", "…"), CONFIG)
    assert isinstance(unknown, Refused) and unknown.field == "pipeline"
    assert "configured: churn, clicks, events" in unknown.message
