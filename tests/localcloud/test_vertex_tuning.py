"""HyperparameterTuningJobs on the Vertex emulator, through the official GAPIC client over
gRPC and REST: trials run as real processes with Vertex's per-trial contract, at most
`parallel_trial_count` at a time; their hypertune metrics become final measurements; cancel
and `max_failed_trial_count` end the job as Vertex does."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1

from localcloud.logfilter import compile_filter
from localcloud.logstore import LogStore
from localcloud.procs import wait_until
from localcloud.router import SHARED_FILTER_PATH
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime
from localcloud.vertex.server import VertexServer
from retrain import trials as tuning_trials
from retrain.adapters.clients import VertexConnection
from retrain.adapters.vertex import VertexTraining
from retrain.config import Parameter, Tuning
from retrain.jobspec import JobSpec, WorkerPool
from retrain.ports import Objective

PROJECT = "acme"
PARENT = f"projects/{PROJECT}/locations/us-central1"
IMAGE = "us-docker.pkg.dev/acme/retrain/trial:1"
WAIT = 60.0
S = aiplatform_v1.JobState
T = aiplatform_v1.Trial.State

# A trial: records what it was given, waits for its release file when asked to, reports
# its metric through the hypertune metric file (two measurements; the last is final) and
# fails when its parameters say so.
TRIAL = """
import json, os, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
out, trial = Path(args["out"]), os.environ["CLOUD_ML_TRIAL_ID"]
names = ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR",
         "CLOUD_ML_TRIAL_ID", "CLOUD_ML_HP_METRIC_FILE")
seen = {"env": {n: os.environ.get(n) for n in names}, "argv": sys.argv[1:]}
(out / f"trial-{trial}.tmp").write_text(json.dumps(seen))
os.replace(out / f"trial-{trial}.tmp", out / f"trial-{trial}.json")
if args.get("gate") == "yes":
    deadline = time.monotonic() + 60
    while not (out / f"release-{trial}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
if args.get("opt") == "crash":
    print("error: the optimizer diverged", file=sys.stderr)
    sys.exit(3)
if args.get("opt") == "silent":
    sys.exit(0)
x = float(args["x"])
with open(os.environ["CLOUD_ML_HP_METRIC_FILE"], "a") as metrics:
    for step, value in ((1, -100.0), (2, 0.0 - (x - 2) ** 2)):
        line = {"timestamp": time.time(), "trial": trial, "score": str(value),
                "global_step": str(step)}
        metrics.write(json.dumps(line) + "\\n")
"""


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> ImageCommands:
    script = tmp_path_factory.mktemp("images") / "trial.py"
    script.write_text(textwrap.dedent(TRIAL))
    return ImageCommands(extra={IMAGE: [sys.executable, str(script)]})


@pytest.fixture
def server(tmp_path: Path, commands: ImageCommands) -> Iterator[VertexServer]:
    logs = LogStore(tmp_path / "logs" / "entries.jsonl")
    runtime = LocalJobRuntime(PROJECT, logs, tmp_path / "runtime", commands, {}, gpus=[])
    with VertexServer(tmp_path / "vertex", jobs=runtime, logs=logs).start() as running:
        running.logs = logs  # type: ignore[attr-defined]
        yield running


def client(server: VertexServer, transport: str) -> Any:
    endpoint = server.grpc_host if transport == "grpc" else server.url
    return VertexConnection(endpoint, transport, emulated=True).client("JobServiceClient")


def tuning_job(
    out: Path,
    *,
    parameters: list[dict[str, Any]],
    algorithm: str = "GRID_SEARCH",
    max_trials: int = 3,
    parallel: int = 1,
    max_failed: int = 0,
    gate: bool = False,
    base: str = "gs://acme-artifacts/runs/p/r1",
) -> dict[str, Any]:
    args = [f"--out={out}"] + (["--gate=yes"] if gate else [])
    return {
        "display_name": "retrain-p-r1",
        "labels": {"retrain-run": "r1"},
        "study_spec": {
            "metrics": [{"metric_id": "score", "goal": "MAXIMIZE"}],
            "parameters": parameters,
            "algorithm": algorithm,
        },
        "max_trial_count": max_trials,
        "parallel_trial_count": parallel,
        "max_failed_trial_count": max_failed,
        "trial_job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": {"machine_type": "n1-standard-4"},
                    "replica_count": 1,
                    "container_spec": {"image_uri": IMAGE, "args": args},
                }
            ],
            "base_output_directory": {"output_uri_prefix": base},
        },
    }


X_GRID = {"parameter_id": "x", "integer_value_spec": {"min_value": 1, "max_value": 3}}


def categorical(*values: str) -> dict[str, Any]:
    return {"parameter_id": "opt", "categorical_value_spec": {"values": list(values)}}


def wait_for_state(jobs: Any, name: str, *states: int) -> Any:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found["job"] = jobs.get_hyperparameter_tuning_job(name=name)
        return found["job"].state in states

    wait_until(reached, what=f"{name} in {states}", timeout=WAIT)
    return found["job"]


def wait_for_trials(jobs: Any, name: str, count: int) -> Any:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found["job"] = jobs.get_hyperparameter_tuning_job(name=name)
        return len(found["job"].trials) >= count

    wait_until(reached, what=f"{count} trials of {name}", timeout=WAIT)
    return found["job"]


def service_lines(server: VertexServer, job_id: str) -> list[dict[str, Any]]:
    logs: LogStore = server.logs  # type: ignore[attr-defined]
    return [
        e
        for e in logs.entries()
        if e["resource"]["labels"]["job_id"] == job_id
        and e["resource"]["labels"]["task_name"] == "service"
    ]


def routed_end_lines(server: VertexServer, job_id: str) -> list[str]:
    """The job's lines the shared log sink filter routes to job-events (written just after
    the job's state is set, so waited for)."""
    sink = compile_filter(SHARED_FILTER_PATH.read_text())

    def routed() -> list[str]:
        return [
            e["jsonPayload"]["message"] for e in service_lines(server, job_id) if sink.matches(e)
        ]

    wait_until(lambda: bool(routed()), what=f"the end line of job {job_id}", timeout=WAIT)
    return routed()


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_products_tuning_job_runs_its_trials_and_the_best_trial_is_found(
    server: VertexServer, tmp_path: Path, transport: str
):
    # GIVEN the product's adapter submits a grid study over x in 1..3 and two optimizers
    out = tmp_path / "out"
    out.mkdir()
    connection = VertexConnection(
        server.grpc_host if transport == "grpc" else server.url, transport, emulated=True
    )
    training = VertexTraining(PROJECT, "us-central1", connection)
    study = Tuning(
        metric="score",
        goal="maximize",
        max_trial_count=4,
        parallel_trial_count=2,
        parameters=(
            Parameter("opt", "categorical", values=("adamw", "sgd")),
            Parameter("x", "integer", 1.0, 3.0),
        ),
        algorithm="grid",
    )
    spec = JobSpec(
        display_name="retrain-p-r1",
        labels={"retrain-pipeline": "p", "retrain-run": "r1"},
        base_output_directory="gs://acme-artifacts/runs/p/r1",
        worker_pools=(WorkerPool(_machine(), 1, IMAGE, (f"--out={out}",)),),
        timeout_seconds=600,
        strategy="spot",
        tuning=study,
    )
    submitted = training.submit(spec)
    assert "/hyperparameterTuningJobs/" in submitted.name
    assert submitted.objective == Objective("score", "maximize")
    jobs = client(server, transport)
    sent = jobs.get_hyperparameter_tuning_job(name=submitted.name)
    assert sent.study_spec.algorithm == aiplatform_v1.StudySpec.Algorithm.GRID_SEARCH
    assert [p.parameter_id for p in sent.study_spec.parameters] == ["opt", "x"]
    assert list(sent.study_spec.parameters[0].categorical_value_spec.values) == ["adamw", "sgd"]
    x_spec = sent.study_spec.parameters[1]
    assert (x_spec.integer_value_spec.min_value, x_spec.integer_value_spec.max_value) == (1, 3)
    assert x_spec.scale_type == aiplatform_v1.StudySpec.ParameterSpec.ScaleType.UNIT_LINEAR_SCALE
    pool = sent.trial_job_spec.worker_pool_specs[0]
    assert pool.machine_spec.machine_type == "n1-standard-4"
    assert sent.trial_job_spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
    assert (sent.max_trial_count, sent.parallel_trial_count) == (4, 2)

    # WHEN it ends
    done = wait_for_state(jobs, submitted.name, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)

    # THEN four trials ran, each with its own parameters, directories and metric file
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert [t.id for t in done.trials] == ["1", "2", "3", "4"]
    assert all(t.state == T.SUCCEEDED for t in done.trials)
    grid = [(t.parameters[0].value, t.parameters[1].value) for t in done.trials]
    assert grid == [("adamw", 1.0), ("adamw", 2.0), ("adamw", 3.0), ("sgd", 1.0)]
    scores = [t.final_measurement.metrics[0].value for t in done.trials]
    assert scores == [-1.0, 0.0, -1.0, -1.0]
    assert [t.final_measurement.step_count for t in done.trials] == [2, 2, 2, 2]
    assert len(done.trials[1].measurements) == 2
    seen = json.loads((out / "trial-2.json").read_text())
    assert seen["env"]["AIP_MODEL_DIR"] == "gs://acme-artifacts/runs/p/r1/2/model/"
    assert seen["env"]["AIP_CHECKPOINT_DIR"] == "gs://acme-artifacts/runs/p/r1/2/checkpoints/"
    assert seen["env"]["AIP_TENSORBOARD_LOG_DIR"] == "gs://acme-artifacts/runs/p/r1/2/logs/"
    assert seen["env"]["CLOUD_ML_TRIAL_ID"] == "2"
    assert seen["env"]["CLOUD_ML_HP_METRIC_FILE"].endswith("/trials/2/hypertune-metrics.jsonl")
    assert seen["argv"] == [f"--out={out}", "--opt=adamw", "--x=2"]

    # AND the product reads the best trial from the job
    info = training.get(submitted.name)
    best = tuning_trials.best(info)
    assert best is not None and (best.id, best.metric) == ("2", 0.0)
    assert best.parameters == {"opt": "adamw", "x": 2.0}
    assert [j.name for j in training.find({"retrain-run": "r1"})] == [submitted.name]
    assert training.find({"retrain-run": "r1"}, active_only=True) == []

    # AND the tuning job's end line is one the shared log sink filter routes
    assert routed_end_lines(server, info.job_id) == ["Job completed successfully."]
    messages = [e["jsonPayload"]["message"] for e in service_lines(server, info.job_id)]
    assert "Trial 2 completed: score=0" in messages


def _machine() -> Any:
    from retrain.config import Machine

    return Machine("n1-standard-4")


def test_parallel_trial_count_is_respected(server: VertexServer, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = client(server, "grpc")
    body = tuning_job(out, parameters=[X_GRID], max_trials=3, parallel=2, gate=True)
    name = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body).name
    # Two trials start and hold; a third is not started while both run.
    job = wait_for_trials(jobs, name, 2)
    wait_until(
        lambda: all((out / f"trial-{i}.json").exists() for i in ("1", "2")),
        what="two trials running",
        timeout=WAIT,
    )
    job = jobs.get_hyperparameter_tuning_job(name=name)
    assert [(t.id, t.state) for t in job.trials] == [("1", T.ACTIVE), ("2", T.ACTIVE)]
    assert job.state == S.JOB_STATE_RUNNING
    # Releasing one frees one slot: the third starts beside the second.
    (out / "release-1").write_text("")
    job = wait_for_trials(jobs, name, 3)
    states = {t.id: t.state for t in job.trials}
    assert states["2"] == T.ACTIVE and states["3"] == T.ACTIVE
    for trial in ("2", "3"):
        (out / f"release-{trial}").write_text("")
    done = wait_for_state(jobs, name, S.JOB_STATE_SUCCEEDED)
    assert [t.state for t in done.trials] == [T.SUCCEEDED] * 3


def test_cancel_stops_the_running_trials(server: VertexServer, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = client(server, "rest")
    body = tuning_job(out, parameters=[X_GRID], max_trials=3, parallel=2, gate=True)
    name = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body).name
    wait_for_trials(jobs, name, 2)
    jobs.cancel_hyperparameter_tuning_job(name=name)
    done = wait_for_state(jobs, name, S.JOB_STATE_CANCELLED)
    assert done.error.code == 1  # google.rpc.Code.CANCELLED, as Vertex sets it
    assert [t.id for t in done.trials] == ["1", "2"]
    for trial in done.trials:
        assert trial.state == T.INFEASIBLE
        assert trial.infeasible_reason == "stopped: the job was cancelled"
    with pytest.raises(exceptions.BadRequest, match="already JOB_STATE_CANCELLED"):
        jobs.cancel_hyperparameter_tuning_job(name=name)
    assert routed_end_lines(server, name.rsplit("/", 1)[-1]) == ["Job was cancelled."]


def test_max_failed_trial_count_fails_the_job(server: VertexServer, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = client(server, "grpc")
    parameters = [categorical("crash", "silent", "adamw"), X_GRID]
    body = tuning_job(out, parameters=parameters, max_trials=6, max_failed=2)
    name = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body).name
    done = wait_for_state(jobs, name, S.JOB_STATE_FAILED)
    # Grid order: crash with x=1, then x=2: two failures end the study there.
    assert [(t.id, t.state) for t in done.trials] == [("1", T.INFEASIBLE), ("2", T.INFEASIBLE)]
    assert done.trials[0].infeasible_reason == "error: the optimizer diverged"
    assert done.error.code == 13
    assert "2 trials failed, reaching max_failed_trial_count 2" in done.error.message
    job_id = name.rsplit("/", 1)[-1]

    def lines() -> list[str]:
        return [e["jsonPayload"]["message"] for e in service_lines(server, job_id)]

    # The state is set first, its lifecycle lines are written just after.
    wait_until(lambda: "Job failed." in lines(), what="the job's end line", timeout=WAIT)
    assert "Trial 1 failed: error: the optimizer diverged" in lines()
    assert lines()[-2:] == [f"Job failed with error: {done.error.message}", "Job failed."]


def test_a_trial_without_a_metric_is_infeasible_and_all_failed_fails_the_job(
    server: VertexServer, tmp_path: Path
):
    out = tmp_path / "out"
    out.mkdir()
    jobs = client(server, "rest")
    body = tuning_job(out, parameters=[categorical("silent")], max_trials=1)
    name = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body).name
    done = wait_for_state(jobs, name, S.JOB_STATE_FAILED)
    (trial,) = done.trials
    assert trial.state == T.INFEASIBLE
    assert "reported no value of score" in trial.infeasible_reason
    assert done.error.message == "all 1 trials failed"


@pytest.mark.parametrize("algorithm", ["ALGORITHM_UNSPECIFIED", "RANDOM_SEARCH"])
def test_default_and_random_search_draw_inside_the_space(
    server: VertexServer, tmp_path: Path, algorithm: str
):
    out = tmp_path / "out"
    out.mkdir()
    jobs = client(server, "grpc")
    parameters = [
        {
            "parameter_id": "x",
            "double_value_spec": {"min_value": 0.5, "max_value": 4.0},
            "scale_type": "UNIT_LOG_SCALE",
        },
        {"parameter_id": "opt", "discrete_value_spec": {"values": [1, 2]}},
    ]
    body = tuning_job(out, parameters=parameters, algorithm=algorithm, max_trials=3, parallel=2)
    name = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body).name
    done = wait_for_state(jobs, name, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert len(done.trials) == 3
    for trial in done.trials:
        values = {p.parameter_id: p.value for p in trial.parameters}
        assert 0.5 <= values["x"] <= 4.0 and values["opt"] in (1.0, 2.0)
    lines = [e["jsonPayload"]["message"] for e in service_lines(server, name.rsplit("/", 1)[-1])]
    searched = "Optuna TPE" if algorithm == "ALGORITHM_UNSPECIFIED" else "random search"
    assert any(line.startswith(f"Searching with {searched}") for line in lines)


# -- the API's answers, without running anything --------------------------------------


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[VertexServer]:
    with VertexServer(tmp_path / "bare").start() as running:
        yield running


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_requests_vertex_refuses_are_refused_naming_the_field(
    bare: VertexServer, tmp_path: Path, transport: str
):
    jobs = client(bare, transport)
    double = {"parameter_id": "lr", "double_value_spec": {"min_value": 0.1, "max_value": 1.0}}
    cases = {
        "GRID_SEARCH needs DISCRETE, INTEGER or CATEGORICAL": tuning_job(
            tmp_path, parameters=[double]
        ),
        "study_spec.parameters must hold a parameter": tuning_job(tmp_path, parameters=[]),
        "max_trial_count must be at least 1": tuning_job(
            tmp_path, parameters=[X_GRID], max_trials=0
        ),
        "trial_job_spec.worker_pool_specs[0].machine_spec.machine_type is required": {
            **tuning_job(tmp_path, parameters=[X_GRID]),
            "trial_job_spec": {
                "worker_pool_specs": [{"replica_count": 1, "container_spec": {"image_uri": IMAGE}}]
            },
        },
        "UNIT_LOG_SCALE needs a positive min_value": tuning_job(
            tmp_path,
            algorithm="RANDOM_SEARCH",
            parameters=[
                {
                    "parameter_id": "lr",
                    "double_value_spec": {"min_value": 0.0, "max_value": 1.0},
                    "scale_type": "UNIT_LOG_SCALE",
                }
            ],
        ),
    }
    for message, body in cases.items():
        with pytest.raises(exceptions.BadRequest, match=re.escape(message)):
            jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body)


def test_list_get_cancel_and_delete_without_a_runtime(bare: VertexServer, tmp_path: Path):
    jobs = client(bare, "grpc")
    body = tuning_job(tmp_path, parameters=[X_GRID])
    first = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=body)
    other = {**body, "labels": {"retrain-run": "r2"}}
    second = jobs.create_hyperparameter_tuning_job(parent=PARENT, hyperparameter_tuning_job=other)
    assert first.state == S.JOB_STATE_PENDING and first.create_time
    found = jobs.list_hyperparameter_tuning_jobs(
        request={"parent": PARENT, "filter": 'labels.retrain-run="r2"'}
    )
    assert [j.name for j in found] == [second.name]
    with pytest.raises(exceptions.BadRequest, match="cancel it before deleting it"):
        jobs.delete_hyperparameter_tuning_job(name=first.name).result()
    jobs.cancel_hyperparameter_tuning_job(name=first.name)
    assert jobs.get_hyperparameter_tuning_job(name=first.name).state == S.JOB_STATE_CANCELLED
    jobs.delete_hyperparameter_tuning_job(name=first.name).result()
    with pytest.raises(exceptions.NotFound):
        jobs.get_hyperparameter_tuning_job(name=first.name)
    # A CustomJob of the same id space is not a tuning job, and the other way round.
    with pytest.raises(exceptions.NotFound):
        jobs.get_custom_job(name=second.name.replace("hyperparameterTuningJobs", "customJobs"))


def test_a_restart_runs_the_tuning_jobs_that_were_running_again_under_their_names(
    tmp_path: Path, commands
):
    logs = LogStore(tmp_path / "logs.jsonl")
    out = tmp_path / "out"
    out.mkdir()

    def runtime() -> LocalJobRuntime:
        return LocalJobRuntime(PROJECT, logs, tmp_path / "rt", commands, {}, gpus=[])

    with VertexServer(tmp_path / "v", jobs=runtime(), logs=logs).start() as running:
        jobs = client(running, "grpc")
        body = tuning_job(out, parameters=[X_GRID], gate=True)
        name = jobs.create_hyperparameter_tuning_job(
            parent=PARENT, hyperparameter_tuning_job=body
        ).name
        wait_for_trials(jobs, name, 1)
    for trial in ("1", "2", "3"):
        (out / f"release-{trial}").touch()
    with VertexServer(tmp_path / "v", jobs=runtime(), logs=logs).start() as restarted:
        jobs = client(restarted, "grpc")
        job = wait_for_state(jobs, name, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
        assert job.state == S.JOB_STATE_SUCCEEDED, job.error
        assert [t.id for t in job.trials] == ["1", "2", "3"]  # started over, once each
        assert {t.state for t in job.trials} == {T.SUCCEEDED}
        (listed,) = jobs.list_hyperparameter_tuning_jobs(parent=PARENT)
        assert listed.name == name
    job_id = name.rsplit("/", 1)[1]
    texts = [
        str(e.get("jsonPayload", {}).get("message", e.get("textPayload", "")))
        for e in logs.entries()
        if e.get("resource", {}).get("labels", {}).get("job_id") == job_id
    ]
    assert any("running it again from the start" in t for t in texts), texts


def test_a_restart_without_a_runtime_fails_the_tuning_jobs_that_were_running(
    tmp_path: Path, commands
):
    logs = LogStore(tmp_path / "logs.jsonl")
    runtime = LocalJobRuntime(PROJECT, logs, tmp_path / "rt", commands, {}, gpus=[])
    out = tmp_path / "out"
    out.mkdir()
    with VertexServer(tmp_path / "v", jobs=runtime, logs=logs).start() as running:
        jobs = client(running, "grpc")
        body = tuning_job(out, parameters=[X_GRID], gate=True)
        name = jobs.create_hyperparameter_tuning_job(
            parent=PARENT, hyperparameter_tuning_job=body
        ).name
        wait_for_trials(jobs, name, 1)
    with VertexServer(tmp_path / "v").start() as restarted:
        job = client(restarted, "grpc").get_hyperparameter_tuning_job(name=name)
        assert job.state == S.JOB_STATE_FAILED and "localcloud was stopped" in job.error.message
        assert job.trials[0].state == T.INFEASIBLE
