"""Hand-written fakes of the core's own ports, for unit tests (no mocks)."""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from retrain.bundle import Lazy, Ports
from retrain.config import Config, Pipeline
from retrain.errors import TransientError
from retrain.jobspec import JobSpec
from retrain.ledger import Ledger
from retrain.ports import (
    Blobs,
    DataObjects,
    Endpoints,
    JobInfo,
    JobLogs,
    JobNotFound,
    Listed,
    ModelRegistry,
    Notifier,
    Objective,
    Stored,
    TrainingService,
    Trial,
    job_name,
)

T = TypeVar("T")

SAMPLE_CONFIG = """
[defaults]
project = "acme-ml"
region = "us-central1"
state_uri = "gs://acme-state/state"
output_uri = "gs://acme-artifacts/runs"

[guards]
allowed_buckets = ["acme-landing"]
allowed_machine_types = ["g2-standard-8", "n1-standard-8"]
allowed_accelerators = ["NVIDIA_L4", "NVIDIA_TESLA_T4"]
max_accelerator_count = 4
max_replica_count = 4
max_concurrent_jobs = 2

[pipelines.churn]
bucket = "acme-landing"
prefix = "churn/"
include = ["*.csv"]
trigger = "marker"
marker = "_SUCCESS"

[pipelines.churn.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
args = ["--label=churned", "--epochs=20"]
machine_type = "g2-standard-8"
accelerator_type = "NVIDIA_L4"
accelerator_count = 1
replica_count = 2
strategy = "spot"
timeout_seconds = 14400
service_account = "trainer@acme-ml.iam.gserviceaccount.com"
fallback = [{ machine_type = "n1-standard-8", accelerator_type = "NVIDIA_TESLA_T4", accelerator_count = 1 }]

[pipelines.churn.training.hyperparameters]
lr = 0.001
batch_size = 256

[pipelines.events]
bucket = "acme-landing"
prefix = "events/"
include = ["*.csv"]
trigger = "each"

[pipelines.events.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"

[pipelines.clicks]
bucket = "acme-landing"
prefix = "clicks/"
trigger = "quiet"
quiet_seconds = 300
cooldown_seconds = 600

[pipelines.clicks.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"
"""


class MemoryStateStore:
    """The StateStore port in memory, with GCS's generation semantics."""

    def __init__(self, clock: Any = None) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[dict[str, Any], int, datetime]] = {}
        self._generations = itertools.count(1)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.fail_next_replace: Exception | None = None
        self.calls = 0

    def create(self, key: str, doc: Mapping[str, Any]) -> int | None:
        with self._lock:
            self.calls += 1
            if key in self._items:
                return None
            generation = next(self._generations)
            self._items[key] = (copy.deepcopy(dict(doc)), generation, self._clock())
            return generation

    def read(self, key: str) -> Stored | None:
        with self._lock:
            self.calls += 1
            if key not in self._items:
                return None
            doc, generation, updated = self._items[key]
            return Stored(copy.deepcopy(doc), generation, updated)

    def replace(self, key: str, doc: Mapping[str, Any], *, generation: int) -> int | None:
        with self._lock:
            self.calls += 1
            if self.fail_next_replace is not None:
                err, self.fail_next_replace = self.fail_next_replace, None
                raise err
            if key not in self._items or self._items[key][1] != generation:
                return None
            new = next(self._generations)
            self._items[key] = (copy.deepcopy(dict(doc)), new, self._clock())
            return new

    def list(self, prefix: str) -> list[Listed]:
        with self._lock:
            self.calls += 1
            return [
                Listed(key, generation, updated)
                for key, (_, generation, updated) in sorted(self._items.items())
                if key.startswith(prefix)
            ]

    def delete(self, key: str, *, generation: int | None = None) -> bool:
        with self._lock:
            self.calls += 1
            if generation is not None and key in self._items and self._items[key][1] != generation:
                return False
            self._items.pop(key, None)
            return True

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:  # one by one, so that a test's stand-in for delete sees each
            self.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in sorted(self._items) if k.startswith(prefix)]

    def doc(self, key: str) -> dict[str, Any]:
        return copy.deepcopy(self._items[key][0])


class FakeTraining:
    """The TrainingService port: jobs in memory (CustomJobs, and HyperparameterTuningJobs
    for specs with a tuning study), with injectable failures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, JobInfo] = {}
        self.specs: dict[str, JobSpec] = {}
        self._ids = itertools.count(1000)
        self.fail_submit: list[Exception] = []

    def submit(self, spec: JobSpec) -> JobInfo:
        with self._lock:
            if self.fail_submit:
                raise self.fail_submit.pop(0)
            tuning = spec.tuning
            name = job_name("acme-ml", "us-central1", str(next(self._ids)), tuning=bool(tuning))
            job = JobInfo(
                name=name,
                state="JOB_STATE_PENDING",
                display_name=spec.display_name,
                labels=dict(spec.labels),
                base_output_directory=spec.base_output_directory,
                args=spec.worker_pools[0].args if spec.worker_pools else (),
                objective=Objective(tuning.metric, tuning.goal) if tuning else None,
            )
            self.jobs[name] = job
            self.specs[name] = spec
            return job

    def get(self, name: str) -> JobInfo:
        with self._lock:
            if name not in self.jobs:
                raise JobNotFound(f"{name} not found")
            return self.jobs[name]

    def find(self, labels: Mapping[str, str], *, active_only: bool = False) -> list[JobInfo]:
        with self._lock:
            return [
                j
                for j in self.jobs.values()
                if all(j.labels.get(k) == v for k, v in labels.items())
                and not (active_only and j.terminal)
            ]

    def cancel(self, name: str) -> None:
        self.set_state(name, "JOB_STATE_CANCELLED")

    def set_state(
        self,
        name: str,
        state: str,
        error: str | None = None,
        trials: tuple[Trial, ...] | None = None,
    ) -> None:
        with self._lock:
            job = replace(self.jobs[name], state=state, error_message=error)
            self.jobs[name] = job if trials is None else replace(job, trials=trials)


def fake_ports(
    config: Config,
    ledger: Ledger,
    training: TrainingService,
    *,
    project: str = "acme-ml",
    blobs: Blobs | None = None,
    notifiers: Callable[[Pipeline], list[Notifier]] = lambda _pipeline: [],
    registry: ModelRegistry | None = None,
    endpoints: Endpoints | None = None,
    job_logs: JobLogs | None = None,
    objects: DataObjects | None = None,
) -> Ports:
    """The bundle the composition root would build for `config`, over fakes; ports left
    out are absent, as the trigger's unit tests run them."""

    def lazy(value: T | None) -> Lazy[T] | None:
        return None if value is None else Lazy.of(value)

    return Ports(
        config=config,
        project=Lazy.of(project),
        ledger=Lazy.of(ledger),
        training=Lazy.of(training),
        blobs=lazy(blobs),
        notifiers=notifiers,
        registry=lazy(registry),
        endpoints=lazy(endpoints),
        job_logs=lazy(job_logs),
        objects=lazy(objects),
    )


def fail_the_record_update_after_the_job_is_created(world: Any) -> None:
    """The run record's update that names a new job fails (GCS 503) once: a delivery
    interrupted between CreateCustomJob and its record."""
    submit = world.training.submit

    def submit_then_fail(spec: JobSpec) -> JobInfo:
        job = submit(spec)
        world.store.fail_next_replace = TransientError("GCS 503 on the run record update")
        world.training.submit = submit
        return job

    world.training.submit = submit_then_fail
