"""Vertex AI training jobs (CustomJobs and HyperparameterTuningJobs) through the
`aiplatform_v1` GAPIC client.

`aiplatform_v1` is imported when the adapter is first used, never at module import: events
that submit nothing must not pay for it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from retrain.adapters.clients import VertexAdapter
from retrain.adapters.errors import translated
from retrain.config import Parameter, Tuning
from retrain.errors import JobRejected, PermanentError
from retrain.jobspec import JobSpec, WorkerPool
from retrain.ports import TERMINAL_STATES, JobInfo, JobNotFound, Objective, Trial

CALL_TIMEOUT_S = 60.0


class VertexTraining(VertexAdapter):
    @property
    def client(self) -> Any:
        return self._vertex("JobServiceClient")

    def submit(self, spec: JobSpec) -> JobInfo:
        if spec.tuning is not None:
            tuning_job = _tuning_job(spec, spec.tuning)
            with translated(f"create HyperparameterTuningJob {spec.display_name}"):
                created = self.client.create_hyperparameter_tuning_job(
                    parent=self._parent,
                    hyperparameter_tuning_job=tuning_job,
                    timeout=CALL_TIMEOUT_S,
                )
            return tuning_job_info(created)
        job = _custom_job(spec)
        with translated(f"create CustomJob {spec.display_name}"):
            created = self.client.create_custom_job(
                parent=self._parent, custom_job=job, timeout=CALL_TIMEOUT_S
            )
        return job_info(created)

    def get(self, name: str) -> JobInfo:
        with _lookup(name):
            if _is_tuning(name):
                return tuning_job_info(
                    self.client.get_hyperparameter_tuning_job(name=name, timeout=CALL_TIMEOUT_S)
                )
            return job_info(self.client.get_custom_job(name=name, timeout=CALL_TIMEOUT_S))

    def find(self, labels: Mapping[str, str], *, active_only: bool = False) -> list[JobInfo]:
        clauses = [f'labels.{key}="{value}"' for key, value in sorted(labels.items())]
        if active_only:
            # Vertex filters `state` with = and !=: let the service drop ended jobs, so the
            # answer stays small however many runs a pipeline has had.
            clauses += [f'state!="{state}"' for state in sorted(TERMINAL_STATES)]
        query = " AND ".join(clauses)
        request = {"parent": self._parent, "filter": query}
        with translated(f"list CustomJobs where {query}"):
            found = [
                job_info(job)
                for job in self.client.list_custom_jobs(request=request, timeout=CALL_TIMEOUT_S)
            ]
        with translated(f"list HyperparameterTuningJobs where {query}"):
            pager = self.client.list_hyperparameter_tuning_jobs(
                request=request, timeout=CALL_TIMEOUT_S
            )
            found += [tuning_job_info(job) for job in pager]
        return found

    def cancel(self, name: str) -> None:
        with translated(f"cancel {name}"):
            if _is_tuning(name):
                self.client.cancel_hyperparameter_tuning_job(name=name, timeout=CALL_TIMEOUT_S)
            else:
                self.client.cancel_custom_job(name=name, timeout=CALL_TIMEOUT_S)


def _is_tuning(name: str) -> bool:
    return "/hyperparameterTuningJobs/" in name


@contextmanager
def _lookup(name: str) -> Iterator[None]:
    """A get: Vertex's NotFound becomes JobNotFound (the caller may try the other kind)."""
    try:
        with translated(f"get {name}"):
            yield
    except PermanentError as err:
        from google.api_core import exceptions as gexc

        if isinstance(err.__cause__, gexc.NotFound):
            raise JobNotFound(f"{name} not found") from err
        raise


def _custom_job(spec: JobSpec) -> Any:
    from google.cloud import aiplatform_v1 as v1

    return v1.CustomJob(
        display_name=spec.display_name, labels=dict(spec.labels), job_spec=_job_spec(spec)
    )


def _job_spec(spec: JobSpec) -> Any:
    from google.cloud import aiplatform_v1 as v1
    from google.protobuf import duration_pb2

    strategy = {"standard": "STANDARD", "spot": "SPOT", "flex_start": "FLEX_START"}[spec.strategy]
    return v1.CustomJobSpec(
        worker_pool_specs=[_pool(pool) for pool in spec.worker_pools],
        base_output_directory=v1.GcsDestination(output_uri_prefix=spec.base_output_directory),
        scheduling=v1.Scheduling(
            timeout=duration_pb2.Duration(seconds=spec.timeout_seconds),
            strategy=getattr(v1.Scheduling.Strategy, strategy),
            restart_job_on_worker_restart=spec.restart_job_on_worker_restart,
        ),
        service_account=spec.service_account or "",
    )


_ALGORITHMS = {"default": "ALGORITHM_UNSPECIFIED", "grid": "GRID_SEARCH", "random": "RANDOM_SEARCH"}
_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE"}


def _tuning_job(spec: JobSpec, tuning: Tuning) -> Any:
    """The HyperparameterTuningJob: the CustomJob's spec as every trial's job, the study
    from the pipeline's tuning table (ALGORITHM_UNSPECIFIED is Vertex's default search)."""
    from google.cloud import aiplatform_v1 as v1

    metric = v1.StudySpec.MetricSpec(
        metric_id=tuning.metric,
        goal=getattr(v1.StudySpec.MetricSpec.GoalType, tuning.goal.upper()),
    )
    return v1.HyperparameterTuningJob(
        display_name=spec.display_name,
        labels=dict(spec.labels),
        study_spec=v1.StudySpec(
            metrics=[metric],
            parameters=[_parameter_spec(p) for p in tuning.parameters],
            algorithm=getattr(v1.StudySpec.Algorithm, _ALGORITHMS[tuning.algorithm]),
        ),
        max_trial_count=tuning.max_trial_count,
        parallel_trial_count=tuning.parallel_trial_count,
        max_failed_trial_count=tuning.max_failed_trial_count,
        trial_job_spec=_job_spec(spec),
    )


def _parameter_spec(p: Parameter) -> Any:
    from google.cloud import aiplatform_v1 as v1

    spec = v1.StudySpec.ParameterSpec
    found = spec(parameter_id=p.name)
    if p.type != "categorical":
        found.scale_type = getattr(spec.ScaleType, _SCALES[p.scale])
    if p.type == "double":
        found.double_value_spec = spec.DoubleValueSpec(min_value=p.min, max_value=p.max)
    elif p.type == "integer":
        assert p.min is not None and p.max is not None
        found.integer_value_spec = spec.IntegerValueSpec(min_value=int(p.min), max_value=int(p.max))
    elif p.type == "discrete":
        found.discrete_value_spec = spec.DiscreteValueSpec(values=[float(v) for v in p.values])
    else:
        found.categorical_value_spec = spec.CategoricalValueSpec(values=list(p.values))
    return found


def _pool(pool: WorkerPool) -> Any:
    from google.cloud import aiplatform_v1 as v1

    machine = v1.MachineSpec(machine_type=pool.machine.machine_type)
    if pool.machine.accelerator_type:
        try:
            machine.accelerator_type = getattr(v1.AcceleratorType, pool.machine.accelerator_type)
        except AttributeError as err:
            raise JobRejected(
                f"unknown accelerator_type {pool.machine.accelerator_type!r} "
                f"(Vertex AI knows {', '.join(v1.AcceleratorType.__members__)})"
            ) from err
        machine.accelerator_count = pool.machine.accelerator_count
    if pool.package is not None:
        # Python packages on a prebuilt container: the args go to the module.
        return v1.WorkerPoolSpec(
            machine_spec=machine,
            replica_count=pool.replica_count,
            python_package_spec=v1.PythonPackageSpec(
                executor_image_uri=pool.package.executor_image_uri,
                package_uris=list(pool.package.package_uris),
                python_module=pool.package.python_module,
                args=list(pool.args),
            ),
        )
    return v1.WorkerPoolSpec(
        machine_spec=machine,
        replica_count=pool.replica_count,
        container_spec=v1.ContainerSpec(image_uri=pool.image_uri, args=list(pool.args)),
    )


def _moment(value: Any) -> datetime | None:
    # proto-plus gives DatetimeWithNanoseconds; an unset timestamp is the epoch.
    if not value or getattr(value, "year", 1970) <= 1970:
        return None
    return value


def job_info(job: Any) -> JobInfo:
    return _info(job, job.job_spec)


def _info(job: Any, job_spec: Any, **more: Any) -> JobInfo:
    error = job.error.message if job.error and job.error.message else None
    output = job_spec.base_output_directory.output_uri_prefix or None
    pools = job_spec.worker_pool_specs
    args: tuple[str, ...] = ()
    if pools:
        pool = pools[0]
        package = pool.python_package_spec
        args = tuple(package.args if package.python_module else pool.container_spec.args)
    return JobInfo(
        name=job.name,
        state=job.state.name,
        display_name=job.display_name,
        labels=dict(job.labels),
        error_message=error,
        create_time=_moment(job.create_time),
        start_time=_moment(job.start_time),
        end_time=_moment(job.end_time),
        base_output_directory=output,
        args=args,
        **more,
    )


def tuning_job_info(job: Any) -> JobInfo:
    """A HyperparameterTuningJob as a JobInfo: its study objective and its trials."""
    objective = None
    if job.study_spec.metrics:
        metric = job.study_spec.metrics[0]
        objective = Objective(metric.metric_id, metric.goal.name.lower())
    trials = tuple(_trial(trial, objective.metric if objective else None) for trial in job.trials)
    return _info(job, job.trial_job_spec, objective=objective, trials=trials)


def _trial(trial: Any, metric: str | None) -> Trial:
    value = None
    for measured in trial.final_measurement.metrics:
        if measured.metric_id == metric:
            value = float(measured.value)
    return Trial(
        id=trial.id,
        state=trial.state.name,
        parameters={p.parameter_id: p.value for p in trial.parameters},
        metric=value,
        error=trial.infeasible_reason or None,
    )
