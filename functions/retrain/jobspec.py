"""The job the trigger submits (DESIGN.md contract), as a pure value.

The Vertex adapter turns a `JobSpec` into an `aiplatform_v1.CustomJob`, or, when it carries
a `tuning` study, into a HyperparameterTuningJob whose trial job is that CustomJob's spec;
keeping the shape here makes it testable without the client library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.config import Machine, Pipeline, PythonPackage, Tuning
from retrain.planner import RunPlan

PIPELINE_LABEL = "retrain-pipeline"
RUN_LABEL = "retrain-run"


@dataclass(frozen=True)
class WorkerPool:
    machine: Machine
    replica_count: int
    image_uri: str  # "" when `package` is set
    args: tuple[str, ...]
    # Set: Vertex's python_package_spec (the args go to the module) instead of a container.
    package: PythonPackage | None = None


@dataclass(frozen=True)
class JobSpec:
    display_name: str
    labels: Mapping[str, str]
    base_output_directory: str
    worker_pools: tuple[WorkerPool, ...]
    timeout_seconds: int
    strategy: str
    service_account: str | None = None
    restart_job_on_worker_restart: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Set: a HyperparameterTuningJob with this study; every trial runs the pools above with
    # `--<parameter>=<value>` appended and its own `<base_output_directory>/<trial_id>/`.
    tuning: Tuning | None = None


def label_value(value: str) -> str:
    """Vertex label values: lower case, at most 63 characters of [a-z0-9_-]."""
    cleaned = "".join(c if c.isalnum() or c in "_-" else "-" for c in value.lower())
    return cleaned[:63]


def container_args(pipeline: Pipeline, run: RunPlan) -> tuple[str, ...]:
    """Pipeline args, --data-uri, the pinned inputs (--data-manifest), what the new model
    is compared with (--champion-model-dir, --eval-uri), then one --<name>=<value> per
    hyperparameter."""
    inputs = [f"--data-uri={run.data_uri}"]
    if run.data_manifest:
        inputs.append(f"--data-manifest={run.data_manifest}")
    if run.champion_model_dir:
        inputs.append(f"--champion-model-dir={run.champion_model_dir}")
    if pipeline.deploy is not None and pipeline.deploy.eval_uri:
        inputs.append(f"--eval-uri={pipeline.deploy.eval_uri}")
    hp = [f"--{key}={_format(value)}" for key, value in sorted(run.hyperparameters.items())]
    return (*pipeline.training.args, *inputs, *hp)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def base_output_directory(output_uri: str, pipeline: str, run_id: str) -> str:
    return f"{output_uri.rstrip('/')}/{pipeline}/{run_id}"


def build_job(
    pipeline: Pipeline, run: RunPlan, output_uri: str, machine: Machine | None = None
) -> JobSpec:
    """The job for `run`; `machine` replaces the configured one (capacity fallbacks)."""
    training = pipeline.training
    machine = machine or training.machine
    args = container_args(pipeline, run)
    pools = [WorkerPool(machine, 1, training.image_uri, args, training.package)]
    if training.replica_count > 1:
        # Vertex's multi-node layout: pool 0 is the chief, pool 1 the other replicas.
        pools.append(
            WorkerPool(
                machine, training.replica_count - 1, training.image_uri, args, training.package
            )
        )
    return JobSpec(
        display_name=f"retrain-{pipeline.name}-{run.run_id}",
        labels={
            PIPELINE_LABEL: label_value(pipeline.name),
            RUN_LABEL: label_value(run.run_id),
            "retrain-trigger": label_value(run.trigger),
        },
        base_output_directory=base_output_directory(output_uri, pipeline.name, run.run_id),
        worker_pools=tuple(pools),
        timeout_seconds=training.timeout_seconds,
        strategy=training.strategy,
        service_account=training.service_account,
        tuning=pipeline.tuning,
    )
