"""What a retrain request may ask for (DESIGN.md "Contract: retrain request message").

Everything in a request ends up on a training job's command line or in its run record, so
it is checked here, once, against the config: a clean `gs://bucket/path` in an allowed
bucket, and overrides of known hyperparameters with values of the default's type. The
trigger (through the planner) and `retrain request` both call `check`, so a request the
command line accepts is a request the function accepts.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrain.config import Config, Pipeline
from retrain.errors import shown
from retrain.events import MalformedRequest, RetrainRequested
from retrain.safejson import HugeNumber

MAX_URI = 2048  # characters: gs:// + a 222-character bucket + a 1024-byte object name
MAX_TEXT = 256  # characters of a string hyperparameter
INT64 = (-(2**63), 2**63 - 1)
_RUN_ID = re.compile(
    r"[0-9a-f]{16}"
)  # planner.run_id_for  # what TOML (and so the defaults) can hold


@dataclass(frozen=True)
class Accepted:
    pipeline: Pipeline
    data_uri: str
    hyperparameters: Mapping[str, Any]


@dataclass(frozen=True)
class Refused:
    field: str  # "pipeline", "data_uri", "hyperparameters.lr", ...
    message: str  # a sentence that names the field

    def __str__(self) -> str:
        return self.message


def check(event: RetrainRequested | MalformedRequest, config: Config) -> Accepted | Refused:
    """The request as it will run, or the first reason it may not."""
    pipeline = config.pipeline(event.pipeline)
    if pipeline is None:
        known = ", ".join(sorted(config.pipelines))
        return Refused(
            "pipeline", f"unknown pipeline {shown(event.pipeline)} (configured: {known})"
        )
    if isinstance(event, MalformedRequest):
        return Refused(event.field, event.problem)
    if event.rerun_of is not None:
        problem = rerun_problem(event)
        if problem:
            return Refused("rerun_of", problem)
    data_uri = event.data_uri or pipeline.data_root
    allowed = config.guards.allowed_buckets or (pipeline.bucket,)
    problem = data_uri_problem(data_uri, allowed)
    if problem:
        return Refused("data_uri", f"data_uri {problem}")
    hyperparameters = dict(pipeline.training.hyperparameters)
    for key, value in event.hyperparameters.items():
        name = _field(key)
        if key not in hyperparameters:
            known = ", ".join(sorted(hyperparameters)) or "none"
            return Refused(name, f"{name} cannot be overridden (allowed: {known})")
        problem = value_problem(hyperparameters[key], value)
        if problem:
            return Refused(name, f"{name} {problem}")
        hyperparameters[key] = float(value) if isinstance(hyperparameters[key], float) else value
    return Accepted(pipeline, data_uri, hyperparameters)


def rerun_problem(event: RetrainRequested) -> str | None:
    """Why a rerun request may not run, or None: it names a run id, and takes nothing that
    would change its inputs (those are the original run's)."""
    run_id = event.rerun_of or ""
    if not _RUN_ID.fullmatch(run_id):
        return f"rerun_of must be a run id (16 hex digits), not {shown(run_id)}"
    if event.data_uri is not None or event.hyperparameters:
        return (
            "rerun_of: a rerun trains on the original run's inputs and hyperparameters; "
            "it takes no data_uri or hyperparameters"
        )
    return None


def data_uri_problem(uri: str, allowed_buckets: tuple[str, ...]) -> str | None:
    """Why `uri` is not a clean gs://BUCKET/PATH in one of `allowed_buckets`, or None."""
    if len(uri) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    if not uri.startswith("gs://"):
        return f"must be a gs:// URI, not {shown(uri)}"
    odd = next((c for c in uri if _is_control_or_space(c)), None)
    if odd is not None:
        return f"must not contain control characters or whitespace ({shown(odd)})"
    for char, meaning in (("%", "percent-escapes"), ("?", "a query"), ("#", "a fragment")):
        if char in uri:
            return f"must not contain {meaning} ({char!r})"
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    # Exact match: no case folding, no trailing dots, no lookalikes of an allowed name.
    if bucket not in allowed_buckets:
        return (
            f"bucket {shown(bucket)} is not allowed "
            f"(guards.allowed_buckets: {', '.join(allowed_buckets)})"
        )
    segments = path.split("/")
    if path.endswith("/"):
        segments.pop()  # a trailing slash names a folder
    for segment in segments if path else ():
        if segment in ("", ".", ".."):
            return f"must not contain {shown(segment) if segment else 'empty'} path segments"
    return None


def object_name_problem(name: str) -> str | None:
    """Why an object name may not start a run, or None. Data events keep GCS's wider rules
    (spaces and `//` are legal names) but not control characters, which GCS refuses
    anyway, nor `.`/`..` segments, which would let a run's data URI leave its prefix."""
    odd = next((c for c in name if _is_control(c)), None)
    if odd is not None:
        return f"object name contains a control character ({shown(odd)})"
    if any(segment in (".", "..") for segment in name.split("/")):
        return "object name has a '.' or '..' segment"
    return None


def value_problem(default: Any, value: Any) -> str | None:
    """Why `value` may not replace the hyperparameter whose default is `default`."""
    expected = type(default).__name__
    if isinstance(value, HugeNumber):
        return f"is out of range ({value!r})"
    # bool is an int in Python: a request must not turn a flag into a number or back.
    if isinstance(default, bool) or isinstance(value, bool):
        same = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        same = isinstance(value, int | float)
    else:
        same = type(default) is type(value)
    if not same:
        return f"must be {expected}, not {type(value).__name__} ({shown(value)})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {shown(value)}"
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return "is out of the 64-bit integer range"
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            return f"must be at most {MAX_TEXT} characters"
        odd = next((c for c in value if _is_control(c)), None)
        if odd is not None:
            return f"must not contain control characters ({shown(odd)})"
    return None


def _field(key: Any) -> str:
    # The field name goes into log records and messages: quote keys that are not plain.
    text = str(key)
    if text.isidentifier() and text.isascii():
        return f"hyperparameters.{text}"
    return f"hyperparameters[{shown(key)}]"


def _is_control(char: str) -> bool:
    # Cc controls, Cf format characters (bidi overrides, zero-width), Cs lone surrogates,
    # Co private use, Cn unassigned, and the line/paragraph separators.
    return unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp")


def _is_control_or_space(char: str) -> bool:
    return _is_control(char) or char.isspace() or unicodedata.category(char) == "Zs"
