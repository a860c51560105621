"""The pipelines config: TOML, read once, validated into frozen values.

Every error names the file and the offending key (`pipelines.churn.training.machine_type`),
so an operator can fix it without reading code. Unknown keys are errors too: a typo must
not silently fall back to a default.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.errors import ConfigError

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
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


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


def parse_config(text: str, source: str) -> Config:
    """Parse and validate a pipelines TOML document; `source` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from err
    root = _Table(raw, "", source)
    defaults_t = root.table("defaults")
    defaults = Defaults(
        region=defaults_t.text("region", "us-central1"),
        state_uri=_gs_uri(defaults_t, "state_uri", required=True),
        output_uri=_gs_uri(defaults_t, "output_uri", required=True),
        project=defaults_t.opt_str("project"),
    )
    defaults_t.done()
    guards_t = root.table("guards")
    guards = Guards(
        allowed_buckets=guards_t.str_list("allowed_buckets", ()),
        allowed_machine_types=guards_t.str_list("allowed_machine_types", ()),
        allowed_accelerators=guards_t.str_list("allowed_accelerators", ()),
        max_accelerator_count=guards_t.opt_int("max_accelerator_count", minimum=0),
        max_replica_count=guards_t.opt_int("max_replica_count", minimum=1),
        max_concurrent_jobs=guards_t.opt_int("max_concurrent_jobs", minimum=1),
        max_trials=guards_t.integer("max_trials", 32, minimum=1),
        max_parallel_trials=guards_t.integer("max_parallel_trials", 4, minimum=1),
    )
    guards_t.done()
    pipelines_t = root.table("pipelines")
    pipelines = {
        name: _pipeline(pipelines_t.table(name, required=True), name, guards)
        for name in pipelines_t.names()
    }
    if not pipelines:
        raise ConfigError(f"{source}: no pipelines: add a [pipelines.<name>] table")
    root.done()
    return Config(source=source, defaults=defaults, guards=guards, pipelines=pipelines)


def _pipeline(t: _Table, name: str, guards: Guards) -> Pipeline:
    if not name.replace("-", "").replace("_", "").isalnum() or name.lower() != name:
        t.fail("", "pipeline names use lower-case letters, digits, '-' and '_'")
    bucket = t.text("bucket", required=True)
    if guards.allowed_buckets and bucket not in guards.allowed_buckets:
        t.fail("bucket", f"bucket {bucket!r} is not in guards.allowed_buckets")
    prefix = t.text("prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    trigger = t.choice("trigger", TRIGGER_MODES, "each")
    training = _training(t.table("training", required=True), guards)
    pipeline = Pipeline(
        name=name,
        bucket=bucket,
        prefix=prefix,
        include=t.str_list("include", ("*",)),
        trigger=trigger,
        marker=t.text("marker", "_SUCCESS"),
        quiet_seconds=t.integer("quiet_seconds", 300, minimum=0),
        cooldown_seconds=t.integer("cooldown_seconds", 0, minimum=0),
        training=training,
        deploy=_deploy(t.table("deploy"), guards) if t.has("deploy") else None,
        notify=_notify(t.table("notify")) if t.has("notify") else None,
        tuning=_tuning(t.table("tuning"), guards, training) if t.has("tuning") else None,
    )
    t.done()
    return pipeline


def _training(t: _Table, guards: Guards) -> Training:
    machine = _machine(t, guards)
    replica_count = t.integer("replica_count", 1, minimum=1)
    if guards.max_replica_count is not None and replica_count > guards.max_replica_count:
        t.fail("replica_count", f"{replica_count} exceeds guards.max_replica_count")
    hp = t.table("hyperparameters")
    hyperparameters = {key: hp.scalar(key) for key in hp.names()}
    fallback = tuple(
        _machine(t.item("fallback", index), guards) for index in range(t.list_len("fallback"))
    )
    image_uri, package = _training_code(t)
    training = Training(
        image_uri=image_uri,
        package=package,
        machine=machine,
        args=t.str_list("args", ()),
        replica_count=replica_count,
        strategy=t.choice("strategy", STRATEGIES, "standard"),
        timeout_seconds=t.integer("timeout_seconds", 86400, minimum=60),
        service_account=t.opt_str("service_account"),
        fallback=fallback,
        hyperparameters=hyperparameters,
        data=_data_window(t),
    )
    t.done()
    return training


def _data_window(t: _Table) -> DataWindow:
    """`data = "batch" | "all" | { days = N }`."""
    if not t.has("data"):
        return DataWindow()
    raw = t.raw("data")
    if isinstance(raw, str):
        if raw not in DATA_WINDOWS:
            t.fail("data", f'must be "batch", "all" or {{ days = N }}, not {raw!r}')
        return DataWindow(raw)
    if not isinstance(raw, Mapping):
        t.fail("data", f'must be "batch", "all" or {{ days = N }}, not {raw!r}')
    window = t.table("data")
    days = window.opt_int("days", minimum=1)
    window.done()  # an unknown key (a typo of "days") first
    if days is None:
        window.fail("days", "is required: the number of days of objects to train on")
    return DataWindow("days", days)


_PACKAGE_KEYS = ("executor_image_uri", "package_uris", "python_module")
# A dotted module name, as `python -m` takes it.
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _training_code(t: _Table) -> tuple[str, PythonPackage | None]:
    """Exactly one of the two forms Vertex takes: a container image (`image_uri`), or
    Python packages on a prebuilt container (`executor_image_uri` + `package_uris` +
    `python_module`)."""
    given = [key for key in _PACKAGE_KEYS if t.has(key)]
    if t.has("image_uri"):
        if given:
            t.fail(
                given[0],
                "cannot be combined with image_uri: use either image_uri or "
                "executor_image_uri + package_uris + python_module",
            )
        return t.text("image_uri", required=True), None
    if not given:
        t.fail(
            "image_uri",
            "is required (or, for a Python package on a prebuilt container, "
            "executor_image_uri + package_uris + python_module)",
        )
    executor = t.text("executor_image_uri", required=True)
    uris = t.str_list("package_uris", ())
    if not uris:
        t.fail("package_uris", "must list at least one gs:// URI of a Python package")
    for uri in uris:
        bucket, _, path = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not path or path.endswith("/"):
            t.fail("package_uris", f"must hold gs://bucket/object URIs, not {uri!r}")
        if any(c.isspace() or not c.isprintable() for c in uri):
            t.fail("package_uris", f"{uri!r} holds whitespace or control characters")
    module = t.text("python_module", required=True)
    if not _MODULE.fullmatch(module):
        t.fail("python_module", f"must be a dotted Python module name, not {module!r}")
    return "", PythonPackage(executor, uris, module)


def _machine(t: _Table, guards: Guards) -> Machine:
    machine_type = t.text("machine_type", required=True)
    if guards.allowed_machine_types and machine_type not in guards.allowed_machine_types:
        t.fail("machine_type", f"{machine_type!r} is not in guards.allowed_machine_types")
    accelerator_type = t.opt_str("accelerator_type")
    count = t.integer("accelerator_count", 1 if accelerator_type else 0, minimum=0)
    if accelerator_type:
        if guards.allowed_accelerators and accelerator_type not in guards.allowed_accelerators:
            t.fail(
                "accelerator_type", f"{accelerator_type!r} is not in guards.allowed_accelerators"
            )
        if count < 1:
            t.fail("accelerator_count", "must be at least 1 when accelerator_type is set")
    elif count:
        t.fail("accelerator_count", "is set but accelerator_type is not")
    if guards.max_accelerator_count is not None and count > guards.max_accelerator_count:
        t.fail("accelerator_count", f"{count} exceeds guards.max_accelerator_count")
    return Machine(machine_type, accelerator_type, count)


def _deploy(t: _Table, guards: Guards) -> Deploy:
    deploy = Deploy(
        model=t.text("model", required=True),
        endpoint=t.text("endpoint", required=True),
        serving_image_uri=t.text("serving_image_uri", required=True),
        machine_type=t.text("machine_type", "n1-standard-2"),
        metric=t.text("metric", "val_accuracy"),
        goal=t.choice("goal", GOALS, "maximize"),
        min_value=t.opt_float("min_value"),
        must_beat_champion=t.flag("must_beat_champion", True),
        canary_percent=t.integer("canary_percent", 0, minimum=0, maximum=99),
        canary_seconds=t.integer("canary_seconds", 600, minimum=0),
        health_route=t.text("health_route", "/health"),
        predict_route=t.text("predict_route", "/predict"),
        port=t.integer("port", 8080, minimum=1, maximum=65535),
        service_account=t.opt_str("service_account"),
        gates=tuple(_gate(t.item("gates", i)) for i in range(t.list_len("gates"))),
        eval_uri=_eval_uri(t, guards),
        on_schema_change=t.choice("on_schema_change", SCHEMA_CHANGE_POLICIES, "reject"),
    )
    t.done()
    return deploy


def _gate(t: _Table) -> GateCondition:
    gate = GateCondition(
        metric=t.text("metric", required=True), min=t.opt_float("min"), max=t.opt_float("max")
    )
    if gate.min is None and gate.max is None:
        t.fail("", "needs min or max (or both)")
    if gate.min is not None and gate.max is not None and gate.min > gate.max:
        t.fail("min", f"{gate.min:g} is above max {gate.max:g}")
    t.done()
    return gate


def _eval_uri(t: _Table, guards: Guards) -> str | None:
    """A gs://bucket/object-or-prefix inside an allowed bucket: the trainer reads it."""
    if not t.has("eval_uri"):
        return None
    uri = t.text("eval_uri", required=True)
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not path:
        t.fail("eval_uri", f"must be a gs://bucket/path URI, not {uri!r}")
    if any(part in ("", ".", "..") for part in path.rstrip("/").split("/")):
        t.fail("eval_uri", f"{uri!r} has an empty, '.' or '..' path segment")
    if any(c.isspace() or not c.isprintable() for c in uri):
        t.fail("eval_uri", f"{uri!r} holds whitespace or control characters")
    if guards.allowed_buckets and bucket not in guards.allowed_buckets:
        t.fail("eval_uri", f"bucket {bucket!r} is not in guards.allowed_buckets")
    return uri


def _tuning(t: _Table, guards: Guards, training: Training) -> Tuning:
    max_trials = t.opt_int("max_trial_count", minimum=1)
    if max_trials is None:
        t.fail("max_trial_count", "is required")
    assert max_trials is not None
    if max_trials > guards.max_trials:
        t.fail("max_trial_count", f"{max_trials} exceeds guards.max_trials ({guards.max_trials})")
    parallel = t.integer("parallel_trial_count", 1, minimum=1)
    if parallel > guards.max_parallel_trials:
        t.fail(
            "parallel_trial_count",
            f"{parallel} exceeds guards.max_parallel_trials ({guards.max_parallel_trials})",
        )
    if parallel > max_trials:
        t.fail("parallel_trial_count", f"{parallel} exceeds max_trial_count ({max_trials})")
    # 0 lets Vertex decide when failed trials fail the job, as the API says.
    max_failed = t.integer("max_failed_trial_count", 0, minimum=0, maximum=max_trials)
    algorithm = t.choice("algorithm", ALGORITHMS, "default")
    params_t = t.table("parameters", required=True)
    parameters = tuple(_parameter(params_t, name, training) for name in sorted(params_t.names()))
    if not parameters:
        t.fail("parameters", "must name at least one parameter to tune")
    for p in parameters:
        if algorithm == "grid" and p.type == "double":
            params_t.fail(
                p.name,
                "a double has no grid: algorithm 'grid' takes integer, discrete or "
                "categorical parameters",
            )
    tuning = Tuning(
        metric=t.text("metric", required=True),
        goal=t.choice("goal", GOALS, "maximize"),
        max_trial_count=max_trials,
        parallel_trial_count=parallel,
        max_failed_trial_count=max_failed,
        algorithm=algorithm,
        parameters=parameters,
    )
    t.done()
    return tuning


def _parameter(params_t: _Table, name: str, training: Training) -> Parameter:
    if not _PARAMETER_NAME.fullmatch(name):
        params_t.fail(name, "parameter names use letters, digits, '_', '.' and '-'")
    if name in training.hyperparameters:
        # Both would become `--<name>=`: the trial's value must be the only one.
        params_t.fail(
            name, "is also a fixed hyperparameter in training.hyperparameters: keep one of them"
        )
    p = params_t.table(name, required=True)
    kind = p.choice("type", PARAMETER_TYPES, "")
    if kind in ("double", "integer"):
        low, high = (
            p.bound("min", integer=kind == "integer"),
            p.bound("max", integer=kind == "integer"),
        )
        if low >= high:
            p.fail("max", f"must be greater than min ({low:g})")
        scale = p.choice("scale", SCALES, "linear")
        if scale == "log" and low <= 0:
            p.fail("min", 'must be positive with scale = "log"')
        parameter = Parameter(name, kind, low, high, scale)
    else:
        values = p.values("values", numbers=kind == "discrete")
        # Vertex scales discrete values too; categories have no scale.
        scale = p.choice("scale", SCALES, "linear") if kind == "discrete" else "linear"
        if kind == "discrete" and scale == "log" and min(values) <= 0:
            p.fail("values", 'must all be positive with scale = "log"')
        parameter = Parameter(name, kind, scale=scale, values=values)
    p.done()
    return parameter


def _notify(t: _Table) -> Notify:
    on = t.str_list("on", NOTIFY_KINDS)
    for kind in on:
        if kind not in NOTIFY_KINDS:
            t.fail("on", f"unknown notification kind {kind!r} (one of {', '.join(NOTIFY_KINDS)})")
    notify = Notify(
        webhook_env=t.opt_str("webhook_env"),
        pubsub_topic=t.opt_str("pubsub_topic"),
        on=on,
    )
    t.done()
    return notify


def _gs_uri(t: _Table, key: str, *, required: bool) -> str:
    value = t.text(key, required=required)
    if not value.startswith("gs://") or len(value) <= len("gs://"):
        t.fail(key, f"must be a gs:// URI, not {value!r}")
    return value.rstrip("/")


class _Table:
    """One TOML table being read, remembering its dotted path and which keys were used."""

    def __init__(self, data: Any, path: str, source: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {path or 'document'} must be a table")
        self._data = data
        self._path = path
        self._source = source
        self._used: set[str] = set()

    def fail(self, key: str, problem: str) -> None:
        where = ".".join(p for p in (self._path, key) if p) or "document"
        raise ConfigError(f"{self._source}: {where}: {problem}")

    def names(self) -> list[str]:
        self._used.update(self._data)
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            self.fail(unknown[0], "unknown key")

    def _get(self, key: str, required: bool) -> Any:
        self._used.add(key)
        if key not in self._data:
            if required:
                self.fail(key, "is required")
            return None
        return self._data[key]

    def raw(self, key: str) -> Any:
        """The value as written, marked used (for keys that take several shapes)."""
        return self._get(key, False)

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self._get(key, required)
        sub = f"{self._path}.{key}" if self._path else key
        return _Table({} if value is None else value, sub, self._source)

    def list_len(self, key: str) -> int:
        value = self._get(key, False)
        if value is None:
            return 0
        if not isinstance(value, list):
            self.fail(key, "must be a list")
        return len(value)

    def item(self, key: str, index: int) -> _Table:
        return _Table(self._data[key][index], f"{self._path}.{key}[{index}]", self._source)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return default if default is not None else ""
        if not isinstance(value, str) or (required and not value):
            self.fail(key, "must be a non-empty string" if required else "must be a string")
        return str(value)

    def opt_str(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is not None and not isinstance(value, str):
            self.fail(key, "must be a string")
        return value or None

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.opt_int(key, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def opt_int(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "must be an integer")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}")
        return int(value)

    def opt_float(self, key: str) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "must be a number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return bool(value)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of strings")
        return tuple(value)

    def bound(self, key: str, *, integer: bool) -> float:
        """A required finite number (an integer when `integer`): a range's end."""
        value = self._get(key, True)
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(key, "must be an integer for an integer parameter")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, "must be a finite number")
        return float(value)

    def values(self, key: str, *, numbers: bool) -> tuple[Any, ...]:
        """A non-empty list of distinct values: finite numbers (sorted, as Vertex wants
        discrete values) or non-empty strings."""
        value = self._get(key, True)
        what = "finite numbers" if numbers else "non-empty strings"
        if not isinstance(value, list) or not value:
            self.fail(key, f"must be a non-empty list of {what}")
        for item in value:
            if numbers:
                good = (
                    isinstance(item, int | float)
                    and not isinstance(item, bool)
                    and math.isfinite(item)
                )
            else:
                good = isinstance(item, str) and bool(item)
            if not good:
                self.fail(key, f"must be a list of {what}, not {item!r}")
        if len(set(value)) != len(value):
            self.fail(key, "must not repeat a value")
        return tuple(sorted(value)) if numbers else tuple(value)

    def scalar(self, key: str) -> Any:
        value = self._get(key, True)
        if isinstance(value, Mapping | list):
            self.fail(key, "must be a string, number or boolean")
        return value
