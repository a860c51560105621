"""The Vertex AI SDK's training jobs (TrainingPipelines), Python packages on Google's
prebuilt training containers, the prebuilt scikit-learn serving container and batch
prediction, against localcloud — the SDK configured only through `aiplatform.init`, as a
user points it there. Everything really runs: the SDK packages the script, localcloud
installs it and runs it with its interpreter, and serves the trained model."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, aiplatform_v1, storage  # type: ignore[attr-defined]
from sklearn.datasets import load_digits, load_iris
from sklearn.linear_model import LogisticRegression

from localcloud.logstore import LogStore
from localcloud.storage import StorageServer
from localcloud.vertex.images import IMAGE_MAP_ENV, ImageCommands
from localcloud.vertex.pipelines import CUSTOM_TASK
from localcloud.vertex.runtime_local import LocalJobRuntime, LocalModelRuntime
from localcloud.vertex.server import VertexServer
from retrain.adapters.clients import VertexConnection
from retrain.adapters.vertex import VertexTraining
from retrain.config import Machine, PythonPackage
from retrain.jobspec import JobSpec, WorkerPool
from tests.conftest import TLS_DIR
from tests.localcloud.test_vertex_sdk import api_endpoint, gcs, staging_bucket, transport
from trainer.package import build_sdist

__all__ = ["gcs", "staging_bucket", "transport"]  # fixtures shared with the SDK's tests

PROJECT = "sdk-project"
LOCATION = "us-central1"
SKLEARN_TRAIN = "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest"
PYTORCH_TRAIN = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest"
SKLEARN_SERVE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest"
TF_TRAIN = "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-15.py310:latest"
XGBOOST_TRAIN = "us-docker.pkg.dev/vertex-ai/training/xgboost-cpu.2-1:latest"
XGBOOST_SERVE = "us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.2-1:latest"
PROJECT_SERVING = "us-docker.pkg.dev/sdk-project/retrain/serving:latest"
WAIT_S = 120.0
S = aiplatform_v1.JobState
P = aiplatform_v1.PipelineState

# What a user would write for Vertex: train, then save model.joblib to AIP_MODEL_DIR.
SKLEARN_SCRIPT = """
import argparse, os, tempfile

import joblib
from google.cloud import storage
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

parser = argparse.ArgumentParser()
parser.add_argument("--c", type=float, default=1.0)
args = parser.parse_args()
features, labels = load_iris(return_X_y=True)
model = LogisticRegression(C=args.c, max_iter=1000).fit(features, labels)
print(f"trained with C={args.c}: accuracy {model.score(features, labels):.3f}")
local = os.path.join(tempfile.mkdtemp(), "model.joblib")
joblib.dump(model, local)
bucket, _, prefix = os.environ["AIP_MODEL_DIR"].removeprefix("gs://").partition("/")
storage.Client().bucket(bucket).blob(prefix.rstrip("/") + "/model.joblib").upload_from_filename(local)
"""

XGBOOST_SCRIPT = """
import argparse, os, tempfile

import xgboost
from google.cloud import storage
from sklearn.datasets import load_iris

parser = argparse.ArgumentParser()
parser.add_argument("--c", type=float, default=1.0)  # accepted, as the other script's
parser.parse_args()
features, labels = load_iris(return_X_y=True)
booster = xgboost.train(
    {"objective": "multi:softmax", "num_class": 3, "max_depth": 3, "seed": 0},
    xgboost.DMatrix(features, label=labels),
    num_boost_round=20,
)
local = os.path.join(tempfile.mkdtemp(), "model.bst")
booster.save_model(local)
bucket, _, prefix = os.environ["AIP_MODEL_DIR"].removeprefix("gs://").partition("/")
storage.Client().bucket(bucket).blob(prefix.rstrip("/") + "/model.bst").upload_from_filename(local)
"""


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def vertex(tmp_path: Path, gcs: StorageServer) -> Iterator[VertexServer]:
    """localcloud's Vertex AI with its default image mapping: Google's prebuilt images
    and the project's own, nothing mapped by the test."""
    logs = LogStore(tmp_path / "logs.jsonl")
    env = {"STORAGE_EMULATOR_HOST": gcs.url}
    commands = ImageCommands()
    jobs = LocalJobRuntime(PROJECT, logs, tmp_path / "jobs", commands, env, gpus=[])
    models = LocalModelRuntime(logs, commands, env, startup_timeout=WAIT_S, project=PROJECT)
    with VertexServer(
        tmp_path / "vertex", jobs=jobs, models=models, logs=logs, tls=True, tls_dir=TLS_DIR
    ).start() as server:
        yield server


def init_sdk(server: VertexServer, transport: str, staging_bucket: str) -> Any:
    aiplatform.init(
        project=PROJECT,
        location=LOCATION,
        api_endpoint=api_endpoint(server, transport),
        api_transport=transport,
        credentials=AnonymousCredentials(),
        staging_bucket=staging_bucket,
    )
    return aiplatform


@pytest.fixture
def sdk(vertex: VertexServer, transport: str, staging_bucket: str) -> Any:
    return init_sdk(vertex, transport, staging_bucket)


@pytest.fixture
def rest_sdk(vertex: VertexServer, staging_bucket: str) -> Any:
    return init_sdk(vertex, "rest", staging_bucket)


def bucket_of(uri: str, gcs: StorageServer) -> Any:
    client = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs.url},
    )
    return client.bucket(uri.removeprefix("gs://").split("/", 1)[0])


def object_path(uri: str) -> str:
    return uri.removeprefix("gs://").split("/", 1)[1]


# ------------------------------------------------------------------ training pipelines


FRAMEWORKS = {
    # script, Google's prebuilt training and serving images, what the model answers
    "scikit-learn": (SKLEARN_SCRIPT, SKLEARN_TRAIN, SKLEARN_SERVE, [0, 1, 2]),
    # model.bst, as the XGBoost images expect; a booster's classes come as floats
    "xgboost": (XGBOOST_SCRIPT, XGBOOST_TRAIN, XGBOOST_SERVE, [0.0, 1.0, 2.0]),
}


@pytest.mark.slow  # trains, deploys and serves a model: ~15 s
@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_custom_training_job_from_a_script_trains_deploys_and_predicts(
    sdk: Any, tmp_path: Path, framework: str
) -> None:
    # GIVEN a training script and Google's prebuilt images for its framework
    source, train_image, serve_image, expected = FRAMEWORKS[framework]
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    job = sdk.CustomTrainingJob(
        display_name=f"iris-{framework}",
        script_path=str(script),
        container_uri=train_image,
        requirements=[],
        model_serving_container_image_uri=serve_image,
    )

    # WHEN it runs, and its model is deployed
    model = job.run(args=["--c=0.5"], replica_count=1, machine_type="n1-standard-4")
    endpoint = model.deploy(machine_type="n1-standard-2")

    # THEN the pipeline succeeded through a CustomJob running the SDK's package
    pipeline = job.gca_resource
    assert pipeline.state == P.PIPELINE_STATE_SUCCEEDED
    backing = pipeline.training_task_metadata["backingCustomJob"]
    custom_job = sdk.CustomJob.get(backing).gca_resource
    assert custom_job.state == S.JOB_STATE_SUCCEEDED
    (pool,) = custom_job.job_spec.worker_pool_specs
    assert pool.python_package_spec.executor_image_uri == train_image
    assert pool.python_package_spec.python_module == "aiplatform_custom_trainer_script.task"
    assert list(pool.python_package_spec.args) == ["--c=0.5"]
    # ... and uploaded the model from <base_output_directory>/model
    base = custom_job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
    assert model.uri == f"{base}/model"
    assert model.container_spec.image_uri == serve_image
    assert pipeline.model_to_upload.name == model.resource_name
    # ... and the prebuilt serving image answers with the model's classes
    iris = load_iris()
    rows = [iris.data[0].tolist(), iris.data[75].tolist(), iris.data[149].tolist()]
    predictions = endpoint.predict(instances=rows).predictions
    assert predictions == expected
    endpoint.undeploy_all()


@pytest.mark.slow  # the project's real trainer: ~10 s
def test_python_package_training_job_runs_the_projects_trainer_package(
    rest_sdk: Any, gcs: StorageServer, staging_bucket: str, tmp_path: Path
) -> None:
    # GIVEN the trainer built as `make trainer-package` builds it, and digits data, on GCS
    archive = build_sdist(tmp_path / "dist")
    assert archive.name.startswith("retrain_trainer-") and archive.name.endswith(".tar.gz")
    bucket = bucket_of(staging_bucket, gcs)
    bucket.blob(f"packages/{archive.name}").upload_from_filename(str(archive))
    digits = load_digits()
    lines = [",".join(f"p{i}" for i in range(64)) + ",digit"] + [
        ",".join(str(int(v)) for v in row) + f",{label}"
        for row, label in zip(digits.data[:300], digits.target[:300], strict=True)
    ]
    bucket.blob("data/digits.csv").upload_from_string("\n".join(lines) + "\n")
    job = rest_sdk.CustomPythonPackageTrainingJob(
        display_name="digits",
        python_package_gcs_uri=f"{staging_bucket}/packages/{archive.name}",
        python_module_name="trainer.task",
        container_uri=PYTORCH_TRAIN,
        model_serving_container_image_uri=PROJECT_SERVING,
    )

    # WHEN it runs on Google's prebuilt PyTorch image
    model = job.run(
        args=[f"--data-uri={staging_bucket}/data/digits.csv", "--label=digit", "--epochs=2"],
        replica_count=1,
        machine_type="n1-standard-4",
    )

    # THEN the trainer wrote its outputs to the model directory the model points at
    metrics = json.loads(bucket.blob(f"{object_path(model.uri)}/metrics.json").download_as_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert model.container_spec.image_uri == PROJECT_SERVING


def test_a_failed_job_fails_its_pipeline_with_the_jobs_error(rest_sdk: Any, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('error: no data here', file=sys.stderr)\nsys.exit(1)\n")
    job = rest_sdk.CustomTrainingJob(
        display_name="broken",
        script_path=str(script),
        container_uri=SKLEARN_TRAIN,
        model_serving_container_image_uri=SKLEARN_SERVE,
    )
    with pytest.raises(RuntimeError, match="error: no data here"):
        job.run(replica_count=1, machine_type="n1-standard-4")
    assert job.state == P.PIPELINE_STATE_FAILED
    assert rest_sdk.Model.list() == []


def test_an_unmapped_executor_image_fails_the_job_saying_how_to_map_it(
    rest_sdk: Any, gcs: StorageServer, staging_bucket: str
) -> None:
    bucket_of(staging_bucket, gcs).blob("p/pkg-0.1.tar.gz").upload_from_string(b"not read")
    job = rest_sdk.CustomJob(
        display_name="tensorflow",
        worker_pool_specs=[
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "python_package_spec": {
                    "executor_image_uri": TF_TRAIN,
                    "package_uris": [f"{staging_bucket}/p/pkg-0.1.tar.gz"],
                    "python_module": "trainer.task",
                },
            }
        ],
    )
    with pytest.raises(RuntimeError):
        job.run()
    failed = rest_sdk.CustomJob.get(job.resource_name).gca_resource
    assert failed.state == S.JOB_STATE_FAILED
    assert f"no local Python for executor image '{TF_TRAIN}'" in failed.error.message
    assert IMAGE_MAP_ENV in failed.error.message


def test_the_products_package_job_runs_through_its_vertex_adapter(
    vertex: VertexServer, gcs: StorageServer, staging_bucket: str, tmp_path: Path
) -> None:
    # GIVEN a package whose module writes its args where the test can read them
    source = tmp_path / "src"
    (source / "echo").mkdir(parents=True)
    (source / "echo" / "__init__.py").write_text("")
    (source / "echo" / "task.py").write_text(
        "import json, os, sys\n"
        "from google.cloud import storage\n"
        "bucket, _, path = os.environ['AIP_MODEL_DIR'].removeprefix('gs://').partition('/')\n"
        "blob = storage.Client().bucket(bucket).blob(path + 'args.json')\n"
        "blob.upload_from_string(json.dumps(sys.argv[1:]))\n"
    )
    (source / "pyproject.toml").write_text(
        '[project]\nname = "echo"\nversion = "1.0"\n[tool.setuptools]\npackages = ["echo"]\n'
    )
    name = _sdist(source, tmp_path / "dist")
    bucket = bucket_of(staging_bucket, gcs)
    bucket.blob(f"packages/{name}").upload_from_filename(str(tmp_path / "dist" / name))
    training = VertexTraining(
        PROJECT, LOCATION, VertexConnection(vertex.url, "rest", emulated=True)
    )
    package = PythonPackage(PYTORCH_TRAIN, (f"{staging_bucket}/packages/{name}",), "echo.task")
    spec = JobSpec(
        display_name="retrain-p-r1",
        labels={"retrain-pipeline": "p", "retrain-run": "r1"},
        base_output_directory=f"{staging_bucket}/runs/p/r1",
        worker_pools=(
            WorkerPool(Machine("n1-standard-4"), 1, "", ("--data-uri=gs://x/y",), package),
        ),
        timeout_seconds=600,
        strategy="standard",
    )

    # WHEN the product submits it
    submitted = training.submit(spec)

    # THEN Vertex's python_package_spec ran the module with the job's args
    job = aiplatform_v1.JobServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options={"api_endpoint": vertex.url},
    )
    pool = job.get_custom_job(name=submitted.name).job_spec.worker_pool_specs[0]
    assert pool.python_package_spec.python_module == "echo.task"
    assert not pool.container_spec.image_uri
    ended = _wait_for_end(lambda: training.get(submitted.name))
    assert ended.state == "JOB_STATE_SUCCEEDED", ended.error_message
    written = bucket.blob("runs/p/r1/model/args.json").download_as_text()
    assert json.loads(written) == ["--data-uri=gs://x/y"]


def _sdist(source: Path, out: Path) -> str:
    from setuptools import build_meta

    here = Path.cwd()
    os.chdir(source)  # the build backend builds the project in the working directory
    try:
        return str(build_meta.build_sdist(str(out)))
    finally:
        os.chdir(here)


def _wait_for_end(get: Any) -> Any:
    from localcloud.procs import wait_until

    ended: list[Any] = []

    def done() -> bool:
        info = get()
        if info.state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            ended.append(info)
            return True
        return False

    wait_until(done, what="the job's end", timeout=WAIT_S)
    return ended[0]


def test_training_pipelines_refuse_what_vertex_refuses(vertex: VertexServer) -> None:
    client = aiplatform_v1.PipelineServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options={"api_endpoint": vertex.url},
    )
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    from google.api_core import exceptions
    from google.protobuf import json_format, struct_pb2

    inputs = struct_pb2.Value()
    json_format.ParseDict(
        {
            "worker_pool_specs": [
                {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1}
            ]
        },
        inputs,
    )
    pipeline = aiplatform_v1.TrainingPipeline(
        display_name="p", training_task_definition=CUSTOM_TASK, training_task_inputs=inputs
    )
    with pytest.raises(
        exceptions.BadRequest, match=r"training_task_inputs\.worker_pool_specs\[0\]"
    ):
        client.create_training_pipeline(parent=parent, training_pipeline=pipeline)
    pipeline.training_task_definition = (
        "gs://google-cloud-aiplatform/schema/trainingjob/definition/automl_tabular_1.0.0.yaml"
    )
    with pytest.raises(exceptions.BadRequest, match="training_task_definition"):
        client.create_training_pipeline(parent=parent, training_pipeline=pipeline)
    with pytest.raises(exceptions.NotFound):
        client.get_training_pipeline(name=f"{parent}/trainingPipelines/123")


# ------------------------------------------------------------------ batch prediction


@pytest.fixture
def iris_model(rest_sdk: Any, gcs: StorageServer, staging_bucket: str, tmp_path: Path) -> Any:
    features, labels = load_iris(return_X_y=True)
    local = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=1000).fit(features, labels), local)
    bucket_of(staging_bucket, gcs).blob("models/iris/model.joblib").upload_from_filename(str(local))
    return rest_sdk.Model.upload(
        display_name="iris",
        artifact_uri=f"{staging_bucket}/models/iris",
        serving_container_image_uri=SKLEARN_SERVE,
        sync=True,
    )


def test_model_batch_predict_over_jsonl_writes_vertexs_result_files(
    iris_model: Any, gcs: StorageServer, staging_bucket: str
) -> None:
    # GIVEN JSON Lines instances, one of them unusable by the model
    iris = load_iris()
    rows = [iris.data[0].tolist(), iris.data[149].tolist(), [1.0, 2.0]]
    bucket = bucket_of(staging_bucket, gcs)
    bucket.blob("batch/in.jsonl").upload_from_string("".join(json.dumps(r) + "\n" for r in rows))

    # WHEN the SDK runs a batch prediction
    job = iris_model.batch_predict(
        job_display_name="iris-batch",
        gcs_source=f"{staging_bucket}/batch/in.jsonl",
        gcs_destination_prefix=f"{staging_bucket}/batch/out",
        instances_format="jsonl",
        machine_type="n1-standard-2",
        sync=True,
    )

    # THEN it succeeded, with Vertex's output layout and counts
    assert job.state == S.JOB_STATE_SUCCEEDED
    resource = job.gca_resource
    output = resource.output_info.gcs_output_directory
    assert output.startswith(f"{staging_bucket}/batch/out/prediction-iris-")
    results = bucket.blob(f"{object_path(output)}/prediction.results-00000-of-00001")
    lines = [json.loads(line) for line in results.download_as_text().splitlines()]
    assert lines == [{"instance": rows[0], "prediction": 0}, {"instance": rows[1], "prediction": 2}]
    errors = bucket.blob(f"{object_path(output)}/prediction.errors_stats-00000-of-00001")
    (error,) = [json.loads(line) for line in errors.download_as_text().splitlines()]
    assert error["instance"] == rows[2] and error["error"]["code"] == 3
    assert (resource.completion_stats.successful_count, resource.completion_stats.failed_count) == (
        2,
        1,
    )
    assert [j.resource_name for j in aiplatform.BatchPredictionJob.list()] == [job.resource_name]


@pytest.mark.slow  # a model server and a batch job: ~10 s
def test_batch_predict_over_csv_takes_the_rows_after_the_header(
    iris_model: Any, gcs: StorageServer, staging_bucket: str
) -> None:
    bucket = bucket_of(staging_bucket, gcs)
    bucket.blob("csv/in.csv").upload_from_string("a,b,c,d\n5.1,3.5,1.4,0.2\n6.3,3.3,6.0,2.5\n")
    job = iris_model.batch_predict(
        job_display_name="iris-csv",
        gcs_source=[f"{staging_bucket}/csv/*.csv"],
        gcs_destination_prefix=f"{staging_bucket}/csv/out",
        instances_format="csv",
        machine_type="n1-standard-2",
        sync=True,
    )
    output = job.gca_resource.output_info.gcs_output_directory
    results = bucket.blob(f"{object_path(output)}/prediction.results-00000-of-00001")
    lines = [json.loads(line) for line in results.download_as_text().splitlines()]
    assert [line["prediction"] for line in lines] == [0, 2]
    assert lines[0]["instance"] == [5.1, 3.5, 1.4, 0.2]


def test_batch_prediction_of_an_unknown_model_is_not_found(vertex: VertexServer) -> None:
    from google.api_core import exceptions

    client = aiplatform_v1.JobServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options={"api_endpoint": vertex.url},
    )
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    job = aiplatform_v1.BatchPredictionJob(
        display_name="b",
        model=f"{parent}/models/404",
        input_config={"instances_format": "jsonl", "gcs_source": {"uris": ["gs://b/in.jsonl"]}},
        output_config={
            "predictions_format": "jsonl",
            "gcs_destination": {"output_uri_prefix": "gs://b/o"},
        },
    )
    with pytest.raises(exceptions.NotFound):
        client.create_batch_prediction_job(parent=parent, batch_prediction_job=job)
    job.model = f"{parent}/models/1"
    job.input_config.instances_format = "bigquery"
    with pytest.raises(exceptions.BadRequest, match=r"input_config\.instances_format"):
        client.create_batch_prediction_job(parent=parent, batch_prediction_job=job)
