"""The Vertex emulator's local runtimes, with small scripts standing in for images."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.cloud import aiplatform_v1

from localcloud.errors import LocalCloudError
from localcloud.logstore import LogStore
from localcloud.procs import port_is_open, wait_until
from localcloud.vertex.images import ImageCommands, image_name
from localcloud.vertex.runtime import JobUpdate
from localcloud.vertex.runtime_local import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    LocalJobRuntime,
    LocalModelRuntime,
    classify_line,
    detect_gpus,
)

REGISTRY = "us-docker.pkg.dev/acme/retrain"
WAIT = 20.0  # generous deadline for anything a test waits on

# ------------------------------------------------------------------ the "images"

ENV_DUMP = """
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1])
rank = os.environ["RANK"]
(out / f"env-{rank}.json").write_text(json.dumps({"env": dict(os.environ), "argv": sys.argv}))
print(f"hello from rank {rank}")
print("INFO:root:loading data", file=sys.stderr)
print("something odd happened", file=sys.stderr)
print(json.dumps({"severity": "WARNING", "message": "few rows", "rows": 3}))
"""

FAILER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
if os.environ["RANK"] == "0":
    (out / "pid.tmp").write_text(str(os.getpid()))
    os.replace(out / "pid.tmp", out / "chief.pid")  # whole, or not there at all
    time.sleep(60)
deadline = time.monotonic() + 20
while not (out / "chief.pid").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
print("error: data file x.csv has no column 'y'", file=sys.stderr)
print("giving up", file=sys.stderr)
sys.exit(2)
"""

# Starts a child of its own, so that stopping it must stop the whole process group.
SLEEPER = """
import os, subprocess, sys, time
from pathlib import Path
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
Path(sys.argv[1], "pid.tmp").write_text(str(os.getpid()))
os.replace(Path(sys.argv[1], "pid.tmp"), Path(sys.argv[1], "sleeper.pid"))
print("sleeping", flush=True)
time.sleep(60)
"""

# Records its GPUs and whether the other job had finished, then waits for a release file.
GPU_JOB = """
import json, os, sys, time
from pathlib import Path
out, name, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
start = {"cuda": os.environ["CUDA_VISIBLE_DEVICES"], "other_done": (out / f"{other}.done").exists()}
(out / f"{name}.start").write_text(json.dumps(start))
deadline = time.monotonic() + 20
while not (out / f"release-{name}").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
(out / f"{name}.done").write_text("")
"""

SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
Path(sys.argv[1], "server.pid").write_text(str(os.getpid()))
health_calls = 0

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global health_calls
        if self.path != os.environ["AIP_HEALTH_ROUTE"]:
            return self.reply(404, {})
        health_calls += 1
        # Not ready for a moment, as while a model loads.
        self.reply(200 if health_calls > 2 else 503, {"calls": health_calls})

    def do_POST(self):
        if self.path != os.environ["AIP_PREDICT_ROUTE"]:
            return self.reply(404, {})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reply(200, {
            "predictions": [len(body["instances"])],
            "storage": os.environ["AIP_STORAGE_URI"],
            "deployed": os.environ["AIP_DEPLOYED_MODEL_ID"],
            "mode": os.environ["AIP_MODE"],
            "greeting": os.environ["GREETING"],
        })

print("serving on", os.environ["AIP_HTTP_PORT"], flush=True)
HTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""

CRASHER = """
import os, sys
print("loading model from", os.environ["AIP_STORAGE_URI"])
print("cannot load model from gs://nowhere/model/", file=sys.stderr)
sys.exit(3)
"""

SCRIPTS = {
    "envdump": ENV_DUMP,
    "failer": FAILER,
    "sleeper": SLEEPER,
    "gpujob": GPU_JOB,
    "server": SERVER,
    "crasher": CRASHER,
}


# ------------------------------------------------------------------ helpers


@dataclass
class Updates:
    """What a runtime reported for one job, in order."""

    seen: list[JobUpdate] = field(default_factory=list)
    log: list[tuple[str, JobUpdate]] | None = None  # shared across jobs, for ordering
    name: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, update: JobUpdate) -> None:
        with self.lock:
            self.seen.append(update)
            if self.log is not None:
                self.log.append((self.name, update))

    def states(self) -> list[aiplatform_v1.JobState]:
        with self.lock:
            return [u.state for u in self.seen]

    def wait_for(self, state: aiplatform_v1.JobState) -> JobUpdate:
        wait_until(lambda: state in self.states(), what=f"job state {state.name}", timeout=WAIT)
        with self.lock:
            return next(u for u in self.seen if u.state == state)


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of this process group exists."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_for_group_end(pgid: int) -> None:
    # A SIGKILLed process takes a moment to finish exiting after the signal is sent.
    wait_until(lambda: not group_alive(pgid), what=f"end of process group {pgid}", timeout=WAIT)


def wait_for_file(path: Path) -> Path:
    wait_until(path.exists, what=str(path), timeout=WAIT)
    return path


def custom_job(
    image: str,
    args: list[str],
    *,
    workers: int = 0,
    accelerators: int = 0,
    output: str = "",
    timeout_s: int = 0,
    env: dict[str, str] | None = None,
) -> aiplatform_v1.CustomJob:
    def pool(replicas: int) -> aiplatform_v1.WorkerPoolSpec:
        return aiplatform_v1.WorkerPoolSpec(
            replica_count=replicas,
            machine_spec=aiplatform_v1.MachineSpec(
                machine_type="g2-standard-8",
                accelerator_type="NVIDIA_L4" if accelerators else None,
                accelerator_count=accelerators,
            ),
            container_spec=aiplatform_v1.ContainerSpec(
                image_uri=image,
                args=args,
                env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
            ),
        )

    spec = aiplatform_v1.CustomJobSpec(
        worker_pool_specs=[pool(1)] + ([pool(workers)] * bool(workers))
    )
    if output:
        spec.base_output_directory = aiplatform_v1.GcsDestination(output_uri_prefix=output)
    if timeout_s:
        spec.scheduling = aiplatform_v1.Scheduling(timeout={"seconds": timeout_s})
    return aiplatform_v1.CustomJob(display_name="test", job_spec=spec)


def entries_for(logs: LogStore, job_id: str, task_name: str) -> list[tuple[str, str]]:
    return [
        (e["severity"], e["jsonPayload"]["message"])
        for e in logs.entries()
        if e["resource"]["labels"].get("job_id") == job_id
        and e["resource"]["labels"]["task_name"] == task_name
    ]


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def commands(tmp_path: Path) -> ImageCommands:
    extra = {}
    for name, body in SCRIPTS.items():
        script = tmp_path / f"{name}.py"
        script.write_text(textwrap.dedent(body))
        extra[f"{REGISTRY}/{name}:*"] = [sys.executable, str(script)]
    return ImageCommands(extra=extra)


@pytest.fixture
def logs(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs" / "entries.jsonl")


@pytest.fixture
def make_jobs(
    tmp_path: Path, logs: LogStore, commands: ImageCommands
) -> Iterator[Callable[[list[str]], LocalJobRuntime]]:
    runtimes: list[LocalJobRuntime] = []

    def make(gpus: list[str]) -> LocalJobRuntime:
        runtime = LocalJobRuntime(
            project="acme",
            logs=logs,
            state_dir=tmp_path / "state",
            commands=commands,
            env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"},
            gpus=gpus,
        )
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def models(logs: LogStore, commands: ImageCommands) -> Iterator[LocalModelRuntime]:
    runtime = LocalModelRuntime(logs, commands, {"GREETING": "hi"}, startup_timeout=WAIT)
    yield runtime
    runtime.close()


# ------------------------------------------------------------------ images


def test_project_images_map_to_the_project_modules_whatever_their_registry_and_tag() -> None:
    commands = ImageCommands()
    py = sys.executable
    assert commands.default_command(f"{REGISTRY}/trainer:latest") == [py, "-m", "trainer.task"]
    assert commands.default_command("trainer-gpu@sha256:ab") == [py, "-m", "trainer.task"]
    assert commands.default_command(f"{REGISTRY}/serving") == [py, "-m", "trainer.serving"]
    assert image_name("localhost:5000/a/serving-cpu:1") == "serving-cpu"


def test_extra_mappings_win_and_container_command_replaces_the_image_command() -> None:
    commands = ImageCommands.from_env(
        {"LOCALCLOUD_IMAGE_MAP": json.dumps({f"{REGISTRY}/trainer:*": ["my-train", "--fast"]})}
    )
    assert commands.argv(f"{REGISTRY}/trainer:2", [], ["--x"]) == ["my-train", "--fast", "--x"]
    # A bare `python` in the container's command is the local interpreter.
    assert commands.argv("anything:1", ["python3", "-m", "m"], ["--y"]) == [
        sys.executable,
        "-m",
        "m",
        "--y",
    ]


@pytest.mark.parametrize("raw", ["{not json", '["a"]', '{"img": []}', '{"img": "python run.py"}'])
def test_a_bad_image_map_names_the_variable(raw: str) -> None:
    with pytest.raises(LocalCloudError, match="LOCALCLOUD_IMAGE_MAP"):
        ImageCommands.from_env({"LOCALCLOUD_IMAGE_MAP": raw})


@pytest.mark.parametrize(
    ("line", "from_stderr", "severity"),
    [
        ("epoch 1", False, "INFO"),
        ("Traceback (most recent call last):", True, "ERROR"),
        ("INFO:root:loading", True, "INFO"),
        ("2026-11-26 10:00:00,123 WARNING slow disk", True, "WARNING"),
        ('{"severity": "error", "message": "boom"}', False, "ERROR"),
    ],
)
def test_output_lines_get_cloud_logging_severities(
    line: str, from_stderr: bool, severity: str
) -> None:
    assert classify_line(line, from_stderr=from_stderr)[0] == severity


def test_gpus_are_detected_with_nvidia_smi_and_narrowed_by_cuda_visible_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    assert detect_gpus({}) == ["0", "1", "2"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2,1"}) == ["2", "1"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == []


# ------------------------------------------------------------------ jobs


def test_a_two_replica_job_gets_the_vertex_environment_and_its_lines_are_logged(
    make_jobs: Callable[[list[str]], LocalJobRuntime], logs: LogStore, out: Path, tmp_path: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()
    job = custom_job(
        f"{REGISTRY}/envdump:1",
        [str(out), "--epochs=2"],
        workers=1,
        output="gs://acme-artifacts/runs/churn/r1",
        env={"FOO": "bar", "RANK": "99"},
    )

    runtime.submit("123", job, updates)

    updates.wait_for(SUCCEEDED)
    assert updates.states() == [RUNNING, SUCCEEDED]
    chief, worker = (json.loads((out / f"env-{r}.json").read_text()) for r in (0, 1))
    assert chief["argv"][1:] == [str(out), "--epochs=2"]
    env0, env1 = chief["env"], worker["env"]
    assert (env0["RANK"], env1["RANK"]) == ("0", "1")  # the platform's, not the container's
    for env in (env0, env1):
        assert env["WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env["MASTER_PORT"] == env0["MASTER_PORT"] and int(env["MASTER_PORT"]) > 0
        assert env["AIP_MODEL_DIR"] == "gs://acme-artifacts/runs/churn/r1/model/"
        assert env["AIP_CHECKPOINT_DIR"] == "gs://acme-artifacts/runs/churn/r1/checkpoints/"
        assert env["AIP_TENSORBOARD_LOG_DIR"] == "gs://acme-artifacts/runs/churn/r1/logs/"
        assert env["CLOUD_ML_JOB_ID"] == "123"
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["FOO"] == "bar"
        assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    spec0, spec1 = json.loads(env0["CLUSTER_SPEC"]), json.loads(env1["CLUSTER_SPEC"])
    assert spec0["cluster"] == spec1["cluster"]
    assert [len(spec0["cluster"][p]) for p in ("workerpool0", "workerpool1")] == [1, 1]
    assert spec0["cluster"]["workerpool0"] != spec0["cluster"]["workerpool1"]
    assert spec0["task"] == {"type": "workerpool0", "index": 0}
    assert spec1["task"] == {"type": "workerpool1", "index": 0}
    assert spec0["environment"] == "cloud"
    assert json.loads(env0["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
    assert json.loads(env1["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}

    for task, rank in (("workerpool0-0", 0), ("workerpool1-0", 1)):
        lines = entries_for(logs, "123", task)
        assert ("INFO", f"hello from rank {rank}") in lines
        assert ("INFO", "INFO:root:loading data") in lines
        assert ("ERROR", "something odd happened") in lines
        assert ("WARNING", "few rows") in lines
    structured = [e for e in logs.entries() if e["jsonPayload"]["message"] == "few rows"]
    assert structured[0]["jsonPayload"]["rows"] == 3
    plain = (tmp_path / "state" / "jobs" / "123" / "replicas.log").read_text()
    assert "workerpool1-0 INFO hello from rank 1" in plain


def test_a_job_without_output_directory_gets_no_aip_dirs_even_if_localcloud_has_them(
    make_jobs: Callable[[list[str]], LocalJobRuntime],
    out: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://someone-else/model/")
    runtime = make_jobs([])
    updates = Updates()

    runtime.submit("7", custom_job(f"{REGISTRY}/envdump:1", [str(out)]), updates)

    updates.wait_for(SUCCEEDED)
    env = json.loads((out / "env-0.json").read_text())["env"]
    assert "AIP_MODEL_DIR" not in env
    assert list(json.loads(env["CLUSTER_SPEC"])["cluster"]) == ["workerpool0"]
    assert env["WORLD_SIZE"] == "1"


def test_a_failing_replica_fails_the_job_with_its_error_line_and_stops_the_others(
    make_jobs: Callable[[list[str]], LocalJobRuntime], logs: LogStore, out: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()

    runtime.submit("9", custom_job(f"{REGISTRY}/failer:1", [str(out)], workers=1), updates)

    failed = updates.wait_for(FAILED)
    assert failed.error_message == "error: data file x.csv has no column 'y'"
    assert updates.states() == [RUNNING, FAILED]
    chief = int((out / "chief.pid").read_text())
    wait_for_group_end(chief)
    assert ("ERROR", "giving up") in entries_for(logs, "9", "workerpool1-0")


def test_a_cancelled_job_stops_its_whole_process_group(
    make_jobs: Callable[[list[str]], LocalJobRuntime], out: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()
    runtime.submit("11", custom_job(f"{REGISTRY}/sleeper:1", [str(out)]), updates)
    updates.wait_for(RUNNING)
    pgid = int(wait_for_file(out / "sleeper.pid").read_text())
    assert group_alive(pgid)

    runtime.cancel("11")

    updates.wait_for(CANCELLED)
    assert updates.states() == [RUNNING, CANCELLED]
    wait_for_group_end(pgid)


def test_a_job_past_its_timeout_is_stopped_and_fails(
    make_jobs: Callable[[list[str]], LocalJobRuntime], out: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()

    runtime.submit("13", custom_job(f"{REGISTRY}/sleeper:1", [str(out)], timeout_s=1), updates)

    failed = updates.wait_for(FAILED)
    assert failed.error_message == "job exceeded its timeout of 1s"
    wait_for_group_end(int((out / "sleeper.pid").read_text()))


def test_close_stops_running_jobs_and_reports_nothing_more(
    make_jobs: Callable[[list[str]], LocalJobRuntime], out: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()
    runtime.submit("15", custom_job(f"{REGISTRY}/sleeper:1", [str(out)]), updates)
    updates.wait_for(RUNNING)
    pgid = int(wait_for_file(out / "sleeper.pid").read_text())

    runtime.close()

    wait_for_group_end(pgid)
    assert updates.states() == [RUNNING]


def test_jobs_wait_in_line_for_a_busy_gpu(
    make_jobs: Callable[[list[str]], LocalJobRuntime], out: Path
) -> None:
    runtime = make_jobs(["0"])
    order: list[tuple[str, JobUpdate]] = []
    first, second = Updates(log=order, name="a"), Updates(log=order, name="b")
    runtime.submit(
        "a", custom_job(f"{REGISTRY}/gpujob:1", [str(out), "a", "b"], accelerators=1), first
    )
    first.wait_for(RUNNING)

    runtime.submit(
        "b", custom_job(f"{REGISTRY}/gpujob:1", [str(out), "b", "a"], accelerators=1), second
    )

    wait_until(lambda: runtime.queued() == ["b"], what="job b queued", timeout=WAIT)
    assert second.states() == []
    (out / "release-b").write_text("")
    (out / "release-a").write_text("")
    second.wait_for(SUCCEEDED)
    a_start = json.loads((out / "a.start").read_text())
    b_start = json.loads((out / "b.start").read_text())
    assert a_start["cuda"] == b_start["cuda"] == "0"
    assert b_start["other_done"]
    assert [(n, u.state) for n, u in order] == [
        ("a", RUNNING),
        ("a", SUCCEEDED),
        ("b", RUNNING),
        ("b", SUCCEEDED),
    ]


def test_a_job_cancelled_while_queued_never_runs(
    make_jobs: Callable[[list[str]], LocalJobRuntime], out: Path
) -> None:
    runtime = make_jobs(["0"])
    first, second = Updates(), Updates()
    runtime.submit(
        "a", custom_job(f"{REGISTRY}/gpujob:1", [str(out), "a", "b"], accelerators=1), first
    )
    first.wait_for(RUNNING)
    runtime.submit(
        "b", custom_job(f"{REGISTRY}/gpujob:1", [str(out), "b", "a"], accelerators=1), second
    )
    wait_until(lambda: runtime.queued() == ["b"], what="job b queued", timeout=WAIT)

    runtime.cancel("b")

    second.wait_for(CANCELLED)
    assert second.states() == [CANCELLED]
    (out / "release-a").write_text("")
    first.wait_for(SUCCEEDED)
    assert not (out / "b.start").exists()


def test_without_any_gpu_a_gpu_job_runs_on_cpu_with_a_warning(
    make_jobs: Callable[[list[str]], LocalJobRuntime], logs: LogStore, out: Path
) -> None:
    runtime = make_jobs([])
    updates = Updates()

    runtime.submit("17", custom_job(f"{REGISTRY}/envdump:1", [str(out)], accelerators=2), updates)

    updates.wait_for(SUCCEEDED)
    assert json.loads((out / "env-0.json").read_text())["env"]["CUDA_VISIBLE_DEVICES"] == ""
    warning = "no GPU on this machine: running on CPU instead of 2 x NVIDIA_L4"
    assert ("WARNING", warning) in entries_for(logs, "17", "workerpool0-0")


@pytest.mark.parametrize(
    ("gpus", "devices", "shared"),
    [(["0", "1", "2"], ["0", "1"], False), (["0"], ["0", "0"], True)],
)
def test_replicas_get_gpus_of_their_own_or_share_them_with_a_warning(
    make_jobs: Callable[[list[str]], LocalJobRuntime],
    logs: LogStore,
    out: Path,
    gpus: list[str],
    devices: list[str],
    shared: bool,
) -> None:
    runtime = make_jobs(gpus)
    updates = Updates()
    job = custom_job(f"{REGISTRY}/envdump:1", [str(out)], workers=1, accelerators=1)

    runtime.submit("21", job, updates)

    updates.wait_for(SUCCEEDED)
    seen = [json.loads((out / f"env-{r}.json").read_text())["env"] for r in (0, 1)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in seen] == devices
    warnings = [m for sev, m in entries_for(logs, "21", "workerpool0-0") if sev == "WARNING"]
    assert any("its replicas share them" in m for m in warnings) == shared


def test_a_job_without_a_chief_fails_saying_what_to_set(
    make_jobs: Callable[[list[str]], LocalJobRuntime],
) -> None:
    runtime = make_jobs([])
    updates = Updates()
    job = custom_job(f"{REGISTRY}/envdump:1", [])
    job.job_spec.worker_pool_specs[0].replica_count = 0

    runtime.submit("23", job, updates)

    failed = updates.wait_for(FAILED)
    assert failed.error_message is not None
    assert "worker_pool_specs[0].replica_count" in failed.error_message


def test_an_unmapped_image_fails_the_job_with_the_mapping_hint(
    make_jobs: Callable[[list[str]], LocalJobRuntime],
) -> None:
    runtime = make_jobs([])
    updates = Updates()

    runtime.submit("19", custom_job(f"{REGISTRY}/mystery:1", []), updates)

    failed = updates.wait_for(FAILED)
    assert updates.states() == [FAILED]
    assert failed.error_message is not None
    assert failed.error_message.startswith(
        f"no local command for image '{REGISTRY}/mystery:1': map it with LOCALCLOUD_IMAGE_MAP"
    )


# ------------------------------------------------------------------ models


def serving_model(image: str, artifact_uri: str = "gs://acme-artifacts/m/1/model/") -> Any:
    return aiplatform_v1.Model(
        display_name="churn",
        artifact_uri=artifact_uri,
        container_spec=aiplatform_v1.ModelContainerSpec(
            image_uri=image,
            health_route="/ready",
            predict_route="/v1/predict",
        ),
    )


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=WAIT) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_a_deployed_model_serves_once_healthy_and_stops_when_undeployed(
    models: LocalModelRuntime, logs: LogStore, out: Path
) -> None:
    model = serving_model(f"{REGISTRY}/server:1")
    model.container_spec.args = [str(out)]

    server = models.deploy("dm-1", model)

    assert (server.health_route, server.predict_route) == ("/ready", "/v1/predict")
    answer = post_json(server.url + server.predict_route, {"instances": [[1], [2]]})
    assert answer == {
        "predictions": [2],
        "storage": "gs://acme-artifacts/m/1/model/",
        "deployed": "dm-1",
        "mode": "PREDICTION",
        "greeting": "hi",
    }
    served = [e for e in logs.entries() if e["resource"]["labels"].get("deployed_model_id")]
    assert served[0]["jsonPayload"]["message"].startswith("serving on")

    models.undeploy("dm-1")

    port = int(server.url.rsplit(":", 1)[1])
    assert not port_is_open("127.0.0.1", port)
    wait_for_group_end(int((out / "server.pid").read_text()))


def test_a_serving_command_that_exits_at_once_raises_with_its_output(
    models: LocalModelRuntime,
) -> None:
    with pytest.raises(LocalCloudError) as raised:
        models.deploy("dm-2", serving_model(f"{REGISTRY}/crasher:1"))

    message = str(raised.value)
    assert "exited with code 3" in message
    assert "cannot load model from gs://nowhere/model/" in message


def test_deploying_an_unmapped_image_raises_with_the_mapping_hint(
    models: LocalModelRuntime,
) -> None:
    with pytest.raises(LocalCloudError, match="map it with LOCALCLOUD_IMAGE_MAP"):
        models.deploy("dm-3", serving_model(f"{REGISTRY}/mystery:1"))
