"""The Vertex AI emulator's local runtimes: a CustomJob runs as one process per replica
with Vertex's environment contract, local GPUs handed out through CUDA_VISIBLE_DEVICES
(jobs queue while they are busy), and a deployed model runs its serving command on a
free port. POSIX only: each process leads its own process group, so stopping it stops
whatever it started too."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from google.cloud import aiplatform_v1

from localcloud.errors import LocalCloudError
from localcloud.logstore import LogEntry, LogStore, job_log_entry, now_rfc3339
from localcloud.procs import ChildRecords, free_port, port_is_open, wait_until
from localcloud.supervisor import Supervisor
from localcloud.vertex.images import ImageCommands, UnmappedImage
from localcloud.vertex.packages import PackageInstaller
from localcloud.vertex.runtime import DeployedServer, JobUpdate

__all__ = [
    "ImageCommands",
    "LocalJobRuntime",
    "LocalModelRuntime",
    "ReplicaPlan",
    "UnmappedImage",
    "classify_line",
    "detect_gpus",
    "plan_replicas",
]

_log = logging.getLogger(__name__)

JobState = aiplatform_v1.JobState
# Typed constants: the generated enum's members read as plain ints to a type checker.
RUNNING = JobState(JobState.JOB_STATE_RUNNING)
SUCCEEDED = JobState(JobState.JOB_STATE_SUCCEEDED)
FAILED = JobState(JobState.JOB_STATE_FAILED)
CANCELLED = JobState(JobState.JOB_STATE_CANCELLED)
_HOST = "127.0.0.1"
_POLL_SECONDS = 0.05
_DRAIN_SECONDS = 2.0  # how long to wait for a stopped process's last output lines
_TAIL_LINES = 20  # output lines quoted when a serving container fails to start

# Vertex's TF_CONFIG task type for worker pools 0..3.
_TF_TYPES = ("chief", "worker", "ps", "evaluator")

# Variables the platform sets: never inherited from localcloud's own environment, where
# they would describe some other job.
_PLATFORM_PREFIXES = ("AIP_", "CLOUD_ML_")
_PLATFORM_NAMES = frozenset(
    {"CLUSTER_SPEC", "TF_CONFIG", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}
)

# A replica's failure reason: `error: ...`, or argparse's `prog: error: ...`.
_ERROR_LINE = re.compile(r"^(?:\S+: )?error:")
# stderr lines that are logging output rather than errors: `INFO:root:...`,
# `2026-11-26 10:00:00,123 WARNING ...`, `[INFO] ...`, `I1126 10:00:00.1 ...` (absl).
_LEVEL_PREFIX = re.compile(
    r"^\W{0,3}(?:[\d\-/:.,T ]+\s+)?\[?(DEBUG|INFO|NOTICE|WARNING|WARN)\b|^([IW])\d{4} "
)
_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "NOTICE": "NOTICE", "WARNING": "WARNING"}
_LEVELS |= {"WARN": "WARNING", "I": "INFO", "W": "WARNING"}
_SEVERITIES = frozenset(
    {"DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"}
)


# ---------------------------------------------------------------------------- output lines


def classify_line(line: str, *, from_stderr: bool) -> tuple[str, str, dict[str, Any]]:
    """(severity, message, extra jsonPayload fields) of one line, as Cloud Logging reads a
    container's output: a JSON object keeps its own severity and fields, stdout is INFO,
    stderr is ERROR unless the line is plainly a logging record of a lower level."""
    structured = _json_object(line)
    if structured is not None:
        fields = dict(structured)
        level = str(fields.pop("severity", "") or fields.pop("levelname", "")).upper()
        fields.pop("levelname", None)
        message = str(fields.pop("message", line))
        default = "ERROR" if from_stderr else "INFO"
        return (level if level in _SEVERITIES else default), message, fields
    if not from_stderr:
        return "INFO", line, {}
    match = _LEVEL_PREFIX.match(line)
    if match:
        return _LEVELS[match.group(1) or match.group(2)], line, {}
    return "ERROR", line, {}


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _OutputPump:
    """Reads a process's stdout and stderr line by line on two threads."""

    def __init__(
        self, process: subprocess.Popen[bytes], on_line: Callable[[str, bool], None], name: str
    ) -> None:
        self._on_line = on_line
        streams = ((process.stdout, False), (process.stderr, True))
        self._threads = [
            threading.Thread(target=self._pump, args=(s, e), name=name, daemon=True)
            for s, e in streams
            if s is not None
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[bytes], from_stderr: bool) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    self._on_line(line, from_stderr)

    def join(self, timeout: float = _DRAIN_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------- processes


def _inherited_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in _PLATFORM_NAMES and not name.startswith(_PLATFORM_PREFIXES)
    }


def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own makes the process a group leader: killing the group also
    # stops what it started (data loaders, torchrun workers, shells).
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _stop_groups(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every group (a trainer may save a checkpoint), SIGKILL what is left."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports (holding each open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((_HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def detect_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs jobs may use: the machine's NVIDIA GPUs as `nvidia-smi` lists them, or, when
    localcloud itself runs with CUDA_VISIBLE_DEVICES set, the ones it names (so a shared
    machine can lend localcloud some of its GPUs). None when `nvidia-smi` is missing."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        result = subprocess.run(
            [program, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        _log.warning("nvidia-smi failed, treating the machine as having no GPU: %s", err)
        return []
    found = _csv(result.stdout.replace("\n", ","))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return found if visible is None or not found else _csv(visible)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# ---------------------------------------------------------------------------- job planning


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica to start: its command and the environment Vertex would give it."""

    pool: int
    index: int
    rank: int
    image_uri: str
    argv: tuple[str, ...]
    container_env: Mapping[str, str]
    platform_env: Mapping[str, str]  # Vertex's contract: wins over the container's own
    accelerator_count: int
    accelerator_type: str

    @property
    def task_name(self) -> str:
        return f"workerpool{self.pool}-{self.index}"


def plan_replicas(
    job_id: str,
    spec: aiplatform_v1.CustomJobSpec,
    commands: ImageCommands,
    packages: PackageInstaller | None = None,
) -> list[ReplicaPlan]:
    """The job's replicas in rank order (the chief, worker pool 0, is rank 0). Raises
    LocalCloudError when the job cannot run here (no replicas, unmapped image, packages
    that do not install...)."""
    pools = [(i, pool) for i, pool in enumerate(spec.worker_pool_specs) if pool.replica_count]
    if not pools or pools[0][0] != 0:
        raise LocalCloudError(
            "the job has no chief: set job_spec.worker_pool_specs[0].replica_count to 1"
        )
    slots = [(i, index) for i, pool in pools for index in range(pool.replica_count)]
    *ports, master_port = _distinct_free_ports(len(slots) + 1)
    cluster: dict[str, list[str]] = {f"workerpool{i}": [] for i, _ in pools}
    for (i, _), port in zip(slots, ports, strict=True):
        cluster[f"workerpool{i}"].append(f"{_HOST}:{port}")
    shared = {
        **_output_env(spec),
        "CLOUD_ML_JOB_ID": job_id,
        "MASTER_ADDR": _HOST,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(len(slots)),
    }
    plans = []
    installed: dict[tuple[str, ...], str] = {}  # one install per package set and job
    for rank, (i, index) in enumerate(slots):
        pool = spec.worker_pool_specs[i]
        image_uri, argv, container_env = _pool_command(i, pool, commands, packages, installed)
        plans.append(
            ReplicaPlan(
                pool=i,
                index=index,
                rank=rank,
                image_uri=image_uri,
                argv=argv,
                container_env=container_env,
                platform_env=shared | _cluster_env(cluster, i, index) | {"RANK": str(rank)},
                accelerator_count=pool.machine_spec.accelerator_count,
                accelerator_type=pool.machine_spec.accelerator_type.name,
            )
        )
    return plans


def _pool_command(
    i: int,
    pool: aiplatform_v1.WorkerPoolSpec,
    commands: ImageCommands,
    packages: PackageInstaller | None,
    installed: dict[tuple[str, ...], str],
) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """(image, argv, the container's env) of a pool: its container's command, or for a
    python_package_spec `python -m <python_module> <args>` with the packages installed."""
    package = pool.python_package_spec
    if package.executor_image_uri:
        if packages is None:
            raise LocalCloudError(
                f"worker pool {i} has a python_package_spec, but this runtime installs no packages"
            )
        key = (package.executor_image_uri, *package.package_uris)
        if key not in installed:
            python = commands.executor_python(package.executor_image_uri)
            installed[key] = packages.interpreter(python, list(package.package_uris))
        argv = (installed[key], "-m", package.python_module, *package.args)
        return package.executor_image_uri, argv, {item.name: item.value for item in package.env}
    container = pool.container_spec
    if not container.image_uri:
        raise LocalCloudError(
            f"worker pool {i} has neither container_spec.image_uri nor"
            " python_package_spec.executor_image_uri"
        )
    argv = tuple(commands.argv(container.image_uri, container.command, container.args))
    return container.image_uri, argv, {item.name: item.value for item in container.env}


def _output_env(spec: aiplatform_v1.CustomJobSpec) -> dict[str, str]:
    # As on Vertex: only a job with a base output directory gets these.
    base = spec.base_output_directory.output_uri_prefix.rstrip("/")
    if not base:
        return {}
    return {
        "AIP_MODEL_DIR": f"{base}/model/",
        "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/",
    }


def _cluster_env(cluster: dict[str, list[str]], pool: int, index: int) -> dict[str, str]:
    cluster_spec = {
        "cluster": cluster,
        "environment": "cloud",
        "task": {"type": f"workerpool{pool}", "index": index},
    }
    tf_cluster = {_TF_TYPES[int(name[10:])]: hosts for name, hosts in cluster.items()}
    tf_config = {
        "cluster": tf_cluster,
        "environment": "cloud",
        "task": {"type": _TF_TYPES[pool], "index": index},
    }
    return {"CLUSTER_SPEC": json.dumps(cluster_spec), "TF_CONFIG": json.dumps(tf_config)}


def _timeout_seconds(spec: aiplatform_v1.CustomJobSpec) -> float | None:
    if "scheduling" not in spec or "timeout" not in spec.scheduling:
        return None
    timeout = spec.scheduling.timeout
    # proto-plus hands out a timedelta; the declared type is the protobuf Duration.
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    else:
        seconds = timeout.seconds + timeout.nanos / 1e9
    return seconds if seconds > 0 else None


def _split_devices(granted: Sequence[str], wanted: Sequence[int]) -> list[str]:
    """CUDA_VISIBLE_DEVICES per replica: disjoint slices when there are enough GPUs,
    otherwise the replicas share them round-robin."""
    values, position = [], 0
    for count in wanted:
        take = min(count, len(granted))
        devices = [granted[(position + k) % len(granted)] for k in range(take)] if take else []
        position += take
        values.append(",".join(devices))
    return values


# ---------------------------------------------------------------------------- GPUs


class _GpuPool:
    """The machine's GPUs, handed out first come, first served."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        self._free = list(devices)
        self._queue: list[str] = []
        self._cond = threading.Condition()

    def acquire(self, job_id: str, count: int, stop: threading.Event) -> list[str] | None:
        """Wait until `count` GPUs are free and every earlier job has had its turn;
        None when `stop` is set while waiting."""
        with self._cond:
            self._queue.append(job_id)
            try:
                while not stop.is_set() and not (
                    self._queue[0] == job_id and len(self._free) >= count
                ):
                    self._cond.wait()
                if stop.is_set():
                    return None
                granted, self._free = self._free[:count], self._free[count:]
                return granted
            finally:
                self._queue.remove(job_id)
                self._cond.notify_all()

    def release(self, granted: Sequence[str]) -> None:
        with self._cond:
            self._free = [d for d in self.devices if d in self._free or d in granted]
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def queued(self) -> list[str]:
        with self._cond:
            return list(self._queue)


# ---------------------------------------------------------------------------- jobs


class _JobLog:
    """A job's replica lines and runtime warnings: LogEntries plus a plain file."""

    def __init__(self, project: str, job_id: str, logs: LogStore, path: Path) -> None:
        self._project, self._job_id, self._logs = project, job_id, logs
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(
        self, task_name: str, severity: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        entry = job_log_entry(
            project=self._project,
            job_id=self._job_id,
            task_name=task_name,
            message=message,
            severity=severity,
        )
        entry["jsonPayload"] = {**(fields or {}), **entry["jsonPayload"]}
        self._logs.append(entry)
        with self._lock:
            if not self._file.closed:
                self._file.write(f"{entry['timestamp']} {task_name} {severity} {message}\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _Replica:
    """A started replica, remembering the stderr lines that explain a failure."""

    def __init__(self, plan: ReplicaPlan, process: subprocess.Popen[bytes], log: _JobLog) -> None:
        self.plan, self.process, self._log = plan, process, log
        self.last_error: str | None = None
        self.last_stderr: str | None = None
        self.pump = _OutputPump(process, self._on_line, name=f"replica-{plan.task_name}")

    def _on_line(self, line: str, from_stderr: bool) -> None:
        if from_stderr:
            self.last_stderr = line.strip()
            if _ERROR_LINE.match(self.last_stderr):
                self.last_error = self.last_stderr
        severity, message, fields = classify_line(line, from_stderr=from_stderr)
        self._log.write(self.plan.task_name, severity, message, fields)

    def failure_message(self) -> str:
        code = self.process.returncode
        if code < 0:
            ending = f"replica {self.plan.task_name} was killed by {signal.Signals(-code).name}"
        else:
            ending = f"replica {self.plan.task_name} exited with code {code}"
        return self.last_error or self.last_stderr or ending


@dataclass(eq=False)
class _Job:
    job_id: str
    spec: aiplatform_v1.CustomJobSpec
    on_update: Callable[[JobUpdate], None]
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class LocalJobRuntime:
    """Runs CustomJobs as local processes; see the module docstring."""

    def __init__(
        self,
        project: str,
        logs: LogStore,
        state_dir: Path,
        commands: ImageCommands,
        env: Mapping[str, str],
        gpus: list[str] | None = None,
        *,
        stop_grace: float = 5.0,
        children: ChildRecords | None = None,
        packages: PackageInstaller | None = None,
    ) -> None:
        self._project, self._logs, self._state_dir = project, logs, state_dir
        self._commands, self._env, self._stop_grace = commands, dict(env), stop_grace
        # python_package_spec environments, cached across jobs (and restarts).
        self._packages = packages or PackageInstaller(
            Path(state_dir) / "packages", {**os.environ, **self._env}
        )
        self._children = children
        self._gpus = _GpuPool(detect_gpus() if gpus is None else gpus)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        # Held while reporting, so that after close() returns no update is delivered.
        self._report_lock = threading.RLock()
        self._closed = False

    @property
    def gpus(self) -> list[str]:
        return list(self._gpus.devices)

    def queued(self) -> list[str]:
        """Ids of the jobs waiting for GPUs, first in line first."""
        return self._gpus.queued()

    def submit(
        self, job_id: str, job: aiplatform_v1.CustomJob, on_update: Callable[[JobUpdate], None]
    ) -> None:
        # A copy: the caller goes on updating its resource while the job runs.
        record = _Job(job_id, aiplatform_v1.CustomJobSpec(job.job_spec), on_update)
        with self._lock:
            if self._closed:
                raise LocalCloudError("the job runtime is closed: start localcloud again")
            if job_id in self._jobs:
                raise LocalCloudError(f"job {job_id} is already running: submit a new job id")
            self._jobs[job_id] = record
        record.thread = threading.Thread(
            target=self._supervise, args=(record,), name=f"job-{job_id}", daemon=True
        )
        record.thread.start()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.stop.set()
            self._gpus.wake()

    def close(self) -> None:
        with self._report_lock, self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        self._gpus.wake()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(self._stop_grace + 2 * _DRAIN_SECONDS)

    # -- one thread per job from here on

    def _supervise(self, job: _Job) -> None:
        try:
            outcome = self._run(job)
        except Exception as err:  # a runtime bug must end the job, not leave it RUNNING
            _log.exception("job %s: the local runtime failed", job.job_id)
            outcome = JobUpdate(FAILED, f"localcloud could not run it: {err}")
        finally:
            with self._lock:
                self._jobs.pop(job.job_id, None)
        self._report(job, outcome)

    def _report(self, job: _Job, update: JobUpdate) -> None:
        with self._report_lock:
            if self._closed:
                return
            try:
                job.on_update(update)
            except Exception:  # the listener's bug must not stop the job's supervision
                _log.exception("job %s: reporting %s failed", job.job_id, update.state.name)

    def _run(self, job: _Job) -> JobUpdate:
        try:
            plans = plan_replicas(job.job_id, job.spec, self._commands, self._packages)
        except LocalCloudError as err:
            return JobUpdate(FAILED, str(err))
        log_path = self._state_dir / "jobs" / job.job_id / "replicas.log"
        log = _JobLog(self._project, job.job_id, self._logs, log_path)
        try:
            granted = self._acquire_gpus(job, plans, log)
            if granted is None:
                return JobUpdate(CANCELLED)
            try:
                devices = _split_devices(granted, [p.accelerator_count for p in plans])
                return self._run_replicas(job, plans, devices, log)
            finally:
                self._gpus.release(granted)
        finally:
            log.close()

    def _acquire_gpus(
        self, job: _Job, plans: Sequence[ReplicaPlan], log: _JobLog
    ) -> list[str] | None:
        """The GPUs the job gets ([] for none); None when it was stopped while queued."""
        wanted = sum(p.accelerator_count for p in plans)
        if wanted == 0:
            return []
        asking = next(p for p in plans if p.accelerator_count)
        ask = f"{asking.accelerator_count} x {asking.accelerator_type}"
        if not self._gpus.devices:
            log.write(
                "workerpool0-0",
                "WARNING",
                f"no GPU on this machine: running on CPU instead of {ask}",
            )
            return []
        if wanted > len(self._gpus.devices):
            log.write(
                "workerpool0-0",
                "WARNING",
                f"the job asks for {wanted} GPUs in all ({ask} per replica) but this machine"
                f" has {len(self._gpus.devices)}: its replicas share them",
            )
        return self._gpus.acquire(job.job_id, min(wanted, len(self._gpus.devices)), job.stop)

    def _run_replicas(
        self, job: _Job, plans: Sequence[ReplicaPlan], devices: Sequence[str], log: _JobLog
    ) -> JobUpdate:
        replicas: list[_Replica] = []
        try:
            for plan, cuda in zip(plans, devices, strict=True):
                process = _spawn(plan.argv, self._process_env(plan, cuda))
                if self._children is not None:
                    self._children.add(process, f"job {job.job_id} replica {plan.task_name}")
                replicas.append(_Replica(plan, process, log))
        except OSError as err:
            self._finish(replicas)
            return JobUpdate(
                FAILED,
                f"cannot start replica {plan.task_name} ({' '.join(plan.argv)}): {err}:"
                f" check the local command for image '{plan.image_uri}'",
            )
        if job.stop.is_set():  # cancelled or closed while starting
            self._finish(replicas)
            return JobUpdate(CANCELLED)
        self._report(job, JobUpdate(RUNNING))
        try:
            verdict = self._watch(job, replicas, _timeout_seconds(job.spec))
        finally:
            self._finish(replicas)
        if isinstance(verdict, _Replica):
            return JobUpdate(FAILED, verdict.failure_message())
        return verdict

    def _process_env(self, plan: ReplicaPlan, cuda: str) -> dict[str, str]:
        return {
            **_inherited_env(),
            **plan.container_env,
            **self._env,
            **plan.platform_env,
            "CUDA_VISIBLE_DEVICES": cuda,
            "PYTHONUNBUFFERED": "1",
        }

    def _watch(
        self, job: _Job, replicas: Sequence[_Replica], timeout: float | None
    ) -> JobUpdate | _Replica:
        """Wait for the outcome: an update, or the replica that failed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [r.process.poll() for r in replicas]
            for replica, code in zip(replicas, codes, strict=True):
                if code not in (None, 0):
                    return replica
            if all(code == 0 for code in codes):
                return JobUpdate(SUCCEEDED)
            if job.stop.is_set():
                return JobUpdate(CANCELLED)
            if deadline is not None and time.monotonic() >= deadline:
                message = f"job exceeded its timeout of {timeout:g}s"
                return JobUpdate(FAILED, message)
            job.stop.wait(_POLL_SECONDS)

    def _finish(self, replicas: Sequence[_Replica]) -> None:
        """Stop what still runs (the others of a failed job, leftovers of a finished one)
        and read the last lines everyone printed."""
        _stop_groups([r.process for r in replicas], self._stop_grace)
        for replica in replicas:
            replica.pump.join()
            if self._children is not None:
                self._children.remove(replica.process)


# ---------------------------------------------------------------------------- models


def _answers_ok(url: str) -> bool:
    # No proxy: the server is on this machine, whatever the environment's proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


@dataclass(eq=False)
class _ModelServer:
    server: DeployedServer
    process: subprocess.Popen[bytes]
    pump: _OutputPump
    tail: collections.deque[str]
    argv: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    image_uri: str = ""


def _piece_name(deployed_model_id: str) -> str:
    return f"the model server of deployed model {deployed_model_id}"


class LocalModelRuntime:
    """Serves deployed models with their serving command on free local ports. A serving
    process that dies is started again on its port (the endpoint keeps routing there), with
    the supervisor's backoff and crash-loop cap; `report` hears of each restart."""

    def __init__(
        self,
        logs: LogStore | None,
        commands: ImageCommands,
        env: Mapping[str, str],
        startup_timeout: float = 60,
        *,
        project: str = "localcloud",
        stop_grace: float = 5.0,
        children: ChildRecords | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self._logs, self._commands, self._env = logs, commands, dict(env)
        self._startup_timeout, self._project, self._stop_grace = (
            startup_timeout,
            project,
            stop_grace,
        )
        self._children = children
        self._servers: dict[str, _ModelServer] = {}
        self._lock = threading.Lock()
        self._supervisor = Supervisor(report).start()

    def deploy(self, deployed_model_id: str, model: aiplatform_v1.Model) -> DeployedServer:
        spec = model.container_spec
        if not spec.image_uri:
            raise LocalCloudError(
                f"model {model.name or model.display_name!r} has no container_spec.image_uri:"
                " upload it with a serving container"
            )
        with self._lock:
            if deployed_model_id in self._servers:
                raise LocalCloudError(f"deployed model {deployed_model_id} is already serving")
        argv = self._commands.argv(spec.image_uri, spec.command, spec.args)
        port = free_port(_HOST)
        server = DeployedServer(
            url=f"http://{_HOST}:{port}",
            predict_route=spec.predict_route or "/predict",
            health_route=spec.health_route or "/health",
        )
        env = {
            **_inherited_env(),
            **{item.name: item.value for item in spec.env},
            **self._env,
            "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": server.health_route,
            "AIP_PREDICT_ROUTE": server.predict_route,
            "AIP_STORAGE_URI": model.artifact_uri,
            "AIP_DEPLOYED_MODEL_ID": deployed_model_id,
            "AIP_MODE": "PREDICTION",
            "AIP_MODE_VERSION": "1.0.0",
            "PYTHONUNBUFFERED": "1",
        }
        running = self._start(deployed_model_id, server, argv, env, spec.image_uri)
        with self._lock:
            self._servers[deployed_model_id] = running
        self._supervisor.watch(
            _piece_name(deployed_model_id),
            alive=lambda: self._alive(deployed_model_id),
            restart=lambda: self._restart(deployed_model_id),
        )
        return server

    def _alive(self, deployed_model_id: str) -> bool:
        with self._lock:
            running = self._servers.get(deployed_model_id)
        return running is None or running.process.poll() is None

    def _start(
        self,
        deployed_model_id: str,
        server: DeployedServer,
        argv: Sequence[str],
        env: Mapping[str, str],
        image_uri: str,
    ) -> _ModelServer:
        try:
            process = _spawn(argv, env)
        except OSError as err:
            raise LocalCloudError(
                f"cannot start the serving command {' '.join(argv)}: {err}:"
                f" check the local command for image '{image_uri}'"
            ) from err
        if self._children is not None:
            self._children.add(process, f"model server {deployed_model_id}")
        running = self._watch_output(deployed_model_id, server, process)
        running.argv, running.env, running.image_uri = argv, env, image_uri
        self._wait_healthy(deployed_model_id, image_uri, running)
        return running

    def _restart(self, deployed_model_id: str) -> None:
        """The same command, environment and port as before: the endpoint routes there."""
        with self._lock:
            old = self._servers.get(deployed_model_id)
        if old is None:
            return
        self._stop(old)  # what is left of its process group, and its last output lines
        port = int(old.server.url.rsplit(":", 1)[1])
        wait_until(
            lambda: not port_is_open(_HOST, port),
            what=f"the release of port {port} by deployed model {deployed_model_id}",
            timeout=30,
        )
        fresh = self._start(deployed_model_id, old.server, old.argv, old.env, old.image_uri)
        with self._lock:
            self._servers[deployed_model_id] = fresh

    def _stop(self, running: _ModelServer) -> None:
        _stop_groups([running.process], self._stop_grace)
        running.pump.join()
        if self._children is not None:
            self._children.remove(running.process)

    def _watch_output(
        self, deployed_model_id: str, server: DeployedServer, process: subprocess.Popen[bytes]
    ) -> _ModelServer:
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

        def on_line(line: str, from_stderr: bool) -> None:
            tail.append(line)
            if self._logs is not None:
                severity, message, fields = classify_line(line, from_stderr=from_stderr)
                self._logs.append(self._entry(deployed_model_id, severity, message, fields))

        pump = _OutputPump(process, on_line, name=f"model-{deployed_model_id}")
        return _ModelServer(server=server, process=process, pump=pump, tail=tail)

    def _wait_healthy(self, deployed_model_id: str, image_uri: str, running: _ModelServer) -> None:
        health_url = running.server.url + running.server.health_route
        try:
            wait_until(
                lambda: _answers_ok(health_url),
                what=f"the serving container of deployed model {deployed_model_id} ({image_uri})",
                timeout=self._startup_timeout,
                process=running.process,
            )
        except LocalCloudError as err:
            self._stop(running)
            output = "\n  ".join(running.tail) or "(nothing)"
            raise LocalCloudError(
                f"{err}: it must answer 200 on GET {running.server.health_route} at"
                f" AIP_HTTP_PORT; its last output:\n  {output}"
            ) from err

    def _entry(
        self, deployed_model_id: str, severity: str, message: str, fields: Mapping[str, Any]
    ) -> LogEntry:
        # Shaped like Vertex's prediction container logs.
        log_id = "aiplatform.googleapis.com%2Fprediction_container"
        labels = {"resource_container": self._project, "deployed_model_id": deployed_model_id}
        return {
            "insertId": uuid.uuid4().hex[:16],
            "logName": f"projects/{self._project}/logs/{log_id}",
            "resource": {"type": "aiplatform.googleapis.com/Endpoint", "labels": labels},
            "severity": severity,
            "timestamp": now_rfc3339(),
            "receiveTimestamp": now_rfc3339(),
            "jsonPayload": {**fields, "message": message},
        }

    def undeploy(self, deployed_model_id: str) -> None:
        # First, so that no restart is in progress or begins once the server is stopped.
        self._supervisor.forget(_piece_name(deployed_model_id))
        with self._lock:
            running = self._servers.pop(deployed_model_id, None)
        if running is not None:
            self._stop(running)

    def close(self) -> None:
        self._supervisor.stop()
        with self._lock:
            running = list(self._servers.values())
            self._servers.clear()
        _stop_groups([r.process for r in running], self._stop_grace)
        for server in running:
            server.pump.join()
            if self._children is not None:
                self._children.remove(server.process)
