"""Shared fixtures: small real datasets written as CSV, a trained digits model, and a
fake-gcs-server with the official client pointed at it."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.datasets import load_digits

from localcloud.storage import StorageServer
from trainer.task import Hyperparameters, Outputs, TrainingResult, run

ROOT = Path(__file__).resolve().parents[2]
# Enough to prove learning on digits in a couple of seconds on two cores.
DIGITS_HP = Hyperparameters(epochs=15, lr=3e-3, batch_size=64, seed=0)
DIGITS_ARGS = ["--label=digit", "--epochs=15", "--lr=0.003", "--batch_size=64"]


def digits_csv(rows: slice = slice(None)) -> str:
    data = load_digits()
    lines = [",".join(f"p{i}" for i in range(64)) + ",digit"]
    for features, target in zip(data.data[rows], data.target[rows], strict=True):
        lines.append(",".join(str(int(v)) for v in features) + f",{target}")
    return "\n".join(lines) + "\n"


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: the repository importable, Vertex variables unset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "CLOUD_ML_"))}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CLUSTER_SPEC"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    return env | extra


PYTHON = sys.executable


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "digits.csv"
    path.write_text(digits_csv())
    return path


@pytest.fixture(scope="session")
def digits_model(
    digits_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, Path, str]:
    """(result, model dir, stdout) of one digits run shared by the tests that read it."""
    model_dir = tmp_path_factory.mktemp("model")
    out = io.StringIO()
    result = run(str(digits_file), "digit", Outputs(str(model_dir)), DIGITS_HP, out=out)
    return result, model_dir, out.getvalue()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """localcloud's Cloud Storage (fake-gcs-server behind the proxy that keeps overwritten
    generations in buckets with versioning); STORAGE_EMULATOR_HOST points the official
    client at it."""
    server = StorageServer(root=tmp_path_factory.mktemp("gcs") / "gcs", keep_versions=True)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    try:
        yield server.url
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def make_bucket(name: str, *, versioning: bool = False) -> object:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(name)
    if not bucket.exists():
        bucket.versioning_enabled = versioning
        bucket.create()
    return client.bucket(name)
