"""Hostile retrain requests, found from outside, with the field each must be refused on and
a phrase of the refusal, and deliveries that could never succeed with the 4xx each must
get. Shared by the unit tests (fakes), the contract tests (the served function) and the
reliability report. The pipeline is `churn`: bucket `acme-landing` in SAMPLE_CONFIG and
`landing-N` in the contract config, so `{landing}` is filled in by the caller."""

from __future__ import annotations

import json
from typing import Any

HUGE = "9" * 5000  # past Python's int-conversion limit (4300 digits)

# (name, JSON text of the message data, field, phrase of the refusal)
CASES: list[tuple[str, str, str, str]] = [
    ("dot-dot segment", '{"data_uri": "gs://{landing}/churn/../other/"}', "data_uri", "'..'"),
    ("dot segment", '{"data_uri": "gs://{landing}/churn/./x/"}', "data_uri", "'.'"),
    ("empty segment", '{"data_uri": "gs://{landing}//churn/"}', "data_uri", "empty path"),
    ("line break and a flag", '{"data_uri": "gs://b/p\\n--epochs=999"}', "data_uri", "control"),
    ("tab", '{"data_uri": "gs://{landing}/churn/\\tx"}', "data_uri", "control"),
    ("space", '{"data_uri": "gs://{landing}/churn/a b"}', "data_uri", "whitespace"),
    ("bidi override", '{"data_uri": "gs://{landing}/churn/\\u202ex"}', "data_uri", "control"),
    ("zero-width space", '{"data_uri": "gs://{landing}/\\u200bchurn/"}', "data_uri", "control"),
    ("percent-escape", '{"data_uri": "gs://{landing}/churn/%2e%2e/x"}', "data_uri", "percent"),
    ("query", '{"data_uri": "gs://{landing}/churn/?x=1"}', "data_uri", "query"),
    ("fragment", '{"data_uri": "gs://{landing}/churn/#x"}', "data_uri", "fragment"),
    ("lookalike bucket", '{"data_uri": "gs://{landing}.evil/churn/"}', "data_uri", "not allowed"),
    ("uppercase bucket", '{"data_uri": "gs://{LANDING}/churn/"}', "data_uri", "not allowed"),
    ("trailing dot bucket", '{"data_uri": "gs://{landing}./churn/"}', "data_uri", "not allowed"),
    ("other scheme", '{"data_uri": "GS://{landing}/churn/"}', "data_uri", "gs:// URI"),
    ("empty data_uri", '{"data_uri": ""}', "data_uri", "non-empty string"),
    ("numeric data_uri", '{"data_uri": 7}', "data_uri", "non-empty string"),
    ("hyperparameters 0", '{"hyperparameters": 0}', "hyperparameters", "must be an object"),
    ("hyperparameters false", '{"hyperparameters": false}', "hyperparameters", "object"),
    ("hyperparameters list", '{"hyperparameters": [1]}', "hyperparameters", "object"),
    ("overflow to infinity", '{"hyperparameters": {"lr": 1e999}}', "hyperparameters.lr", "finite"),
    ("NaN", '{"hyperparameters": {"lr": NaN}}', "hyperparameters.lr", "finite"),
    ("-Infinity", '{"hyperparameters": {"lr": -Infinity}}', "hyperparameters.lr", "finite"),
    ("bool for int", '{"hyperparameters": {"batch_size": true}}', "hyperparameters.batch_size", "int"),
    ("float for int", '{"hyperparameters": {"batch_size": 2.5}}', "hyperparameters.batch_size", "int"),
    ("string for float", '{"hyperparameters": {"lr": "0.1"}}', "hyperparameters.lr", "float"),
    ("past int64", '{"hyperparameters": {"batch_size": 1' + "0" * 30 + '}}', "hyperparameters.batch_size", "64-bit"),
    ("thousands of digits", '{"hyperparameters": {"batch_size": ' + HUGE + "}}", "hyperparameters.batch_size", "out of range"),
    ("unknown key", '{"hyperparameters": {"epochs": 999}}', "hyperparameters.epochs", "cannot be overridden"),
    ("unknown field", '{"epochs": 999}', "epochs", "unknown field"),
    ("reason not text", '{"reason": {"a": 1}}', "reason", "string"),
]  # fmt: skip


def payload(text: str, landing: str) -> bytes:
    """The message data: `text` with the pipeline added and the bucket filled in."""
    body = text.replace("{landing}", landing).replace("{LANDING}", landing.upper())
    return ('{"pipeline": "churn", ' + body.removeprefix("{")).encode()


def ids() -> list[str]:
    return [name for name, *_ in CASES]


def params() -> list[Any]:
    return [case[1:] for case in CASES]


def unservable(
    headers: dict[str, str], envelope: Any
) -> list[tuple[str, dict[str, str], Any, int]]:
    """Deliveries that would fail inside functions-framework, built around one binary-mode
    Pub/Sub delivery (`headers`, `envelope`): (name, headers, raw body, the 4xx it must get)."""
    event = {"specversion": "1.0", "id": headers["ce-id"], "source": headers["ce-source"],
             "type": headers["ce-type"], "data": envelope}  # fmt: skip
    structured = {"content-type": "application/cloudevents+json"}
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("batch-mode CloudEvents", {"content-type": "application/cloudevents-batch+json"},
         json.dumps([event]), 415),
        ("JSON nested 100,000 deep", structured, f'{{"data": {deep}}}', 400),
        ("an integer of 5,000 digits", headers, '{"message": {"messageId": ' + HUGE + "}}", 400),
        ("bytes that are not UTF-8", structured, b"\xff\xfe{}", 400),
        ("a body of 40 MiB", structured, b" " * (40 << 20), 413),
    ]  # fmt: skip
