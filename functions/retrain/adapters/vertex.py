"""Vertex AI custom jobs through the `aiplatform_v1` GAPIC client.

`aiplatform_v1` is imported when the adapter is first used, never at module import: events
that submit nothing must not pay for it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from retrain.adapters.clients import VertexAdapter
from retrain.adapters.errors import translated
from retrain.errors import JobRejected
from retrain.jobspec import JobSpec, WorkerPool
from retrain.ports import TERMINAL_STATES, JobInfo

CALL_TIMEOUT_S = 60.0


class VertexTraining(VertexAdapter):
    @property
    def client(self) -> Any:
        return self._vertex("JobServiceClient")

    def submit(self, spec: JobSpec) -> JobInfo:
        job = _custom_job(spec)
        with translated(f"create CustomJob {spec.display_name}"):
            created = self.client.create_custom_job(
                parent=self._parent, custom_job=job, timeout=CALL_TIMEOUT_S
            )
        return job_info(created)

    def get(self, name: str) -> JobInfo:
        with translated(f"get {name}"):
            return job_info(self.client.get_custom_job(name=name, timeout=CALL_TIMEOUT_S))

    def find(self, labels: Mapping[str, str], *, active_only: bool = False) -> list[JobInfo]:
        clauses = [f'labels.{key}="{value}"' for key, value in sorted(labels.items())]
        if active_only:
            # Vertex filters `state` with = and !=: let the service drop ended jobs, so the
            # answer stays small however many runs a pipeline has had.
            clauses += [f'state!="{state}"' for state in sorted(TERMINAL_STATES)]
        query = " AND ".join(clauses)
        with translated(f"list CustomJobs where {query}"):
            pager = self.client.list_custom_jobs(
                request={"parent": self._parent, "filter": query}, timeout=CALL_TIMEOUT_S
            )
            return [job_info(job) for job in pager]

    def cancel(self, name: str) -> None:
        with translated(f"cancel {name}"):
            self.client.cancel_custom_job(name=name, timeout=CALL_TIMEOUT_S)


def _custom_job(spec: JobSpec) -> Any:
    from google.cloud import aiplatform_v1 as v1
    from google.protobuf import duration_pb2

    strategy = {"standard": "STANDARD", "spot": "SPOT", "flex_start": "FLEX_START"}[spec.strategy]
    return v1.CustomJob(
        display_name=spec.display_name,
        labels=dict(spec.labels),
        job_spec=v1.CustomJobSpec(
            worker_pool_specs=[_pool(pool) for pool in spec.worker_pools],
            base_output_directory=v1.GcsDestination(output_uri_prefix=spec.base_output_directory),
            scheduling=v1.Scheduling(
                timeout=duration_pb2.Duration(seconds=spec.timeout_seconds),
                strategy=getattr(v1.Scheduling.Strategy, strategy),
                restart_job_on_worker_restart=spec.restart_job_on_worker_restart,
            ),
            service_account=spec.service_account or "",
        ),
    )


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
    return v1.WorkerPoolSpec(
        machine_spec=machine,
        replica_count=pool.replica_count,
        container_spec=v1.ContainerSpec(image_uri=pool.image_uri, args=list(pool.args)),
    )


def job_info(job: Any) -> JobInfo:
    def moment(value: Any) -> datetime | None:
        # proto-plus gives DatetimeWithNanoseconds; an unset timestamp is the epoch.
        if not value or getattr(value, "year", 1970) <= 1970:
            return None
        return value

    error = job.error.message if job.error and job.error.message else None
    output = job.job_spec.base_output_directory.output_uri_prefix or None
    return JobInfo(
        name=job.name,
        state=job.state.name,
        display_name=job.display_name,
        labels=dict(job.labels),
        error_message=error,
        create_time=moment(job.create_time),
        start_time=moment(job.start_time),
        end_time=moment(job.end_time),
        base_output_directory=output,
    )
