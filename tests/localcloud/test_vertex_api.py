"""The Vertex AI emulator's API, exercised only through the official `aiplatform_v1`
clients over REST (and `requests` where a client cannot send what is being tested)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.protobuf import duration_pb2
from localcloud.logstore import LogStore
from localcloud.vertex.runtime import JobUpdate
from localcloud.vertex.server import VertexServer

PROJECT = "demo-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
S = aiplatform_v1.JobState


def client_options(server: VertexServer) -> dict[str, str]:
    return {"api_endpoint": server.url}


def job_client(server: VertexServer) -> aiplatform_v1.JobServiceClient:
    return aiplatform_v1.JobServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options=client_options(server)
    )


class FakeJobRuntime:
    """Records submissions; the test drives each job's states through its callback."""

    def __init__(self) -> None:
        self.submitted: dict[str, aiplatform_v1.CustomJob] = {}
        self.callbacks: dict[str, Callable[[JobUpdate], None]] = {}
        self.cancelled: list[str] = []
        self.closed = False

    def submit(
        self, job_id: str, job: aiplatform_v1.CustomJob, on_update: Callable[[JobUpdate], None]
    ) -> None:
        self.submitted[job_id] = job
        self.callbacks[job_id] = on_update

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def logs(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.jsonl")


@pytest.fixture
def job_runtime() -> FakeJobRuntime:
    return FakeJobRuntime()


@pytest.fixture
def server(tmp_path: Path, logs: LogStore, job_runtime: FakeJobRuntime) -> Iterator[VertexServer]:
    with VertexServer(tmp_path / "vertex", jobs=job_runtime, logs=logs).start() as running:
        yield running


def custom_job(display_name: str = "retrain-churn-r1", **labels: str) -> aiplatform_v1.CustomJob:
    machine = aiplatform_v1.MachineSpec(
        machine_type="g2-standard-8",
        accelerator_type=aiplatform_v1.AcceleratorType.NVIDIA_L4,
        accelerator_count=1,
    )
    container = aiplatform_v1.ContainerSpec(
        image_uri="us-docker.pkg.dev/p/retrain/trainer:latest",
        args=["--label=churned", "--data-uri=gs://landing/churn/"],
        env=[aiplatform_v1.EnvVar(name="MODE", value="fast")],
    )
    return aiplatform_v1.CustomJob(
        display_name=display_name,
        labels=labels or {"retrain-pipeline": "churn", "retrain-run": "r1"},
        job_spec=aiplatform_v1.CustomJobSpec(
            worker_pool_specs=[
                aiplatform_v1.WorkerPoolSpec(
                    machine_spec=machine, replica_count=1, container_spec=container
                ),
                aiplatform_v1.WorkerPoolSpec(
                    machine_spec=machine, replica_count=2, container_spec=container
                ),
            ],
            base_output_directory=aiplatform_v1.GcsDestination(
                output_uri_prefix="gs://artifacts/runs/churn/r1"
            ),
            scheduling=aiplatform_v1.Scheduling(
                timeout=duration_pb2.Duration(seconds=14400),
                strategy=aiplatform_v1.Scheduling.Strategy.SPOT,
                restart_job_on_worker_restart=True,
            ),
        ),
    )


def service_lines(logs: LogStore, job_id: str) -> list[tuple[str, str, str]]:
    """(severity, message, job_state label) of a job's lifecycle lines, in order."""
    return [
        (
            entry["severity"],
            entry["jsonPayload"]["message"],
            entry["labels"]["ml.googleapis.com/job_state"],
        )
        for entry in logs.entries()
        if entry["resource"]["labels"]["job_id"] == job_id
        and entry["resource"]["labels"]["task_name"] == "service"
    ]


def update(state: int, error_message: str | None = None) -> JobUpdate:
    # Proto-plus enum members type-check as int; JobUpdate wants the enum.
    return JobUpdate(state=S(state), error_message=error_message)


def job_id_of(job: aiplatform_v1.CustomJob) -> str:
    return job.name.rsplit("/", 1)[1]


# -- custom jobs ---------------------------------------------------------------------


def test_create_job_round_trips_the_spec_and_hands_it_to_the_runtime(
    server: VertexServer, job_runtime: FakeJobRuntime, logs: LogStore
) -> None:
    client = job_client(server)
    sent = custom_job()

    created = client.create_custom_job(parent=PARENT, custom_job=sent)

    job_id = job_id_of(created)
    assert created.name == f"{PARENT}/customJobs/{job_id}"
    assert job_id.isdigit() and len(job_id) == 19
    assert created.state == S.JOB_STATE_PENDING
    assert created.create_time and created.update_time
    assert created.job_spec == sent.job_spec
    assert dict(created.labels) == dict(sent.labels)
    assert client.get_custom_job(name=created.name) == created
    assert job_runtime.submitted[job_id].job_spec == sent.job_spec
    assert service_lines(logs, job_id) == [
        ("INFO", "Waiting for job to be provisioned.", "PENDING")
    ]


def test_list_jobs_filters_by_labels_state_and_display_name(server: VertexServer) -> None:
    client = job_client(server)
    first = client.create_custom_job(
        parent=PARENT, custom_job=custom_job("a", **{"retrain-pipeline": "churn"})
    )
    client.create_custom_job(
        parent=PARENT, custom_job=custom_job("b", **{"retrain-pipeline": "fraud"})
    )

    def names(filter_text: str) -> list[str]:
        pager = client.list_custom_jobs(request={"parent": PARENT, "filter": filter_text})
        return [job.display_name for job in pager]

    assert names('labels.retrain-pipeline="churn"') == ["a"]
    assert names("labels.retrain-pipeline=fraud") == ["b"]
    assert names('labels.retrain-pipeline="churn" and state="JOB_STATE_PENDING"') == ["a"]
    assert names("state=JOB_STATE_RUNNING") == []
    assert names('display_name="b" AND labels.retrain-pipeline="fraud"') == ["b"]
    assert sorted(names("")) == ["a", "b"]
    assert client.get_custom_job(name=first.name).display_name == "a"


def test_list_jobs_pages_through_every_job(server: VertexServer) -> None:
    client = job_client(server)
    for index in range(5):
        client.create_custom_job(parent=PARENT, custom_job=custom_job(f"job-{index}"))

    first_page = client.list_custom_jobs(request={"parent": PARENT, "page_size": 2})

    assert len(first_page.custom_jobs) == 2 and first_page.next_page_token
    assert sorted(job.display_name for job in first_page) == [f"job-{i}" for i in range(5)]


def test_list_jobs_rejects_an_unsupported_filter(server: VertexServer) -> None:
    with pytest.raises(exceptions.BadRequest, match="create_time"):
        list(
            job_client(server).list_custom_jobs(
                request={"parent": PARENT, "filter": 'create_time>"2024-01-01"'}
            )
        )


def test_cancel_waits_for_the_runtime_then_refuses_a_second_cancel(
    server: VertexServer, job_runtime: FakeJobRuntime, logs: LogStore
) -> None:
    client = job_client(server)
    job = client.create_custom_job(parent=PARENT, custom_job=custom_job())
    job_id = job_id_of(job)

    client.cancel_custom_job(name=job.name)

    assert client.get_custom_job(name=job.name).state == S.JOB_STATE_CANCELLING
    assert job_runtime.cancelled == [job_id]
    job_runtime.callbacks[job_id](update(S.JOB_STATE_CANCELLED))
    cancelled = client.get_custom_job(name=job.name)
    assert cancelled.state == S.JOB_STATE_CANCELLED and cancelled.end_time
    assert service_lines(logs, job_id)[-1] == ("INFO", "Job was cancelled.", "CANCELLED")
    with pytest.raises(exceptions.BadRequest, match="already JOB_STATE_CANCELLED"):
        client.cancel_custom_job(name=job.name)


def test_cancel_without_a_runtime_cancels_at_once(tmp_path: Path) -> None:
    with VertexServer(tmp_path / "vertex").start() as server:
        client = job_client(server)
        job = client.create_custom_job(parent=PARENT, custom_job=custom_job())

        client.cancel_custom_job(name=job.name)

        assert client.get_custom_job(name=job.name).state == S.JOB_STATE_CANCELLED


def test_runtime_updates_set_times_state_and_lifecycle_lines(
    server: VertexServer, job_runtime: FakeJobRuntime, logs: LogStore
) -> None:
    client = job_client(server)
    job = client.create_custom_job(parent=PARENT, custom_job=custom_job())
    job_id = job_id_of(job)
    report = job_runtime.callbacks[job_id]

    report(update(S.JOB_STATE_RUNNING))
    running = client.get_custom_job(name=job.name)
    report(update(S.JOB_STATE_SUCCEEDED))
    done = client.get_custom_job(name=job.name)

    assert running.state == S.JOB_STATE_RUNNING and running.start_time and not running.end_time
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert done.start_time == running.start_time
    assert done.end_time >= done.start_time
    assert service_lines(logs, job_id) == [
        ("INFO", "Waiting for job to be provisioned.", "PENDING"),
        ("INFO", "Job is running.", "RUNNING"),
        ("INFO", "Job completed successfully.", "SUCCEEDED"),
    ]


def test_a_failed_job_carries_the_error_and_logs_it_before_job_failed(
    server: VertexServer, job_runtime: FakeJobRuntime, logs: LogStore
) -> None:
    client = job_client(server)
    job = client.create_custom_job(parent=PARENT, custom_job=custom_job())
    job_id = job_id_of(job)

    job_runtime.callbacks[job_id](update(S.JOB_STATE_FAILED, "error: CUDA out of memory"))

    failed = client.get_custom_job(name=job.name)
    assert failed.state == S.JOB_STATE_FAILED and failed.end_time
    assert (failed.error.code, failed.error.message) == (13, "error: CUDA out of memory")
    assert service_lines(logs, job_id)[-2:] == [
        ("ERROR", "Job failed with error: error: CUDA out of memory", "FAILED"),
        ("INFO", "Job failed.", "FAILED"),
    ]


def test_unknown_field_is_refused_naming_it(server: VertexServer) -> None:
    body = {
        "displayName": "typo",
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "machineSpec": {"machineType": "n1-standard-4"},
                    "replicaCount": 1,
                    "containerSpec": {"imageUri": "trainer:latest"},
                    "replicaCuont": 2,
                }
            ]
        },
    }

    response = requests.post(f"{server.url}/v1/{PARENT}/customJobs", json=body, timeout=10)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert "replicaCuont" in error["message"]


def test_wrong_type_is_refused(server: VertexServer) -> None:
    body = {"displayName": "x", "jobSpec": {"workerPoolSpecs": "not-a-list"}}

    response = requests.post(f"{server.url}/v1/{PARENT}/customJobs", json=body, timeout=10)

    assert response.status_code == 400
    assert "workerPoolSpecs" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("break_job", "named"),
    [
        (
            lambda job: job.job_spec.worker_pool_specs[0].container_spec.__setattr__(
                "image_uri", ""
            ),
            "worker_pool_specs[0].container_spec.image_uri",
        ),
        (lambda job: job.__setattr__("display_name", ""), "display_name"),
        (lambda job: job.labels.__setitem__("Team", "x"), "Team"),
        (lambda job: job.labels.__setitem__("team", "A" * 3), "AAA"),
        (
            lambda job: job.job_spec.worker_pool_specs[1].__setattr__("replica_count", 0),
            "worker_pool_specs[1].replica_count",
        ),
    ],
)
def test_invalid_job_is_refused_naming_the_field(
    server: VertexServer, break_job: Callable[[aiplatform_v1.CustomJob], None], named: str
) -> None:
    job = custom_job()
    break_job(job)

    with pytest.raises(exceptions.BadRequest, match=named.replace("[", r"\[").replace("]", r"\]")):
        job_client(server).create_custom_job(parent=PARENT, custom_job=job)


def test_unknown_job_and_unknown_route_are_not_found(server: VertexServer) -> None:
    with pytest.raises(exceptions.NotFound, match="customJobs/123"):
        job_client(server).get_custom_job(name=f"{PARENT}/customJobs/123")
    response = requests.get(f"{server.url}/v1/{PARENT}/nothingHere", timeout=10)
    assert response.status_code == 404
    assert "nothingHere" in response.json()["error"]["message"]


def test_restart_keeps_jobs_and_fails_the_ones_in_flight(
    tmp_path: Path, logs: LogStore, job_runtime: FakeJobRuntime
) -> None:
    state_dir = tmp_path / "vertex"
    with VertexServer(state_dir, jobs=job_runtime, logs=logs).start() as first:
        client = job_client(first)
        running = client.create_custom_job(parent=PARENT, custom_job=custom_job("running"))
        finished = client.create_custom_job(parent=PARENT, custom_job=custom_job("finished"))
        job_runtime.callbacks[job_id_of(running)](update(S.JOB_STATE_RUNNING))
        job_runtime.callbacks[job_id_of(finished)](update(S.JOB_STATE_SUCCEEDED))
    assert job_runtime.closed

    with VertexServer(state_dir, logs=logs).start() as second:
        client = job_client(second)
        lost = client.get_custom_job(name=running.name)
        kept = client.get_custom_job(name=finished.name)

    assert lost.state == S.JOB_STATE_FAILED and lost.end_time
    assert lost.error.code == 10
    assert lost.error.message == (
        "localcloud was stopped while the job was running; submit it again"
    )
    assert kept.state == S.JOB_STATE_SUCCEEDED
    assert kept.job_spec == finished.job_spec
    assert service_lines(logs, job_id_of(running))[-1] == ("INFO", "Job failed.", "FAILED")


def test_updates_reported_while_stopping_do_not_count(
    tmp_path: Path, logs: LogStore, job_runtime: FakeJobRuntime
) -> None:
    server = VertexServer(tmp_path / "vertex", jobs=job_runtime, logs=logs).start()
    job = job_client(server).create_custom_job(parent=PARENT, custom_job=custom_job())
    server.stop()

    job_runtime.callbacks[job_id_of(job)](update(S.JOB_STATE_CANCELLED))

    with VertexServer(tmp_path / "vertex").start() as restarted:
        assert job_client(restarted).get_custom_job(name=job.name).state == S.JOB_STATE_FAILED


def test_concurrent_creates_all_persist(tmp_path: Path) -> None:
    state_dir = tmp_path / "vertex"
    with VertexServer(state_dir).start() as server:
        client = job_client(server)
        threads = [
            threading.Thread(
                target=client.create_custom_job,
                kwargs={"parent": PARENT, "custom_job": custom_job(f"c{i}")},
            )
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with VertexServer(state_dir).start() as restarted:
        pager = job_client(restarted).list_custom_jobs(request={"parent": PARENT})
        assert sorted(job.display_name for job in pager) == sorted(f"c{i}" for i in range(8))
