"""Hyperparameter tuning on localcloud: what running trials in parallel costs, and what the
search buys.

Overhead: N trials of the real trainer, P at a time, in one HyperparameterTuningJob, against
N/P times one trial alone (the same trainer, data and epochs as a plain CustomJob), measured
in the same run from the Vertex emulator's own job timestamps (create -> end). One trial
alone runs before and after the study, so drift in a shared machine's load shows. Every
trial gets cores/P CPU threads (a Vertex trial has its own machine; locally P trials share
one), so P trials fit the machine and the ratio is localcloud's scheduling overhead rather
than CPU contention; target <= 1.2x. The search space (learning rate and dropout) costs the
same compute at every point, so every trial does the same work.

Quality: the demo's digits data; the default hyperparameters are the demo pipeline's (lr,
batch size) with the trainer's defaults for the rest. The product's rule (retrain.trials,
what job-events deploys) picks the best trial by val_accuracy on its validation rows; each
model is then scored on the demo's held-out rows (`make_data`), which no trial saw, through
the trainer's --eval-uri (the ONNX model as it is served)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud.demo.run import PIPELINE, make_data, split
from localcloud.logstore import LogStore
from localcloud.procs import wait_until
from localcloud.stack import DEMO_CONFIG
from localcloud.storage import StorageServer
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime
from localcloud.vertex.server import VertexServer
from retrain import trials as tuning_trials
from retrain.adapters.clients import VertexConnection
from retrain.adapters.vertex import VertexTraining
from retrain.config import Machine, Parameter, Tuning, parse_config
from retrain.jobspec import JobSpec, WorkerPool
from retrain.ports import JobInfo

N_TRIALS = 8
PARALLEL = 2
EPOCHS = 10
PROJECT = "bench"
REGION = "us-central1"
BUCKET = "bench-tuning"
IMAGE = "localcloud/retrain/trainer:latest"
METRIC = "val_accuracy"
JOB_TIMEOUT_S = 1800.0
SPACE = (
    Parameter("lr", "double", 1e-3, 3e-2, "log"),
    Parameter("dropout", "double", 0.0, 0.5),
)


@dataclass(frozen=True)
class Finished:
    info: JobInfo
    wall_s: float  # create -> end, the emulator's own timestamps


def run() -> str:
    threads = max(1, (os.cpu_count() or 1) // PARALLEL)
    defaults = _demo_defaults()
    with tempfile.TemporaryDirectory() as tmp, _localcloud(Path(tmp), threads) as training:
        alone_before = _wait(training, training.submit(_spec("alone-1", defaults)).name)
        study = _wait(training, training.submit(_spec("study", defaults, tuned=True)).name)
        alone_after = _wait(training, training.submit(_spec("alone-2", defaults)).name)
        best = tuning_trials.best(study.info)
        if best is None:
            raise RuntimeError(f"no trial succeeded: {tuning_trials.errors(study.info)}")
        held_out = {
            trial.id: _held_out(tuning_trials.model_dir(_base("study"), trial))
            for trial in study.info.trials
            if tuning_trials.usable(trial)
        }
        default_held_out = _held_out(f"{_base('alone-1')}/model/")
        default_val = _metrics(f"{_base('alone-1')}/model/")[METRIC]
        trial_spans = _trial_spans(training, study.info.name)
    alone = [alone_before.wall_s, alone_after.wall_s]
    expected = N_TRIALS / PARALLEL * statistics.mean(alone)
    ratio = study.wall_s / expected
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(best.parameters.items()))
    spread = sorted(held_out.values())
    return (
        "## Hyperparameter tuning on localcloud: overhead and quality\n\n"
        f"The real trainer on the demo's digits data ({EPOCHS} epochs, batch size "
        f"{defaults['batch_size']}) through the Vertex emulator over gRPC, on the CPU with "
        f"{threads} thread(s) per trial. A HyperparameterTuningJob of {N_TRIALS} trials, "
        f"{PARALLEL} at a time (Optuna's TPE standing in for Vertex's default search, over "
        "lr 1e-3…3e-2 log and dropout 0…0.5: the same compute at every point), against one "
        "trial alone (a CustomJob with the same trainer, data and epochs), run before and "
        "after the study; wall times are the jobs' create → end timestamps.\n\n"
        "| | seconds |\n|---|---:|\n"
        f"| one trial alone (before, after the study) | {alone[0]:.1f}, {alone[1]:.1f} |\n"
        f"| {N_TRIALS} trials, {PARALLEL} at a time | {study.wall_s:.1f} |\n"
        f"| {N_TRIALS}/{PARALLEL} x one trial alone | {expected:.1f} |\n"
        f"| a trial inside the study, median start → end | "
        f"{statistics.median(trial_spans):.1f} |\n\n"
        f"Tuning wall time is **{ratio:.2f}x** {N_TRIALS}/{PARALLEL} x one trial alone "
        "(target ≤ 1.2x).\n\n"
        f"Quality on the {len(make_data()[1])} held-out rows of the demo data (no trial saw "
        "them), scored from each model's ONNX file as it is served:\n\n"
        f"| model | {METRIC} (validation rows) | held-out accuracy |\n|---|---:|---:|\n"
        f"| default hyperparameters (lr={defaults['lr']}, dropout=0.1) | {default_val:.4f} | "
        f"{default_held_out:.4f} |\n"
        f"| best trial by {METRIC}: trial {best.id} ({shown}) | {best.metric:.4f} | "
        f"{held_out[best.id]:.4f} |\n\n"
        f"The {len(spread)} succeeded trials' held-out accuracy ranges "
        f"{spread[0]:.4f}…{spread[-1]:.4f} (median {statistics.median(spread):.4f}); the best "
        f"trial is {held_out[best.id] - default_held_out:+.4f} against the defaults.\n"
    )


def _demo_defaults() -> dict[str, Any]:
    """The demo pipeline's hyperparameters, its epochs replaced by the benchmark's."""
    config = parse_config(DEMO_CONFIG.read_text(), DEMO_CONFIG.name)
    pipeline = config.pipeline(PIPELINE)
    assert pipeline is not None
    return dict(pipeline.training.hyperparameters) | {"epochs": EPOCHS}


@contextmanager
def _localcloud(directory: Path, threads: int) -> Iterator[VertexTraining]:
    """fake-gcs-server with the data, and the Vertex emulator running trainer processes."""
    gcs = StorageServer(root=directory / "gcs", backend="memory").start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    try:
        _upload_data()
        logs = LogStore(directory / "logs" / "entries.jsonl")
        # No GPUs: every trial and the trial alone train alike, on `threads` CPU threads.
        thread_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env = {"STORAGE_EMULATOR_HOST": gcs.url, **thread_env}
        runtime = LocalJobRuntime(
            PROJECT, logs, directory / "runtime", ImageCommands(), env, gpus=[]
        )
        with VertexServer(directory / "vertex", jobs=runtime, logs=logs).start() as server:
            connection = VertexConnection(server.grpc_host, "grpc", emulated=True)
            yield VertexTraining(PROJECT, REGION, connection)
    finally:
        gcs.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def _bucket() -> storage.Bucket:
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return client.bucket(BUCKET)


def _upload_data() -> None:
    bucket = _bucket()
    bucket.create()
    train, held_out = make_data()
    files = {f"digits/part-{i:04d}.csv": rows for i, rows in enumerate(split(train, 3))}
    files["held-out/held-out.csv"] = held_out
    for name, rows in files.items():
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        bucket.blob(name).upload_from_string(text.getvalue(), content_type="text/csv")


def _base(name: str) -> str:
    return f"gs://{BUCKET}/runs/{name}"


def _spec(name: str, defaults: dict[str, Any], *, tuned: bool = False) -> JobSpec:
    args = [
        "--label=digit",
        f"--data-uri=gs://{BUCKET}/digits/",
        f"--eval-uri=gs://{BUCKET}/held-out/held-out.csv",
        *(f"--{key}={value}" for key, value in sorted(defaults.items())),
    ]
    study = Tuning(METRIC, "maximize", N_TRIALS, PARALLEL, SPACE) if tuned else None
    if study is not None:  # a tuned parameter is the trial's alone: not also fixed
        args = [a for a in args if not a.startswith(tuple(f"--{p.name}=" for p in SPACE))]
    return JobSpec(
        display_name=f"bench-tuning-{name}",
        labels={"bench": name},
        base_output_directory=_base(name),
        worker_pools=(WorkerPool(Machine("n1-standard-4"), 1, IMAGE, tuple(args)),),
        timeout_seconds=int(JOB_TIMEOUT_S),
        strategy="standard",
        tuning=study,
    )


def _wait(training: VertexTraining, name: str) -> Finished:
    found: dict[str, JobInfo] = {}

    def ended() -> bool:
        found["job"] = training.get(name)
        return found["job"].terminal

    wait_until(ended, what=f"{name} to end", timeout=JOB_TIMEOUT_S)
    info = found["job"]
    if info.state != "JOB_STATE_SUCCEEDED":
        raise RuntimeError(f"{name} ended {info.state}: {info.error_message}")
    assert info.create_time is not None and info.end_time is not None
    return Finished(info, (info.end_time - info.create_time).total_seconds())


def _trial_spans(training: VertexTraining, name: str) -> list[float]:
    """Each trial's start -> end inside the study (the raw resource: the port keeps no
    trial times)."""
    job = training.client.get_hyperparameter_tuning_job(name=name)
    return [(t.end_time - t.start_time).total_seconds() for t in job.trials]


def _metrics(model_dir: str) -> dict[str, Any]:
    path = model_dir.removeprefix(f"gs://{BUCKET}/").rstrip("/") + "/metrics.json"
    loaded: dict[str, Any] = json.loads(_bucket().blob(path).download_as_text())
    return loaded


def _held_out(model_dir: str) -> float:
    """The model's accuracy on the held-out rows, from its metrics.json eval_set block."""
    evaluation = _metrics(model_dir)["eval_set"]
    if "error" in evaluation:
        raise RuntimeError(f"{model_dir}: the held-out rows were not scored: {evaluation}")
    return float(evaluation["candidate"][METRIC])


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)
