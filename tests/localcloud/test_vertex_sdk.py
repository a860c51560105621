"""The high-level Vertex AI SDK (`from google.cloud import aiplatform`) against the
localcloud emulator, configured only through `aiplatform.init`, making each call the way
Google's samples and the SDK's docstrings make it. Jobs and deployed models really run:
small scripts stand in for the container images."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, aiplatform_v1, storage  # type: ignore[attr-defined]

from localcloud.logstore import LogStore
from localcloud.procs import wait_until
from localcloud.storage import StorageServer
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime, LocalModelRuntime
from localcloud.vertex.server import VertexServer
from tests.conftest import TLS_DIR

PROJECT = "sdk-project"
LOCATION = "us-central1"
REGISTRY = "us-docker.pkg.dev/sdk-project/images"
TRAIN_IMAGE = f"{REGISTRY}/train:1"
SLEEP_IMAGE = f"{REGISTRY}/sleep:1"
SERVE_IMAGE = f"{REGISTRY}/serve:1"
WAIT_S = 30.0  # deadline for anything polled
S = aiplatform_v1.JobState
DEDICATED = aiplatform_v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES
_buckets = itertools.count(1)

TRAIN = """
import os
print("trained; model goes to", os.environ.get("AIP_MODEL_DIR"))
"""

SLEEP = """
import time
print("training for a long time", flush=True)
time.sleep(120)
"""

# A custom serving container: Vertex's contract (AIP_HTTP_PORT, health and predict
# routes). JSON requests get predictions tagged with the model's artifact URI; any other
# body is answered in plain text, to show that rawPredict passes bodies through.
SERVE = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, content_type, data):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        ok = self.path == os.environ["AIP_HEALTH_ROUTE"]
        self.send(200 if ok else 404, "application/json", b"{}")

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        kind = self.headers["Content-Type"]
        if kind != "application/json":
            self.send(200, "text/plain", f"{kind}: {len(data)} bytes".encode())
            return
        instances = json.loads(data)["instances"]
        storage = os.environ["AIP_STORAGE_URI"]
        body = {"predictions": [{"model": storage, "echo": x} for x in instances]}
        self.send(200, "application/json", json.dumps(body).encode())

HTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with StorageServer(root=tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> ImageCommands:
    scripts = tmp_path_factory.mktemp("images")
    extra = {}
    for image, body in ((TRAIN_IMAGE, TRAIN), (SLEEP_IMAGE, SLEEP), (SERVE_IMAGE, SERVE)):
        script = scripts / f"{image.rsplit('/', 1)[1].split(':')[0]}.py"
        script.write_text(textwrap.dedent(body))
        extra[image] = [sys.executable, str(script)]
    return ImageCommands(extra=extra)


@pytest.fixture
def vertex(tmp_path: Path, gcs: StorageServer, commands: ImageCommands) -> Iterator[VertexServer]:
    logs = LogStore(tmp_path / "logs.jsonl")
    jobs = LocalJobRuntime(
        project=PROJECT,
        logs=logs,
        state_dir=tmp_path / "jobs",
        commands=commands,
        env={"STORAGE_EMULATOR_HOST": gcs.url},
        gpus=[],
    )
    models = LocalModelRuntime(logs, commands, {}, startup_timeout=WAIT_S, project=PROJECT)
    with VertexServer(
        tmp_path / "vertex", jobs=jobs, models=models, logs=logs, tls=True, tls_dir=TLS_DIR
    ).start() as server:
        yield server


@pytest.fixture(params=["rest", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    """The SDK's `api_transport`; each value runs every test."""
    return str(request.param)


def api_endpoint(server: VertexServer, transport: str) -> str:
    if transport == "rest":
        return server.url  # an http:// endpoint: plain HTTP
    if transport == "grpc":
        # The SDK opens TLS channels only: the TLS front, whose certificate this test
        # process trusts through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (tests/conftest.py).
        return str(server.grpc_tls_host)
    raise ValueError(f"no emulator front for transport {transport!r}")


@pytest.fixture
def staging_bucket(gcs: StorageServer, monkeypatch: pytest.MonkeyPatch) -> str:
    # The storage client's own emulator switch, for what the SDK stages.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    name = f"staging-{next(_buckets)}"
    storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs.url},
    ).create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def sdk(vertex: VertexServer, transport: str, staging_bucket: str) -> Any:
    """`aiplatform`, initialised as a user points it at localcloud."""
    aiplatform.init(
        project=PROJECT,
        location=LOCATION,
        api_endpoint=api_endpoint(vertex, transport),
        api_transport=transport,
        credentials=AnonymousCredentials(),
        staging_bucket=staging_bucket,
    )
    return aiplatform


# ------------------------------------------------------------------ helpers


def worker_pool(image: str, *args: str) -> list[dict[str, Any]]:
    return [
        {
            "machine_spec": {"machine_type": "n1-standard-4"},
            "replica_count": 1,
            "container_spec": {"image_uri": image, "args": list(args)},
        }
    ]


def status_of(error: exceptions.GoogleAPICallError) -> str:
    """The google.rpc status name of a refusal, whichever transport carried it."""
    if error.grpc_status_code is not None:
        return str(error.grpc_status_code.name)
    response = error.response
    assert isinstance(response, requests.Response)
    return str(response.json()["error"]["status"])


def upload(sdk: Any, artifact: str, **kwargs: Any) -> Any:
    """Model.upload as the upload_model sample calls it."""
    return sdk.Model.upload(
        display_name=kwargs.pop("display_name", "churn"),
        artifact_uri=f"gs://artifacts/{artifact}",
        serving_container_image_uri=SERVE_IMAGE,
        serving_container_predict_route="/predict",
        serving_container_health_route="/health",
        sync=True,
        **kwargs,
    )


def deployed_ids(endpoint: Any) -> list[str]:
    return [deployed.id for deployed in endpoint.list_models()]


# ------------------------------------------------------------------ custom jobs


def test_custom_job_runs_to_success_then_get_and_list_find_it(sdk: Any) -> None:
    job = sdk.CustomJob(
        display_name="train-churn",
        worker_pool_specs=worker_pool(TRAIN_IMAGE, "--epochs=1"),
        labels={"team": "churn"},
    )

    job.run()

    assert job.state == S.JOB_STATE_SUCCEEDED
    fetched = sdk.CustomJob.get(job.resource_name)
    assert fetched.display_name == "train-churn" and fetched.state == S.JOB_STATE_SUCCEEDED
    # The SDK put the job's outputs under the staging bucket, as on Vertex.
    output = fetched.gca_resource.job_spec.base_output_directory.output_uri_prefix
    assert output.startswith(sdk.initializer.global_config.staging_bucket)
    listed = sdk.CustomJob.list(filter='labels.team="churn" AND state="JOB_STATE_SUCCEEDED"')
    assert [j.resource_name for j in listed] == [job.resource_name]
    assert sdk.CustomJob.list(filter='state!="JOB_STATE_SUCCEEDED"') == []


def test_a_cancelled_job_ends_cancelled_with_its_error_and_wait_raises(sdk: Any) -> None:
    job = sdk.CustomJob(display_name="long", worker_pool_specs=worker_pool(SLEEP_IMAGE))
    job.run(sync=False)
    job.wait_for_resource_creation()

    job.cancel()

    # The SDK's documented behaviour for a job that ends cancelled: wait() raises.
    with pytest.raises(RuntimeError, match=r'code: 1\s+message: "CANCELED"'):
        job.wait()
    assert job.state == S.JOB_STATE_CANCELLED
    cancelled = sdk.CustomJob.get(job.resource_name).gca_resource
    assert (cancelled.error.code, cancelled.error.message) == (1, "CANCELED")
    assert cancelled.end_time


def test_list_jobs_filters_with_the_documented_language_and_orders(sdk: Any) -> None:
    jobs = {
        name: sdk.CustomJob(
            display_name=name, worker_pool_specs=worker_pool(TRAIN_IMAGE), labels=labels
        )
        for name, labels in (
            ("churn-a", {"team": "churn", "tier": "gold"}),
            ("churn-b", {"team": "churn"}),
            ("fraud-a", {"team": "fraud"}),
        )
    }
    for job in jobs.values():
        job.submit()
    created = jobs["churn-b"].create_time

    def names(filter_text: str, order_by: str | None = None) -> list[str]:
        return [j.display_name for j in sdk.CustomJob.list(filter=filter_text, order_by=order_by)]

    assert names('labels.team="churn"', "display_name") == ["churn-a", "churn-b"]
    assert names("labels.tier:*") == ["churn-a"]
    assert names('NOT labels.tier:* AND labels.team="churn"') == ["churn-b"]
    assert names('display_name="fraud-a" OR labels.tier="gold"', "display_name desc") == [
        "fraud-a",
        "churn-a",
    ]
    assert names('(labels.team="fraud" OR labels.tier:*) AND display_name:"churn"') == ["churn-a"]
    assert names('display_name:"churn-*"', "display_name") == ["churn-a", "churn-b"]
    after = created.isoformat().replace("+00:00", "Z")
    assert sorted(names(f'create_time>="{after}"')) == ["churn-b", "fraud-a"]
    assert names('create_time>"2999-01-01T00:00:00Z"') == []
    with pytest.raises(exceptions.BadRequest, match="bogus") as refused:
        sdk.CustomJob.list(filter='bogus="x"')
    assert status_of(refused.value) == "INVALID_ARGUMENT"
    with pytest.raises(exceptions.BadRequest, match="JOB_STATE_DONE"):
        sdk.CustomJob.list(filter='state="JOB_STATE_DONE"')


# ------------------------------------------------------------------ models


def test_model_upload_get_list_update_and_delete(sdk: Any) -> None:
    model = upload(sdk, "churn/1", labels={"team": "churn"}, description="first")

    fetched = sdk.Model(model.resource_name)
    assert fetched.display_name == "churn" and fetched.version_id == "1"
    assert fetched.uri == "gs://artifacts/churn/1"
    assert fetched.gca_resource.container_spec.image_uri == SERVE_IMAGE
    assert [m.resource_name for m in sdk.Model.list(filter='labels.team="churn"')] == [
        model.resource_name
    ]
    assert sdk.Model.list(filter='display_name="fraud"') == []

    model.update(display_name="churn-v", description="better", labels={"stage": "prod"})

    updated = sdk.Model(model.resource_name)
    assert (updated.display_name, updated.description) == ("churn-v", "better")
    # Model-level labels are merged with the version's own.
    assert updated.labels == {"team": "churn", "stage": "prod"}
    assert [m.display_name for m in sdk.Model.list(filter="labels.stage:*")] == ["churn-v"]

    model.delete()

    with pytest.raises(exceptions.NotFound):
        sdk.Model(model.resource_name)


def test_model_versions_and_aliases_follow_the_registry_rules(sdk: Any) -> None:
    first = upload(sdk, "churn/1", version_aliases=["champion"])
    second = upload(
        sdk,
        "churn/2",
        parent_model=first.resource_name,
        is_default_version=False,
        version_aliases=["candidate"],
        version_description="challenger",
    )
    registry = sdk.ModelRegistry(first)

    assert second.version_id == "2" and second.resource_name == first.resource_name
    # Not the default: a name without a version still means version 1.
    assert sdk.Model(first.resource_name).version_id == "1"
    assert sdk.Model(first.resource_name, version="candidate").uri == "gs://artifacts/churn/2"
    versions = {v.version_id: v for v in registry.list_versions()}
    assert sorted(versions) == ["1", "2"]
    assert sorted(versions["1"].version_aliases) == ["champion", "default"]
    assert list(versions["2"].version_aliases) == ["candidate"]
    assert versions["2"].version_description == "challenger"

    # An alias lives on one version at a time: adding it elsewhere moves it.
    registry.add_version_aliases(["champion"], version="2")
    assert list(registry.get_version_info("1").version_aliases) == ["default"]
    assert registry.get_model(version="champion").version_id == "2"
    registry.remove_version_aliases(["candidate"], version="2")
    with pytest.raises(exceptions.NotFound):
        registry.get_model(version="candidate")

    # The version holding `default` cannot be deleted; once it moves, it can.
    with pytest.raises(exceptions.BadRequest, match="default") as refused:
        registry.delete_version("1")
    assert status_of(refused.value) == "FAILED_PRECONDITION"
    third = upload(sdk, "churn/3", parent_model=first.resource_name)  # default: True
    assert sdk.Model(first.resource_name).version_id == third.version_id == "3"
    registry.delete_version("1")
    assert [v.version_id for v in registry.list_versions()] == ["2", "3"]
    assert [v.version_id for v in registry.list_versions(filter="labels.team:*")] == []


# ------------------------------------------------------------------ endpoints


def test_a_custom_container_model_deploys_on_dedicated_resources(sdk: Any) -> None:
    model = upload(sdk, "churn/1")
    endpoint = sdk.Endpoint.create(display_name="churn")

    assert model.supported_deployment_resources_types == [DEDICATED]
    model.deploy(
        endpoint=endpoint,
        deployed_model_display_name="churn-v1",
        machine_type="n1-standard-2",
        min_replica_count=1,
        max_replica_count=2,
        traffic_percentage=100,
        sync=True,
    )

    (deployed,) = endpoint.list_models()
    assert deployed.display_name == "churn-v1"
    assert deployed.dedicated_resources.machine_spec.machine_type == "n1-standard-2"
    assert deployed.dedicated_resources.max_replica_count == 2
    # DeployModel without resources, through the SDK's own client, is refused.
    with pytest.raises(exceptions.BadRequest, match="dedicated_resources is required") as bad:
        endpoint.api_client.deploy_model(
            endpoint=endpoint.resource_name,
            deployed_model=aiplatform_v1.DeployedModel(model=model.resource_name),
            traffic_split={"0": 100},
        )
    assert status_of(bad.value) == "INVALID_ARGUMENT"


def test_endpoint_traffic_split_predict_undeploy_and_delete(sdk: Any, vertex: VertexServer) -> None:
    first = upload(sdk, "churn/1")
    second = upload(sdk, "churn/2", parent_model=first.resource_name)
    endpoint = sdk.Endpoint.create(display_name="churn", labels={"team": "churn"})

    first.deploy(endpoint=endpoint, machine_type="n1-standard-2", sync=True)
    second.deploy(endpoint=endpoint, machine_type="n1-standard-2", traffic_percentage=30)
    old, new = deployed_ids(endpoint)

    assert endpoint.traffic_split == {old: 70, new: 30}
    assert [e.resource_name for e in sdk.Endpoint.list(filter='labels.team="churn"')] == [
        endpoint.resource_name
    ]
    assert sdk.Endpoint(endpoint.resource_name).display_name == "churn"

    endpoint.update(traffic_split={old: 0, new: 100})
    prediction = endpoint.predict(instances=[{"x": 1.5}])
    assert prediction.deployed_model_id == new
    assert prediction.predictions == [{"model": "gs://artifacts/churn/2", "echo": {"x": 1.5}}]
    assert prediction.model_version_id == "2"

    with pytest.raises(exceptions.BadRequest, match="sum to 100, got 90") as refused:
        endpoint.update(traffic_split={old: 50, new: 40})
    assert status_of(refused.value) == "INVALID_ARGUMENT"
    assert sdk.Endpoint(endpoint.resource_name).traffic_split == {old: 0, new: 100}

    # rawPredict: the body goes through as it is and the container's answer comes back,
    # sent as Endpoint.raw_predict sends it (which always targets Google's own host).
    raw_url = f"{vertex.url}/v1/{endpoint.resource_name}:rawPredict"
    as_json = requests.post(
        raw_url,
        data=b'{"instances": [7]}',
        headers={"Content-Type": "application/json"},
        timeout=WAIT_S,
    )
    assert as_json.status_code == 200
    assert as_json.json() == {"predictions": [{"model": "gs://artifacts/churn/2", "echo": 7}]}
    as_csv = requests.post(
        raw_url, data=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"}, timeout=WAIT_S
    )
    assert (as_csv.headers["Content-Type"], as_csv.text) == ("text/plain", "text/csv: 8 bytes")

    endpoint.undeploy(deployed_model_id=old)
    assert deployed_ids(endpoint) == [new]
    endpoint.undeploy_all()
    assert endpoint.list_models() == []
    endpoint.delete()
    with pytest.raises(exceptions.NotFound):
        sdk.Endpoint(endpoint.resource_name).gca_resource  # noqa: B018 (the SDK gets it lazily)


def test_deploy_with_an_explicit_traffic_split(sdk: Any) -> None:
    model = upload(sdk, "churn/1")
    endpoint = sdk.Endpoint.create(display_name="split")
    model.deploy(endpoint=endpoint, machine_type="n1-standard-2")
    (first,) = deployed_ids(endpoint)

    model.deploy(
        endpoint=endpoint, machine_type="n1-standard-2", traffic_split={"0": 25, first: 75}
    )

    (second,) = [i for i in deployed_ids(endpoint) if i != first]
    assert endpoint.traffic_split == {first: 75, second: 25}
    # Each prediction goes to one of them, chosen by the split.
    seen: set[str] = set()

    def both_answered() -> bool:
        seen.add(endpoint.predict(instances=[1]).deployed_model_id)
        return seen == {first, second}

    wait_until(both_answered, what="predictions from both deployed models", timeout=WAIT_S)
    endpoint.undeploy_all()
    endpoint.delete()
    assert [e.display_name for e in sdk.Endpoint.list(filter='display_name="split"')] == []
