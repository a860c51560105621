"""The Vertex AI emulator's API, exercised only through the official `aiplatform_v1`
clients over REST (and `requests` where a client cannot send what is being tested)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api import httpbody_pb2
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2

from localcloud.errors import LocalCloudError
from localcloud.logstore import LogStore
from localcloud.vertex.runtime import DeployedServer, JobUpdate
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


def model_client(server: VertexServer) -> aiplatform_v1.ModelServiceClient:
    return aiplatform_v1.ModelServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options=client_options(server)
    )


def endpoint_client(server: VertexServer) -> aiplatform_v1.EndpointServiceClient:
    return aiplatform_v1.EndpointServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options=client_options(server)
    )


def prediction_client(server: VertexServer) -> aiplatform_v1.PredictionServiceClient:
    return aiplatform_v1.PredictionServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options=client_options(server)
    )


class FakeJobRuntime:
    """Records submissions; the test drives each job's states through its callback."""

    def __init__(self) -> None:
        self.submitted: dict[str, aiplatform_v1.CustomJob] = {}
        self.callbacks: dict[str, Callable[[JobUpdate], None]] = {}
        self.cancelled: list[str] = []
        self.closed = False
        self.refuse_with: str | None = None

    def submit(
        self, job_id: str, job: aiplatform_v1.CustomJob, on_update: Callable[[JobUpdate], None]
    ) -> None:
        if self.refuse_with is not None:
            raise LocalCloudError(self.refuse_with)
        self.submitted[job_id] = job
        self.callbacks[job_id] = on_update

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def close(self) -> None:
        self.closed = True


class EchoModelServer:
    """A real serving container stand-in: answers the predict route with each instance
    tagged by the model's artifact URI, and refuses instances that are not objects."""

    def __init__(self, artifact_uri: str) -> None:
        artifact = artifact_uri

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not all(isinstance(item, dict) for item in body["instances"]):
                    self._reply(400, {"error": "instances must be JSON objects"})
                    return
                predictions = [{"artifact": artifact, **item} for item in body["instances"]]
                self._reply(200, {"predictions": predictions})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeModelRuntime:
    """Serves each deployed model with an EchoModelServer; `fail_with` makes deploys fail."""

    def __init__(self) -> None:
        self.servers: dict[str, EchoModelServer] = {}
        self.deployed: dict[str, aiplatform_v1.Model] = {}
        self.fail_with: str | None = None

    def deploy(self, deployed_model_id: str, model: aiplatform_v1.Model) -> DeployedServer:
        if self.fail_with is not None:
            raise LocalCloudError(self.fail_with)
        server = EchoModelServer(model.artifact_uri)
        self.servers[deployed_model_id] = server
        self.deployed[deployed_model_id] = model
        return DeployedServer(url=server.url, predict_route="/predict", health_route="/health")

    def undeploy(self, deployed_model_id: str) -> None:
        self.deployed.pop(deployed_model_id)
        self.servers.pop(deployed_model_id).stop()

    def close(self) -> None:
        for deployed_model_id in list(self.servers):
            self.undeploy(deployed_model_id)


@pytest.fixture
def logs(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.jsonl")


@pytest.fixture
def job_runtime() -> FakeJobRuntime:
    return FakeJobRuntime()


@pytest.fixture
def model_runtime() -> FakeModelRuntime:
    return FakeModelRuntime()


@pytest.fixture
def server(
    tmp_path: Path, logs: LogStore, job_runtime: FakeJobRuntime, model_runtime: FakeModelRuntime
) -> Iterator[VertexServer]:
    with VertexServer(
        tmp_path / "vertex", jobs=job_runtime, models=model_runtime, logs=logs
    ).start() as running:
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


def test_list_jobs_speaks_the_filter_language(
    server: VertexServer, job_runtime: FakeJobRuntime
) -> None:
    client = job_client(server)
    made = {
        name: client.create_custom_job(parent=PARENT, custom_job=custom_job(name, **labels))
        for name, labels in (
            ("a", {"team": "churn", "tier": ""}),
            ("b", {"team": "churn"}),
            ("c", {"team": "fraud"}),
        )
    }
    job_runtime.callbacks[job_id_of(made["b"])](update(S.JOB_STATE_SUCCEEDED))

    def names(filter_text: str) -> list[str]:
        pager = client.list_custom_jobs(request={"parent": PARENT, "filter": filter_text})
        return sorted(job.display_name for job in pager)

    # OR binds tighter than AND, as AIP-160 defines.
    assert names('labels.team="churn" AND display_name="a" OR display_name="b"') == ["a", "b"]
    assert names('(labels.team="churn" AND display_name="a") OR display_name="c"') == ["a", "c"]
    assert names("labels.tier:*") == ["a"]  # present, even with an empty value
    assert names("labels:tier") == ["a"]
    assert names("NOT labels:tier") == ["b", "c"]
    assert names('-labels.team="churn"') == ["c"]
    assert names('state!="JOB_STATE_SUCCEEDED" labels.team="churn"') == ["a"]
    assert names("state=JOB_STATE_SUCCEEDED") == ["b"]
    created = aiplatform_v1.CustomJob.to_dict(made["b"])["create_time"]  # RFC 3339
    assert names(f'createTime>="{created}"') == ["b", "c"]
    assert names(f'create_time<"{created}"') == ["a"]
    assert names('end_time>"2000-01-01T00:00:00Z"') == ["b"]


@pytest.mark.parametrize(
    ("filter_text", "named"),
    [
        ('owner="x"', "Unsupported filter field 'owner'"),
        ('create_time>"2024-01-01"', "create_time takes an RFC 3339 timestamp"),
        ('state<"JOB_STATE_FAILED"', "state does not support '<'"),
        ('state="DONE"', "'DONE' is not a state"),
        ('(display_name="a"', "expected '\\)'"),
        ('display_name="a', "unterminated string"),
        ("display_name", "expected a comparison"),
        ('display_name="a" AND', "expected a field name"),
        ("labels=x", "labels:KEY"),
    ],
)
def test_list_jobs_refuses_a_filter_naming_the_problem(
    server: VertexServer, filter_text: str, named: str
) -> None:
    with pytest.raises(exceptions.BadRequest, match=named) as refused:
        list(job_client(server).list_custom_jobs(request={"parent": PARENT, "filter": filter_text}))
    assert refused.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_list_jobs_takes_no_order_by(server: VertexServer) -> None:
    # ListCustomJobsRequest has no order_by; Google's gateway refuses unknown parameters.
    response = requests.get(
        f"{server.url}/v1/{PARENT}/customJobs", params={"orderBy": "create_time"}, timeout=10
    )

    assert response.status_code == 400
    assert "orderBy" in response.json()["error"]["message"]


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
    raw = requests.post(f"{server.url}/v1/{job.name}:cancel", json={}, timeout=10)
    assert (raw.status_code, raw.json()["error"]["status"]) == (400, "FAILED_PRECONDITION")


def test_delete_removes_only_a_finished_job(
    server: VertexServer, job_runtime: FakeJobRuntime
) -> None:
    client = job_client(server)
    job = client.create_custom_job(parent=PARENT, custom_job=custom_job())

    with pytest.raises(exceptions.BadRequest, match="cancel it before deleting"):
        client.delete_custom_job(name=job.name)
    job_runtime.callbacks[job_id_of(job)](update(S.JOB_STATE_SUCCEEDED))
    client.delete_custom_job(name=job.name).result(timeout=10)

    with pytest.raises(exceptions.NotFound):
        client.get_custom_job(name=job.name)


def test_enums_are_names_unless_the_client_asks_for_integers(server: VertexServer) -> None:
    job = job_client(server).create_custom_job(parent=PARENT, custom_job=custom_job())
    url = f"{server.url}/v1/{job.name}"

    by_name = requests.get(url, timeout=10).json()
    by_number = requests.get(url, params={"$alt": "json;enum-encoding=int"}, timeout=10).json()

    assert by_name["state"] == "JOB_STATE_PENDING"
    assert by_number["state"] == S.JOB_STATE_PENDING
    assert by_name["createTime"].endswith("Z")


def test_cancel_without_a_runtime_cancels_at_once(tmp_path: Path) -> None:
    with VertexServer(tmp_path / "vertex").start() as server:
        client = job_client(server)
        job = client.create_custom_job(parent=PARENT, custom_job=custom_job())

        client.cancel_custom_job(name=job.name)

        cancelled = client.get_custom_job(name=job.name)
        assert cancelled.state == S.JOB_STATE_CANCELLED
        # As documented for CancelCustomJob: error.code is google.rpc.Code.CANCELLED.
        assert (cancelled.error.code, cancelled.error.message) == (1, "CANCELED")


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


def test_a_runtime_that_cannot_take_the_job_fails_it(
    server: VertexServer, job_runtime: FakeJobRuntime, logs: LogStore
) -> None:
    job_runtime.refuse_with = "the job runtime is closed"

    job = job_client(server).create_custom_job(parent=PARENT, custom_job=custom_job())

    assert job.state == S.JOB_STATE_FAILED
    assert job.error.message == "the job runtime is closed"
    assert service_lines(logs, job_id_of(job))[-1] == ("INFO", "Job failed.", "FAILED")


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


# -- models --------------------------------------------------------------------------


def serving_model(
    display_name: str = "churn", artifact_uri: str = "gs://artifacts/runs/churn/r1/model", **kw: Any
) -> aiplatform_v1.Model:
    return aiplatform_v1.Model(
        display_name=display_name,
        artifact_uri=artifact_uri,
        container_spec=aiplatform_v1.ModelContainerSpec(
            image_uri="us-docker.pkg.dev/p/retrain/serving:latest",
            predict_route="/predict",
            health_route="/health",
        ),
        labels={"retrain-pipeline": display_name},
        **kw,
    )


def upload(
    server: VertexServer, model: aiplatform_v1.Model, parent_model: str = ""
) -> aiplatform_v1.UploadModelResponse:
    operation = model_client(server).upload_model(
        request={"parent": PARENT, "model": model, "parent_model": parent_model}
    )
    response: aiplatform_v1.UploadModelResponse = operation.result(timeout=10)
    return response


def values(*items: Any) -> list[struct_pb2.Value]:
    """Instances as the prediction client types them: protobuf Values."""
    return [json_format.ParseDict(item, struct_pb2.Value()) for item in items]


def predictions_of(response: aiplatform_v1.PredictResponse) -> Any:
    return aiplatform_v1.PredictResponse.to_dict(response)["predictions"]


def test_upload_creates_version_1_then_parent_model_adds_version_2(server: VertexServer) -> None:
    first = upload(server, serving_model(version_aliases=["champion"]))
    second = upload(
        server, serving_model(artifact_uri="gs://artifacts/runs/churn/r2/model"), first.model
    )

    client = model_client(server)
    model_id = first.model.rsplit("/", 1)[1]
    assert model_id.isdigit()
    assert (first.model_version_id, second.model_version_id) == ("1", "2")
    assert second.model == first.model == f"{PARENT}/models/{model_id}"
    # The first version gets the default alias; a later one that does not ask for it
    # leaves it where it is.
    default = client.get_model(name=first.model)
    assert (default.version_id, default.artifact_uri) == ("1", "gs://artifacts/runs/churn/r1/model")
    assert list(default.version_aliases) == ["default", "champion"]
    newest = client.get_model(name=f"{first.model}@2")
    assert newest.artifact_uri == "gs://artifacts/runs/churn/r2/model"
    assert newest.container_spec == serving_model().container_spec
    assert list(newest.version_aliases) == []
    versions = client.list_model_versions(name=first.model)
    assert [v.version_id for v in versions] == ["1", "2"]


def test_an_upload_naming_the_default_alias_takes_it_and_aliases_move(
    server: VertexServer,
) -> None:
    first = upload(server, serving_model(version_aliases=["champion"]))
    upload(server, serving_model(version_aliases=["default", "champion"]), first.model)

    client = model_client(server)
    assert client.get_model(name=first.model).version_id == "2"
    assert list(client.get_model(name=f"{first.model}@2").version_aliases) == [
        "default",
        "champion",
    ]
    assert list(client.get_model(name=f"{first.model}@1").version_aliases) == []
    with pytest.raises(exceptions.BadRequest, match="repeats champion"):
        upload(server, serving_model(version_aliases=["champion", "champion"]), first.model)


def test_merge_version_aliases_moves_and_removes_aliases(server: VertexServer) -> None:
    first = upload(server, serving_model(version_aliases=["champion"]))
    upload(server, serving_model(version_aliases=["default"]), first.model)
    client = model_client(server)

    moved = client.merge_version_aliases(
        name=f"{first.model}@2", version_aliases=["champion", "canary"]
    )
    removed = client.merge_version_aliases(
        name=f"{first.model}@canary", version_aliases=["-canary"]
    )

    assert list(moved.version_aliases) == ["default", "champion", "canary"]
    assert list(removed.version_aliases) == ["default", "champion"]
    assert list(client.get_model(name=f"{first.model}@1").version_aliases) == []
    assert client.get_model(name=f"{first.model}@champion").version_id == "2"
    with pytest.raises(exceptions.NotFound, match="canary"):
        client.get_model(name=f"{first.model}@canary")
    with pytest.raises(exceptions.BadRequest, match="default"):
        client.merge_version_aliases(name=f"{first.model}@2", version_aliases=["-default"])


def test_list_models_filters_by_display_name_and_label(server: VertexServer) -> None:
    churn = upload(server, serving_model("churn"))
    upload(server, serving_model("churn", version_aliases=["default"]), churn.model)
    upload(server, serving_model("fraud"))
    client = model_client(server)

    def listed(filter_text: str) -> list[tuple[str, str]]:
        pager = client.list_models(request={"parent": PARENT, "filter": filter_text})
        return [(model.display_name, model.version_id) for model in pager]

    assert listed('display_name="churn"') == [("churn", "2")]
    assert listed("labels.retrain-pipeline=fraud") == [("fraud", "1")]


def test_list_models_and_versions_in_order(server: VertexServer) -> None:
    names = [upload(server, serving_model(name)).model for name in ("b", "c", "a")]
    upload(server, serving_model("b"), names[0])
    client = model_client(server)

    def listed(order_by: str) -> list[str]:
        pager = client.list_models(request={"parent": PARENT, "order_by": order_by})
        return [model.display_name for model in pager]

    assert listed("display_name") == ["a", "b", "c"]
    assert listed("create_time desc") == ["a", "c", "b"]
    assert listed("updateTime desc, display_name") == ["a", "c", "b"]
    versions = client.list_model_versions(
        request={"name": names[0], "order_by": "create_time desc"}
    )
    assert [v.version_id for v in versions] == ["2", "1"]
    with pytest.raises(exceptions.BadRequest, match="cannot order by 'labels'"):
        listed("labels")
    with pytest.raises(exceptions.BadRequest, match=r"FIELD \[asc\|desc\]"):
        listed("display_name sideways")
    only_c = client.list_models(request={"parent": PARENT, "filter": f'model!="{_id(names[0])}"'})
    assert sorted(m.display_name for m in only_c) == ["a", "c"]


def _id(name: str) -> str:
    return name.rsplit("/", 1)[1]


def test_update_model_sets_model_fields_on_the_model_and_version_fields_on_a_version(
    server: VertexServer,
) -> None:
    first = upload(server, serving_model(version_aliases=["champion"]))
    upload(server, serving_model(), first.model)
    client = model_client(server)

    def update_model(name: str, paths: list[str], **fields: Any) -> aiplatform_v1.Model:
        return client.update_model(
            model=aiplatform_v1.Model(name=name, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )

    update_model(first.model, ["display_name", "labels"], display_name="renamed", labels={"a": "1"})
    update_model(
        f"{first.model}@2",
        ["version_description", "labels"],
        version_description="second",
        labels={"v": "2"},
    )

    one, two = (client.get_model(name=f"{first.model}@{v}") for v in ("1", "2"))
    assert (one.display_name, two.display_name) == ("renamed", "renamed")
    assert dict(one.labels) == {"retrain-pipeline": "churn", "a": "1"}
    assert dict(two.labels) == {"a": "1", "v": "2"}
    assert (one.version_description, two.version_description) == ("", "second")
    with pytest.raises(exceptions.BadRequest, match="display_name") as mixed:
        update_model(f"{first.model}@champion", ["display_name"], display_name="x")
    assert mixed.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    with pytest.raises(exceptions.BadRequest, match="artifact_uri"):
        update_model(first.model, ["artifact_uri"], artifact_uri="gs://elsewhere")


def test_upload_to_an_unknown_parent_model_is_not_found(server: VertexServer) -> None:
    with pytest.raises(exceptions.NotFound, match="models/404"):
        upload(server, serving_model(), f"{PARENT}/models/404")


def test_models_survive_a_restart(tmp_path: Path) -> None:
    with VertexServer(tmp_path / "vertex").start() as server:
        first = upload(server, serving_model(version_aliases=["champion"]))
        upload(server, serving_model(version_aliases=["default"]), first.model)
    with VertexServer(tmp_path / "vertex").start() as server:
        client = model_client(server)
        assert client.get_model(name=f"{first.model}@champion").version_id == "1"
        assert client.get_model(name=first.model).version_id == "2"


def test_delete_version_and_model_refuse_what_is_in_use(server: VertexServer) -> None:
    first = upload(server, serving_model())
    upload(server, serving_model(version_aliases=["default"]), first.model)
    endpoint = create_endpoint(server)
    deploy(server, endpoint.name, f"{first.model}@1", {"0": 100})
    client = model_client(server)

    with pytest.raises(exceptions.BadRequest, match="default version"):
        client.delete_model_version(name=f"{first.model}@2")
    with pytest.raises(exceptions.BadRequest, match="undeploy it first"):
        client.delete_model_version(name=f"{first.model}@1")
    with pytest.raises(exceptions.BadRequest, match="undeploy it first"):
        client.delete_model(name=first.model)

    deployed_id = endpoint_client(server).get_endpoint(name=endpoint.name).deployed_models[0].id
    endpoint_client(server).undeploy_model(
        endpoint=endpoint.name, deployed_model_id=deployed_id
    ).result(timeout=10)
    client.delete_model_version(name=f"{first.model}@1").result(timeout=10)
    assert [v.version_id for v in client.list_model_versions(name=first.model)] == ["2"]
    client.delete_model(name=first.model).result(timeout=10)
    with pytest.raises(exceptions.NotFound):
        client.get_model(name=first.model)


# -- endpoints and predictions -------------------------------------------------------


def create_endpoint(server: VertexServer, display_name: str = "churn") -> aiplatform_v1.Endpoint:
    operation = endpoint_client(server).create_endpoint(
        parent=PARENT, endpoint=aiplatform_v1.Endpoint(display_name=display_name)
    )
    endpoint: aiplatform_v1.Endpoint = operation.result(timeout=10)
    return endpoint


def deploy(
    server: VertexServer, endpoint: str, model: str, traffic_split: dict[str, int]
) -> aiplatform_v1.DeployedModel:
    operation = endpoint_client(server).deploy_model(
        endpoint=endpoint,
        deployed_model=aiplatform_v1.DeployedModel(
            model=model,
            dedicated_resources=aiplatform_v1.DedicatedResources(
                machine_spec=aiplatform_v1.MachineSpec(machine_type="n1-standard-2"),
                min_replica_count=1,
            ),
        ),
        traffic_split=traffic_split,
    )
    response: aiplatform_v1.DeployModelResponse = operation.result(timeout=10)
    return response.deployed_model


def test_endpoint_create_get_and_list_by_display_name(server: VertexServer) -> None:
    churn = create_endpoint(server, "churn")
    fraud = create_endpoint(server, "fraud")
    client = endpoint_client(server)

    listed = client.list_endpoints(request={"parent": PARENT, "filter": 'display_name="churn"'})

    assert churn.name.startswith(f"{PARENT}/endpoints/")
    assert [endpoint.name for endpoint in listed] == [churn.name]
    assert client.get_endpoint(name=churn.name) == churn
    by_id = client.list_endpoints(
        request={"parent": PARENT, "filter": f'endpoint="{_id(fraud.name)}"'}
    )
    assert [endpoint.name for endpoint in by_id] == [fraud.name]
    ordered = client.list_endpoints(request={"parent": PARENT, "order_by": "display_name desc"})
    assert [endpoint.display_name for endpoint in ordered] == ["fraud", "churn"]


def test_deploy_without_dedicated_resources_is_refused(server: VertexServer) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)
    client = endpoint_client(server)

    assert list(
        model_client(server).get_model(name=model.model).supported_deployment_resources_types
    ) == [aiplatform_v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES]
    with pytest.raises(exceptions.BadRequest, match="dedicated_resources is required") as bad:
        client.deploy_model(
            endpoint=endpoint.name,
            deployed_model=aiplatform_v1.DeployedModel(model=model.model),
            traffic_split={"0": 100},
        )
    assert bad.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"
    with pytest.raises(exceptions.BadRequest, match="machine_type is required"):
        client.deploy_model(
            endpoint=endpoint.name,
            deployed_model=aiplatform_v1.DeployedModel(
                model=model.model,
                dedicated_resources=aiplatform_v1.DedicatedResources(min_replica_count=1),
            ),
        )
    assert not client.get_endpoint(name=endpoint.name).deployed_models


def test_raw_predict_takes_and_answers_http_bodies(server: VertexServer) -> None:
    model = upload(server, serving_model(artifact_uri="gs://a/v1"))
    endpoint = create_endpoint(server)
    deploy(server, endpoint.name, model.model, {"0": 100})
    route = f"/v1/{endpoint.name}:rawPredict"

    # Over HTTP the body is the payload itself, and so is the answer.
    reply = requests.post(
        server.url + route,
        data=b'{"instances": [{"x": 1}]}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    # The RawPredictRequest form, as the gRPC front hands a call over.
    body = base64.b64encode(b'{"instances": [{"x": 2}]}').decode()
    answer = server.dispatch(
        "POST", route, {}, {"httpBody": {"contentType": "application/json", "data": body}}
    )

    assert reply.status_code == 200
    assert reply.json() == {"predictions": [{"artifact": "gs://a/v1", "x": 1}]}
    assert isinstance(answer, httpbody_pb2.HttpBody)
    assert json.loads(answer.data) == {"predictions": [{"artifact": "gs://a/v1", "x": 2}]}
    refused = requests.post(
        server.url + route,
        data=b'{"instances": [3]}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert "instances must be JSON objects" in refused.json()["error"]["message"]


def test_deploy_split_predict_and_undeploy(
    server: VertexServer, model_runtime: FakeModelRuntime
) -> None:
    first = upload(server, serving_model(artifact_uri="gs://a/v1"))
    upload(
        server, serving_model(artifact_uri="gs://a/v2", version_aliases=["default"]), first.model
    )
    endpoint = create_endpoint(server)
    client = endpoint_client(server)

    old = deploy(server, endpoint.name, f"{first.model}@1", {"0": 100})
    new = deploy(server, endpoint.name, first.model, {"0": 100, old.id: 0})

    current = client.get_endpoint(name=endpoint.name)
    assert [m.id for m in current.deployed_models] == [old.id, new.id]
    assert (old.model, old.model_version_id) == (first.model, "1")
    assert (new.model, new.model_version_id) == (first.model, "2")
    assert dict(current.traffic_split) == {old.id: 0, new.id: 100}
    assert model_runtime.deployed[new.id].artifact_uri == "gs://a/v2"

    predicted = prediction_client(server).predict(
        endpoint=endpoint.name, instances=values({"x": 1.5}, {"x": 2})
    )
    assert predicted.deployed_model_id == new.id
    assert (predicted.model, predicted.model_version_id) == (first.model, "2")
    assert predictions_of(predicted) == [
        {"artifact": "gs://a/v2", "x": 1.5},
        {"artifact": "gs://a/v2", "x": 2},
    ]

    client.undeploy_model(endpoint=endpoint.name, deployed_model_id=old.id).result(timeout=10)
    after = client.get_endpoint(name=endpoint.name)
    assert [m.id for m in after.deployed_models] == [new.id]
    assert dict(after.traffic_split) == {new.id: 100}
    assert old.id not in model_runtime.servers


def test_predict_passes_the_containers_refusal_through(server: VertexServer) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)
    deploy(server, endpoint.name, model.model, {"0": 100})

    with pytest.raises(exceptions.BadRequest, match="instances must be JSON objects"):
        prediction_client(server).predict(endpoint=endpoint.name, instances=values([1, 2]))


def test_predict_without_a_deployed_model_is_refused(server: VertexServer) -> None:
    endpoint = create_endpoint(server)

    with pytest.raises(exceptions.BadRequest, match="no deployed model"):
        prediction_client(server).predict(endpoint=endpoint.name, instances=values({"x": 1}))


def test_traffic_split_must_sum_to_100(server: VertexServer) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)

    with pytest.raises(exceptions.BadRequest, match="sum to 100, got 90"):
        deploy(server, endpoint.name, model.model, {"0": 90})
    deployed = deploy(server, endpoint.name, model.model, {"0": 100})
    client = endpoint_client(server)
    with pytest.raises(exceptions.BadRequest, match="not deployed: 42"):
        client.update_endpoint(
            endpoint=aiplatform_v1.Endpoint(
                name=endpoint.name, traffic_split={deployed.id: 50, "42": 50}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
        )
    assert dict(client.get_endpoint(name=endpoint.name).traffic_split) == {deployed.id: 100}


def test_update_endpoint_moves_traffic(server: VertexServer) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)
    first = deploy(server, endpoint.name, model.model, {"0": 100})
    second = deploy(server, endpoint.name, model.model, {"0": 0, first.id: 100})

    updated = endpoint_client(server).update_endpoint(
        endpoint=aiplatform_v1.Endpoint(
            name=endpoint.name, traffic_split={first.id: 20, second.id: 80}
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
    )

    assert dict(updated.traffic_split) == {first.id: 20, second.id: 80}
    assert updated.display_name == "churn"


def test_failed_deploy_is_an_operation_error_and_changes_nothing(
    server: VertexServer, model_runtime: FakeModelRuntime
) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)
    model_runtime.fail_with = "serving container exited with code 1: no such file model.pkl"

    with pytest.raises(exceptions.GoogleAPICallError, match=r"model\.pkl"):
        deploy(server, endpoint.name, model.model, {"0": 100})

    unchanged = endpoint_client(server).get_endpoint(name=endpoint.name)
    assert unchanged == endpoint
    assert not unchanged.deployed_models and not unchanged.traffic_split


def test_undeploying_a_model_with_traffic_needs_a_new_split(server: VertexServer) -> None:
    model = upload(server, serving_model())
    endpoint = create_endpoint(server)
    first = deploy(server, endpoint.name, model.model, {"0": 100})
    deploy(server, endpoint.name, model.model, {"0": 0, first.id: 100})

    with pytest.raises(exceptions.BadRequest, match="traffic"):
        endpoint_client(server).undeploy_model(endpoint=endpoint.name, deployed_model_id=first.id)


def test_deployed_models_are_served_again_after_a_restart(tmp_path: Path) -> None:
    runtime = FakeModelRuntime()
    with VertexServer(tmp_path / "vertex", models=runtime).start() as server:
        model = upload(server, serving_model(artifact_uri="gs://a/v1"))
        endpoint = create_endpoint(server)
        deployed = deploy(server, endpoint.name, model.model, {"0": 100})
    assert not runtime.servers

    with VertexServer(tmp_path / "vertex", models=runtime).start() as server:
        predicted = prediction_client(server).predict(
            endpoint=endpoint.name, instances=values({"x": 1})
        )

    assert predicted.deployed_model_id == deployed.id
    assert predictions_of(predicted) == [{"artifact": "gs://a/v1", "x": 1}]


def test_operations_answer_on_v1_and_ui_paths(server: VertexServer) -> None:
    operation = model_client(server).upload_model(parent=PARENT, model=serving_model())
    name = operation.operation.name

    for prefix in ("v1", "ui"):
        response = requests.get(f"{server.url}/{prefix}/{name}", timeout=10)
        assert response.status_code == 200
        body = response.json()
        assert body["name"] == name and body["done"] is True
        assert body["response"]["@type"].endswith("UploadModelResponse")
