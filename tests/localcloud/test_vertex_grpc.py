"""The Vertex AI emulator's gRPC front, used by the official clients the way production
uses Vertex AI: GAPIC clients over plaintext gRPC (VERTEX_EMULATOR_HOST), the high-level
SDK over gRPC with TLS, and the same answers as the REST front for the same calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1

from localcloud.tls import certificate, trusted_roots
from localcloud.vertex.server import VertexServer
from retrain.adapters.clients import VertexConnection

PARENT = "projects/acme/locations/us-central1"
JOB = {
    "display_name": "train-1",
    "labels": {"team": "ml", "retrain-run": "r1"},
    "job_spec": {
        "worker_pool_specs": [
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "container_spec": {"image_uri": "gcr.io/acme/trainer:1", "args": ["--x=1"]},
            }
        ]
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VertexServer]:
    with VertexServer(tmp_path_factory.mktemp("vertex"), tls=True).start() as running:
        yield running


def clients(server: VertexServer, transport: str, name: str) -> Any:
    endpoint = server.grpc_host if transport == "grpc" else server.url
    return VertexConnection(endpoint, transport, emulated=True).client(name)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_custom_job_lifecycle_is_the_same_on_both_transports(server: VertexServer, transport):
    jobs = clients(server, transport, "JobServiceClient")
    created = jobs.create_custom_job(parent=PARENT, custom_job=JOB)
    assert created.name.startswith(f"{PARENT}/customJobs/")
    assert created.state == aiplatform_v1.JobState.JOB_STATE_PENDING or created.state in (
        aiplatform_v1.JobState.JOB_STATE_QUEUED,
        aiplatform_v1.JobState.JOB_STATE_RUNNING,
    )
    got = jobs.get_custom_job(name=created.name)
    assert got.job_spec.worker_pool_specs[0].container_spec.args == ["--x=1"]
    assert got.labels["retrain-run"] == "r1"

    found = jobs.list_custom_jobs(
        request={
            "parent": PARENT,
            "filter": f'labels.retrain-run="r1" AND display_name="{JOB["display_name"]}"',
        }
    )
    assert created.name in [job.name for job in found]

    jobs.cancel_custom_job(name=created.name)
    cancelled = jobs.get_custom_job(name=created.name)
    assert cancelled.state in (
        aiplatform_v1.JobState.JOB_STATE_CANCELLING,
        aiplatform_v1.JobState.JOB_STATE_CANCELLED,
    )


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_errors_map_to_the_same_api_exceptions(server: VertexServer, transport):
    jobs = clients(server, transport, "JobServiceClient")
    with pytest.raises(exceptions.NotFound, match="customJobs/404"):
        jobs.get_custom_job(name=f"{PARENT}/customJobs/404")
    # REST raises by HTTP status (400: BadRequest), gRPC by code (InvalidArgument, a
    # BadRequest): one `except BadRequest` serves both, as with Vertex AI itself.
    with pytest.raises(exceptions.BadRequest, match="worker pool"):
        jobs.create_custom_job(parent=PARENT, custom_job={"display_name": "no spec"})


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_long_running_upload_completes_through_the_operations_service(
    server: VertexServer, transport
):
    models = clients(server, transport, "ModelServiceClient")
    operation = models.upload_model(
        parent=PARENT,
        model={
            "display_name": f"churn-{transport}",
            "artifact_uri": "gs://acme-artifacts/runs/churn/r1/model",
            "container_spec": {"image_uri": "gcr.io/acme/serving:1"},
        },
    )
    uploaded = operation.result(timeout=30)
    model = models.get_model(name=uploaded.model)
    assert model.display_name == f"churn-{transport}"
    assert model.version_id == "1"
    # The operation itself reads back through google.longrunning.Operations.
    assert operation.done()


def test_grpc_and_rest_see_one_state(server: VertexServer):
    over_grpc = clients(server, "grpc", "JobServiceClient")
    over_rest = clients(server, "rest", "JobServiceClient")
    created = over_grpc.create_custom_job(parent=PARENT, custom_job=JOB)
    assert over_rest.get_custom_job(name=created.name) == over_grpc.get_custom_job(
        name=created.name
    )


def test_a_service_localcloud_does_not_emulate_answers_unimplemented(server: VertexServer):
    channel = grpc.insecure_channel(server.grpc_host)
    call = channel.unary_unary("/google.cloud.aiplatform.v1.DatasetService/ListDatasets")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()


def test_the_front_serves_every_unary_method_of_the_four_services(server: VertexServer):
    from localcloud.vertex.grpc_front import VertexGrpcFront

    names = VertexGrpcFront(server.dispatch).method_names
    for method in (
        "JobService/CreateCustomJob",
        "JobService/ListCustomJobs",
        "JobService/CancelCustomJob",
        "JobService/CreateHyperparameterTuningJob",
        "ModelService/UploadModel",
        "ModelService/MergeVersionAliases",
        "EndpointService/DeployModel",
        "PredictionService/Predict",
        "PredictionService/RawPredict",
    ):
        assert f"/google.cloud.aiplatform.v1.{method}" in names
    assert "/google.longrunning.Operations/GetOperation" in names
    # Streaming methods have no unary transcoding: gRPC answers them UNIMPLEMENTED.
    assert "/google.cloud.aiplatform.v1.PredictionService/StreamRawPredict" not in names


SDK_SCRIPT = """
import json
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform

# The only lines that differ from production: endpoint and credentials.
aiplatform.init(project="acme", location="us-central1", api_endpoint="{endpoint}",
                credentials=AnonymousCredentials(), staging_bucket="gs://acme-staging")
job = aiplatform.CustomJob(
    display_name="sdk-job",
    worker_pool_specs=[{{"machine_spec": {{"machine_type": "n1-standard-4"}}, "replica_count": 1,
                        "container_spec": {{"image_uri": "gcr.io/acme/trainer:1"}}}}],
    labels={{"origin": "sdk"}},
)
job.submit()
listed = [j.resource_name for j in aiplatform.CustomJob.list(filter='labels.origin="sdk"')]
job.cancel()
model = aiplatform.Model.upload(display_name="sdk-model", artifact_uri="gs://acme-artifacts/m",
                                serving_container_image_uri="gcr.io/acme/serving:1")
print(json.dumps({{"job": job.resource_name, "listed": listed,
                  "state": aiplatform.CustomJob.get(job.resource_name).state.name,
                  "model": model.resource_name, "version": model.version_id}}))
"""


def test_the_sdk_over_grpc_with_tls_needs_only_endpoint_and_credentials(server: VertexServer):
    """The SDK opens TLS channels only: it reaches the TLS port, trusting localcloud's
    certificate through gRPC's own GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (a fresh process,
    since gRPC reads it once)."""
    script = SDK_SCRIPT.format(endpoint=server.grpc_tls_host)
    roots = trusted_roots(certificate(server.tls_certificate.parent), None)
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(roots)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["listed"] == [result["job"]]
    assert result["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    assert result["model"].startswith("projects/acme/locations/us-central1/models/")
    assert result["version"] == "1"
