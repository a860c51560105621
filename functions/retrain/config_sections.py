"""The optional tables of a pipeline: `deploy` (with its quality gates), `tuning` (the
study and its parameter space) and `notify`."""

from __future__ import annotations

from retrain.config_table import Table
from retrain.config_values import (
    ALGORITHMS,
    GOALS,
    NOTIFY_KINDS,
    PARAMETER_NAME,
    PARAMETER_TYPES,
    SCALES,
    SCHEMA_CHANGE_POLICIES,
    Deploy,
    GateCondition,
    Guards,
    Notify,
    Parameter,
    Training,
    Tuning,
)


def parse_deploy(t: Table, guards: Guards) -> Deploy:
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


def _gate(t: Table) -> GateCondition:
    gate = GateCondition(
        metric=t.text("metric", required=True), min=t.opt_float("min"), max=t.opt_float("max")
    )
    if gate.min is None and gate.max is None:
        t.fail("", "needs min or max (or both)")
    if gate.min is not None and gate.max is not None and gate.min > gate.max:
        t.fail("min", f"{gate.min:g} is above max {gate.max:g}")
    t.done()
    return gate


def _eval_uri(t: Table, guards: Guards) -> str | None:
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


def parse_tuning(t: Table, guards: Guards, training: Training) -> Tuning:
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


def _parameter(params_t: Table, name: str, training: Training) -> Parameter:
    if not PARAMETER_NAME.fullmatch(name):
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


def parse_notify(t: Table) -> Notify:
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
