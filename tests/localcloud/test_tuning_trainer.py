"""The project's own trainer as a tuning trial on localcloud: each trial reports its metric
every epoch in the hypertune metric file (cloudml-hypertune's format) and the Vertex
emulator reads it back as the trial's measurements, the last one final — the same value the
trial's model directory records in metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, storage
from sklearn.datasets import load_digits

from localcloud.logstore import LogStore
from localcloud.procs import wait_until
from localcloud.storage import StorageServer
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime
from localcloud.vertex.server import VertexServer
from retrain.adapters.clients import VertexConnection

PROJECT = "acme"
PARENT = f"projects/{PROJECT}/locations/us-central1"
BUCKET = "acme-tuning"
TRAINER_IMAGE = "us-docker.pkg.dev/acme/retrain/trainer:latest"  # the project's own image
PYTORCH_TRAINING_IMAGE = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest"
EPOCHS = 3
S = aiplatform_v1.JobState
T = aiplatform_v1.Trial.State


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = StorageServer(root=tmp_path_factory.mktemp("gcs"), backend="memory").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def bucket(gcs: str, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    found = client.bucket(BUCKET)
    if not found.exists():
        found.create()
    data = load_digits()
    lines = [",".join(f"p{i}" for i in range(64)) + ",digit"]
    for features, target in zip(data.data[:600], data.target[:600], strict=True):
        lines.append(",".join(str(int(v)) for v in features) + f",d{target}")
    found.blob("digits/part-0000.csv").upload_from_string("\n".join(lines) + "\n")
    return found


@pytest.fixture
def server(tmp_path: Path, gcs: str) -> Iterator[VertexServer]:
    logs = LogStore(tmp_path / "logs" / "entries.jsonl")
    # Trials are the trainer's own processes: they reach fake-gcs-server as they would GCS.
    env = {"STORAGE_EMULATOR_HOST": gcs}
    runtime = LocalJobRuntime(PROJECT, logs, tmp_path / "runtime", ImageCommands(), env, gpus=[])
    with VertexServer(tmp_path / "vertex", jobs=runtime, logs=logs).start() as running:
        yield running


@pytest.fixture(scope="module")
def trainer_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer as the source distribution `make trainer-package` builds."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "trainer.package", "--out", str(out)], check=True)
    (archive,) = out.glob("retrain_trainer-*.tar.gz")
    return archive


def worker_pool(how: str, args: list[str], package_uri: str) -> dict[str, Any]:
    """The trial's worker pool: the trainer image, or the trainer package on Google's
    prebuilt PyTorch container (the example config's way)."""
    pool: dict[str, Any] = {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1}
    if how == "image":
        pool["container_spec"] = {"image_uri": TRAINER_IMAGE, "args": args}
    else:
        pool["python_package_spec"] = {
            "executor_image_uri": PYTORCH_TRAINING_IMAGE,
            "package_uris": [package_uri],
            "python_module": "trainer.task",
            "args": args,
        }
    return pool


def tuning_job(base: str, pool: dict[str, Any]) -> dict[str, Any]:
    return {
        "display_name": "retrain-digits-t1",
        "labels": {"retrain-run": "t1"},
        "study_spec": {
            "metrics": [{"metric_id": "val_accuracy", "goal": "MAXIMIZE"}],
            "parameters": [
                {
                    "parameter_id": "lr",
                    "discrete_value_spec": {"values": [0.001, 0.01]},
                    "scale_type": "UNIT_LOG_SCALE",
                },
                {
                    "parameter_id": "hidden_units",
                    "categorical_value_spec": {"values": ["32", "64,32"]},
                },
            ],
            "algorithm": "GRID_SEARCH",
        },
        "max_trial_count": 3,
        "parallel_trial_count": 2,
        "trial_job_spec": {
            "worker_pool_specs": [pool],
            "base_output_directory": {"output_uri_prefix": base},
        },
    }


@pytest.mark.slow  # real training processes: ~15 s each
@pytest.mark.parametrize("how", ["image", "package"])
def test_the_trainer_reports_its_metric_every_epoch_and_each_trial_is_measured(
    server: VertexServer, bucket: storage.Bucket, trainer_package: Path, how: str
):
    # GIVEN a grid study whose trials run the project's trainer
    base = f"gs://{BUCKET}/runs/digits/{how}"
    bucket.blob(f"packages/{trainer_package.name}").upload_from_filename(str(trainer_package))
    args = ["--label=digit", f"--data-uri=gs://{BUCKET}/digits/", f"--epochs={EPOCHS}"]
    pool = worker_pool(how, args, f"gs://{BUCKET}/packages/{trainer_package.name}")
    jobs = VertexConnection(server.grpc_host, "grpc", emulated=True).client("JobServiceClient")
    job = jobs.create_hyperparameter_tuning_job(
        parent=PARENT, hyperparameter_tuning_job=tuning_job(base, pool)
    )

    # WHEN the study ends
    done: dict[str, Any] = {}

    def ended() -> bool:
        done["job"] = jobs.get_hyperparameter_tuning_job(name=job.name)
        return done["job"].state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)

    wait_until(ended, what=f"{job.name} to end", timeout=300)
    finished = done["job"]

    # THEN every trial succeeded with one measurement per epoch, steps 1..EPOCHS
    assert finished.state == S.JOB_STATE_SUCCEEDED, [t.infeasible_reason for t in finished.trials]
    assert [t.id for t in finished.trials] == ["1", "2", "3"]
    for trial in finished.trials:
        assert trial.state == T.SUCCEEDED, trial.infeasible_reason
        steps = [m.step_count for m in trial.measurements]
        assert steps == list(range(1, EPOCHS + 1))
        assert all(m.metrics[0].metric_id == "val_accuracy" for m in trial.measurements)
        # AND the final measurement is the value the trial's own model dir records
        written = json.loads(
            bucket.blob(f"runs/digits/{how}/{trial.id}/model/metrics.json").download_as_text()
        )
        final = trial.final_measurement.metrics[0]
        assert (final.metric_id, trial.final_measurement.step_count) == ("val_accuracy", EPOCHS)
        assert final.value == pytest.approx(written["val_accuracy"], abs=1e-6)
    # AND each trial trained with its own parameters, as its model's metadata records them
    grid = [{p.parameter_id: p.value for p in t.parameters} for t in finished.trials]
    assert grid == [
        {"lr": 0.001, "hidden_units": "32"},
        {"lr": 0.001, "hidden_units": "64,32"},
        {"lr": 0.01, "hidden_units": "32"},
    ]
    trained = [
        json.loads(bucket.blob(f"runs/digits/{how}/{t.id}/model/metadata.json").download_as_text())[
            "hyperparameters"
        ]
        for t in finished.trials
    ]
    assert [(h["lr"], h["hidden_units"], h["epochs"]) for h in trained] == [
        (0.001, [32], EPOCHS),
        (0.001, [64, 32], EPOCHS),
        (0.01, [32], EPOCHS),
    ]
