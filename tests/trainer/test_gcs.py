"""The same data read from Cloud Storage (fake-gcs-server, official client) trains the
same model, writes its directory to gs://, and serves from gs://."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from localcloud.procs import free_port, stop_process, wait_until
from tests.trainer.conftest import DIGITS_HP, PYTHON, child_env, digits_csv, make_bucket
from trainer.task import Outputs, TrainingResult, run


def test_data_from_gcs_gives_the_same_model_quality(
    gcs: str, digits_model: tuple[TrainingResult, Path, str]
) -> None:
    local, _, _ = digits_model
    bucket: Any = make_bucket("landing")
    # The same rows as the local file, split over two objects, with a completion marker.
    bucket.blob("digits/2026-11-26/part-0000.csv").upload_from_string(digits_csv(slice(0, 900)))
    bucket.blob("digits/2026-11-26/part-0001.csv").upload_from_string(digits_csv(slice(900, None)))
    bucket.blob("digits/2026-11-26/_SUCCESS").upload_from_string(b"")
    make_bucket("artifacts")
    model_dir = "gs://artifacts/runs/digits/run-1/model"

    remote = run(
        "gs://landing/digits/2026-11-26/",
        "digit",
        Outputs(model_dir, checkpoint_dir="gs://artifacts/runs/digits/run-1/checkpoints"),
        DIGITS_HP,
        out=io.StringIO(),
    )

    assert remote.metrics["val_accuracy"] == pytest.approx(local.metrics["val_accuracy"], abs=0.02)
    artifacts: Any = make_bucket("artifacts")
    names = {b.name for b in artifacts.client.list_blobs("artifacts", prefix="runs/digits/run-1/")}
    assert {
        f"runs/digits/run-1/model/{n}"
        for n in ("model.onnx", "metadata.json", "smoke.json", "metrics.json")
    } <= names
    assert "runs/digits/run-1/checkpoints/checkpoint-00015.pt" in names
    metrics = json.loads(artifacts.blob("runs/digits/run-1/model/metrics.json").download_as_bytes())
    assert metrics["val_accuracy"] == pytest.approx(remote.metrics["val_accuracy"])

    smoke = artifacts.blob("runs/digits/run-1/model/smoke.json").download_as_bytes()
    assert _serve_and_predict(gcs, model_dir, smoke)["predictions"][0]["label"] in {
        str(d) for d in range(10)
    }


def test_a_single_gcs_object_and_a_missing_one(gcs: str, tmp_path: Path) -> None:
    bucket: Any = make_bucket("landing")
    bucket.blob("one/file.csv").upload_from_string(digits_csv(slice(0, 100)))
    out = io.StringIO()

    run("gs://landing/one/file.csv", "digit", Outputs(str(tmp_path / "m")), DIGITS_HP, out=out)

    assert out.getvalue().startswith("data gs://landing/one/file.csv: 100 rows")
    completed = subprocess.run(
        [PYTHON, "-m", "trainer.task", "--data-uri=gs://landing/one/missing.csv", "--label=digit",
         f"--model-dir={tmp_path / 'm2'}"],
        env=child_env(STORAGE_EMULATOR_HOST=gcs),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: data file gs://landing/one/missing.csv does not exist"
    )


def _serve_and_predict(gcs: str, storage_uri: str, body: bytes) -> Any:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "trainer.serving"],
        env=child_env(
            AIP_HTTP_PORT=str(port), AIP_STORAGE_URI=storage_uri, STORAGE_EMULATOR_HOST=gcs
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _status(url + "/health") == 200, what="serving", timeout=60, process=process
        )
        request = urllib.request.Request(url + "/predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    finally:
        stop_process(process)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0
