"""The pipelines config as frozen values: what `parse_config` returns.

The names and allowed values of each enumerated key live here too, so validation and the
code that acts on a value share one list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TRIGGER_MODES = ("each", "marker", "quiet")
STRATEGIES = ("standard", "spot", "flex_start")
GOALS = ("maximize", "minimize")
SCHEMA_CHANGE_POLICIES = ("reject", "judge_alone")
DATA_WINDOWS = ("batch", "all")  # or a table: { days = N }
# "rejected": the quality gate refused a model; "request_rejected": a retrain request was
# refused before any job (a bad field, a value outside the guards).
NOTIFY_KINDS = ("deployed", "rejected", "rolled_back", "failed", "cancelled", "request_rejected")
# Tuning: "default" is Vertex's own search (Vizier); "grid" and "random" name the others.
ALGORITHMS = ("default", "grid", "random")
PARAMETER_TYPES = ("double", "integer", "discrete", "categorical")
SCALES = ("linear", "log")
# A tuned parameter becomes `--<name>=<value>` and a Vertex parameter_id.
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Defaults:
    region: str
    state_uri: str
    output_uri: str
    project: str | None = None


@dataclass(frozen=True)
class Guards:
    allowed_buckets: tuple[str, ...] = ()
    allowed_machine_types: tuple[str, ...] = ()
    allowed_accelerators: tuple[str, ...] = ()
    max_accelerator_count: int | None = None
    max_replica_count: int | None = None
    max_concurrent_jobs: int | None = None
    max_trials: int = 32  # per tuning job
    max_parallel_trials: int = 4


@dataclass(frozen=True)
class Machine:
    machine_type: str
    accelerator_type: str | None = None
    accelerator_count: int = 0


@dataclass(frozen=True)
class PythonPackage:
    """Training code as Python packages on one of Google's prebuilt containers: Vertex's
    `python_package_spec` (`python -m <python_module> <args>` in `executor_image_uri`)."""

    executor_image_uri: str
    package_uris: tuple[str, ...]
    python_module: str


@dataclass(frozen=True)
class DataWindow:
    """Which objects a run trains on: its batch ("batch"), every matching object under the
    pipeline's prefix so far ("all"), or those created in the last `days` days ("days")."""

    kind: str = "batch"
    days: int | None = None


@dataclass(frozen=True)
class Training:
    image_uri: str  # "" when the code comes as a Python package (`package`)
    machine: Machine
    args: tuple[str, ...] = ()
    replica_count: int = 1
    strategy: str = "standard"
    timeout_seconds: int = 86400
    service_account: str | None = None
    fallback: tuple[Machine, ...] = ()
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    package: PythonPackage | None = None  # instead of image_uri
    data: DataWindow = field(default_factory=DataWindow)


@dataclass(frozen=True)
class GateCondition:
    """One more condition a model must meet: `metric` at least `min` and/or at most `max`."""

    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Parameter:
    """One tuned hyperparameter: a range (double, integer) or a list of values."""

    name: str
    type: str  # one of PARAMETER_TYPES
    min: float | None = None
    max: float | None = None
    scale: str = "linear"
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Tuning:
    """A HyperparameterTuningJob's study: what to optimise, how many trials, which space."""

    metric: str
    goal: str
    max_trial_count: int
    parallel_trial_count: int
    parameters: tuple[Parameter, ...]
    max_failed_trial_count: int = 0
    algorithm: str = "default"


@dataclass(frozen=True)
class Deploy:
    model: str
    endpoint: str
    serving_image_uri: str
    machine_type: str = "n1-standard-2"
    metric: str = "val_accuracy"
    goal: str = "maximize"
    min_value: float | None = None
    must_beat_champion: bool = True
    canary_percent: int = 0
    canary_seconds: int = 600
    health_route: str = "/health"
    predict_route: str = "/predict"
    port: int = 8080
    service_account: str | None = None  # what the deployed model runs as
    gates: tuple[GateCondition, ...] = ()  # all must hold, besides metric/min_value
    eval_uri: str | None = None  # a fixed evaluation set both models are scored on
    # The champion cannot score the new data (columns changed): "reject" the new model, or
    # "judge_alone" on its threshold and gates.
    on_schema_change: str = "reject"


@dataclass(frozen=True)
class Notify:
    webhook_env: str | None = None
    pubsub_topic: str | None = None
    on: tuple[str, ...] = NOTIFY_KINDS


@dataclass(frozen=True)
class Pipeline:
    name: str
    bucket: str
    prefix: str
    training: Training
    include: tuple[str, ...] = ("*",)
    trigger: str = "each"
    marker: str = "_SUCCESS"
    quiet_seconds: int = 300
    cooldown_seconds: int = 0
    deploy: Deploy | None = None
    notify: Notify | None = None
    tuning: Tuning | None = None

    @property
    def data_root(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Config:
    source: str
    defaults: Defaults
    guards: Guards
    pipelines: Mapping[str, Pipeline]

    def pipeline(self, name: str) -> Pipeline | None:
        return self.pipelines.get(name)
