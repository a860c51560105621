"""The pipelines config: TOML, read once, validated into frozen values.

Every error names the file and the offending key (`pipelines.churn.training.machine_type`),
so an operator can fix it without reading code. Unknown keys are errors too: a typo must
not silently fall back to a default.

The parts: `config_values` (the frozen dataclasses and allowed values, re-exported here so
callers import from `retrain.config`), `config_table` (the TOML table reader),
`config_training` (the training table) and `config_sections` (deploy, tuning, notify).
"""

from __future__ import annotations

import tomllib

from retrain.config_sections import parse_deploy, parse_notify, parse_tuning
from retrain.config_table import Table
from retrain.config_training import parse_training
from retrain.config_values import (
    ALGORITHMS,
    DATA_WINDOWS,
    GOALS,
    NOTIFY_KINDS,
    PARAMETER_TYPES,
    SCALES,
    SCHEMA_CHANGE_POLICIES,
    STRATEGIES,
    TRIGGER_MODES,
    Config,
    DataWindow,
    Defaults,
    Deploy,
    GateCondition,
    Guards,
    Machine,
    Notify,
    Parameter,
    Pipeline,
    PythonPackage,
    Training,
    Tuning,
)
from retrain.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "DATA_WINDOWS",
    "GOALS",
    "NOTIFY_KINDS",
    "PARAMETER_TYPES",
    "SCALES",
    "SCHEMA_CHANGE_POLICIES",
    "STRATEGIES",
    "TRIGGER_MODES",
    "Config",
    "DataWindow",
    "Defaults",
    "Deploy",
    "GateCondition",
    "Guards",
    "Machine",
    "Notify",
    "Parameter",
    "Pipeline",
    "PythonPackage",
    "Training",
    "Tuning",
    "parse_config",
]


def parse_config(text: str, source: str) -> Config:
    """Parse and validate a pipelines TOML document; `source` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from err
    root = Table(raw, "", source)
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


def _pipeline(t: Table, name: str, guards: Guards) -> Pipeline:
    if not name.replace("-", "").replace("_", "").isalnum() or name.lower() != name:
        t.fail("", "pipeline names use lower-case letters, digits, '-' and '_'")
    bucket = t.text("bucket", required=True)
    if guards.allowed_buckets and bucket not in guards.allowed_buckets:
        t.fail("bucket", f"bucket {bucket!r} is not in guards.allowed_buckets")
    prefix = t.text("prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    trigger = t.choice("trigger", TRIGGER_MODES, "each")
    training = parse_training(t.table("training", required=True), guards)
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
        deploy=parse_deploy(t.table("deploy"), guards) if t.has("deploy") else None,
        notify=parse_notify(t.table("notify")) if t.has("notify") else None,
        tuning=parse_tuning(t.table("tuning"), guards, training) if t.has("tuning") else None,
    )
    t.done()
    return pipeline


def _gs_uri(t: Table, key: str, *, required: bool) -> str:
    value = t.text(key, required=required)
    if not value.startswith("gs://") or len(value) <= len("gs://"):
        t.fail(key, f"must be a gs:// URI, not {value!r}")
    return value.rstrip("/")
