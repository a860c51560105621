"""Trigger benchmarks: cold start, warm per-event time and the 2,000-object burst.

Every figure is set against a baseline measured in the same run:
* cold start — a new functions-framework process serving `functions/main.py:trigger`
  until its first *recorded* event is answered, and until its first *submitted* job over
  gRPC (production's transport) and over REST, against
  `python -c "from google.cloud import aiplatform"` (the high-level SDK's import);
* warm per-event — the HTTP delivery of one event to the warm function against the bare
  I/O the step must do, issued directly with the same clients (one conditional GCS create;
  plus one CreateCustomJob for a submit), with Vertex AI over gRPC and over REST;
* burst — events/s for 2,000 objects through the HTTP function, and the GCS requests the
  function made per recorded event (counted by a proxy in front of fake-gcs-server).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1, storage

from localcloud.functions import FunctionServer
from localcloud.storage import StorageServer
from tests.contract.conftest import PROJECT, TRANSPORTS, Cloud

ROUNDS = 5
WARM_EVENTS = 200
BURST = 2000
_ids = itertools.count()


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        cold = _cold_start(gcs, Path(tmp))
        warm = _warm(gcs, Path(tmp))
        burst = _burst(gcs, Path(tmp))
    return "\n".join([cold, warm, burst])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# cold start ------------------------------------------------------------------------------
def _sdk_import_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from google.cloud import aiplatform"], check=True)
    return time.perf_counter() - started


def _peak_rss_mib(pid: int) -> float:
    """Largest peak RSS (VmHWM) among the server process and its workers."""
    peaks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            stat = (proc / "stat").read_text().split()
        except OSError:
            continue
        if int(proc.name) == pid or int(stat[3]) == pid:
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks) if peaks else float("nan")


def _cold_once(
    cloud: Cloud, delivery: tuple[dict[str, str], Any], log: Path
) -> tuple[float, float]:
    """Seconds from process start to the delivery answered 2xx, and the peak RSS."""
    env = dict(cloud.function.env)
    server = FunctionServer("trigger", env=env, log_path=log)
    server.port = 0
    started = time.perf_counter()
    process = _spawn(server)
    url = server.url
    while True:
        try:
            response = requests.post(
                url, headers=delivery[0], data=json.dumps(delivery[1]), timeout=30
            )
            if response.status_code < 300:
                break
        except requests.ConnectionError:
            time.sleep(0.005)
    elapsed = time.perf_counter() - started
    rss = _peak_rss_mib(process.pid)
    server._process = process
    server.stop()
    return elapsed, rss


def _spawn(server: FunctionServer) -> subprocess.Popen[bytes]:
    from localcloud.procs import free_port

    server.port = free_port()
    env = {**os.environ, **server.env, "PYTHONPATH": str(server.source.parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "trigger", "--source",
         str(server.source), "--signature-type", "cloudevent", "--host", "127.0.0.1",
         "--port", str(server.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip


def _cold_start(gcs: StorageServer, tmp: Path) -> str:
    clouds = {t: Cloud(gcs, tmp / f"cold-{t}", faults=False, transport=t) for t in TRANSPORTS}
    try:
        sdk, recorded, rss = [], [], []
        submitted: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
        for _ in range(ROUNDS):
            sdk.append(_sdk_import_s())
            n = next(_ids)
            cloud = clouds["grpc"]
            seconds, peak = _cold_once(cloud, cloud.finalize(f"clicks/cold-{n}.csv"), tmp / "c.log")
            recorded.append(seconds)
            rss.append(peak)
            for transport, cloud in clouds.items():
                seconds, _ = _cold_once(
                    cloud, cloud.message({"pipeline": "events"}, f"cold-{n}"), tmp / "c.log"
                )
                submitted[transport].append(seconds)
    finally:
        for cloud in clouds.values():
            cloud.stop()
    base = _median(sdk)

    def row(name: str, values: list[float], target: str) -> str:
        return f"| {name} | {_median(values):.2f} | **{_median(values) / base:.2f}x** | {target} |"

    return (
        "## Trigger: cold start\n\n"
        f'Median of {ROUNDS} fresh processes. Baseline: `python -c "from google.cloud import aiplatform"` '
        "(the high-level SDK's import alone), timed in the same run. The function path is process "
        "start → functions-framework serving → first delivery answered 2xx. A submit reaches "
        "Vertex AI over gRPC (VERTEX_EMULATOR_HOST, production's transport) or REST "
        "(an http:// VERTEX_API_ENDPOINT).\n\n"
        "| path | seconds | ratio to SDK import | target |\n|---|---:|---:|---|\n"
        f"| SDK import (baseline) | {base:.2f} | 1.00x | |\n"
        f"{row('first recorded event', recorded, '≤ 0.35x')}\n"
        f"{row('first submitted job, gRPC', submitted['grpc'], '≤ 0.8x')}\n"
        f"{row('first submitted job, REST', submitted['rest'], '≤ 0.8x')}\n\n"
        f"Peak RSS of the function's processes after the first recorded event: "
        f"**{_median(rss):.0f} MiB** (target ≤ 120 MiB).\n"
    )


# warm ------------------------------------------------------------------------------------
def _warm(gcs: StorageServer, tmp: Path) -> str:
    samples = {t: _warm_samples(gcs, tmp / f"warm-{t}", t) for t in TRANSPORTS}
    grpc_, rest = samples["grpc"], samples["rest"]

    def row(name: str, fn: list[float], bare: list[float]) -> str:
        return (
            f"| {name} | {_median(fn) * 1000:.1f} | {_p(fn, 0.99) * 1000:.1f} | "
            f"{_median(bare) * 1000:.1f} | {_p(bare, 0.99) * 1000:.1f} | **{_median(fn) / _median(bare):.2f}x** |"
        )

    rec_fn, rec_bare, floor = grpc_["rec_fn"], grpc_["rec_bare"], grpc_["floor"]
    n_grpc, n_rest = len(grpc_["sub_fn"]), len(rest["sub_fn"])
    return (
        "## Trigger: warm per-event time\n\n"
        "One delivery at a time to the warm function over HTTP, against the bare I/O the step "
        "must do issued directly with the same clients (record: one conditional GCS create; "
        "submit: that plus one CreateCustomJob on the same transport). Milliseconds; target: "
        "median ≤ 1.3x.\n\n"
        "| path | function p50 | function p99 | bare p50 | bare p99 | ratio (p50) |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        f"{row(f'record ({len(rec_fn)} events)', rec_fn, rec_bare)}\n"
        f"{row(f'submit over gRPC ({n_grpc} requests)', grpc_['sub_fn'], grpc_['sub_bare'])}\n"
        f"{row(f'submit over REST ({n_rest} requests)', rest['sub_fn'], rest['sub_bare'])}\n\n"
        f"Warm submit p50, gRPC vs REST: **{_median(grpc_['sub_fn']) / _median(rest['sub_fn']):.2f}x** "
        f"({_median(grpc_['sub_fn']) * 1000:.1f} vs {_median(rest['sub_fn']) * 1000:.1f} ms).\n\n"
        f"Floor: functions-framework delivering the same CloudEvent to a function that does "
        f"nothing takes {_median(floor) * 1000:.1f} ms (p50) here; the record path is "
        f"**{(_median(rec_fn) - _median(floor)) / _median(rec_bare):.2f}x** the bare create once "
        "that floor is taken off. The submit path does more than the bare baseline's one GCS write and one "
        "CreateCustomJob: it claims the run and a concurrency slot, writes the input "
        "manifest, asks the registry for the champion and records the job.\n"
    )


def _warm_samples(gcs: StorageServer, tmp: Path, transport: str) -> dict[str, list[float]]:
    cloud = Cloud(gcs, tmp, faults=False, transport=transport)
    try:
        session = requests.Session()

        def post(delivery: tuple[dict[str, str], Any]) -> float:
            started = time.perf_counter()
            response = session.post(
                cloud.function.url, headers=delivery[0], data=json.dumps(delivery[1]), timeout=30
            )
            assert response.status_code < 300, response.status_code
            return time.perf_counter() - started

        for i in range(20):  # warm up both paths
            post(cloud.finalize(f"clicks/warmup-{i}.csv"))
        post(cloud.message({"pipeline": "events"}, "warmup-submit"))
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": gcs.url})  # fmt: skip
        bucket = client.bucket(cloud.state)
        jobs = cloud.jobs_client  # the function's transport
        parent = f"projects/{PROJECT}/locations/us-central1"
        job = aiplatform_v1.CustomJob(
            display_name="bare",
            job_spec={"worker_pool_specs": [{"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
                                             "container_spec": {"image_uri": "trainer:latest"}}]},
        )  # fmt: skip

        def bare_create(i: int) -> float:
            started = time.perf_counter()
            bucket.blob(f"bare/{i}").upload_from_string(b"{}", if_generation_match=0)
            return time.perf_counter() - started

        def bare_submit(i: int) -> float:
            started = time.perf_counter()
            bucket.blob(f"bare-submit/{i}").upload_from_string(b"{}", if_generation_match=0)
            jobs.create_custom_job(parent=parent, custom_job=job)
            return time.perf_counter() - started

        # The floor any function pays: functions-framework delivering a CloudEvent to a
        # function that does nothing, served the same way.
        noop_source = tmp / "noop_main.py"
        noop_source.write_text(
            "import functions_framework\n\n\n"
            "@functions_framework.cloud_event\ndef noop(cloud_event):\n    return None\n"
        )
        noop = FunctionServer("noop", env={}, log_path=tmp / "noop.log", source=noop_source).start()
        noop_url = noop.url

        def post_noop(delivery: tuple[dict[str, str], Any]) -> float:
            started = time.perf_counter()
            session.post(noop_url, headers=delivery[0], data=json.dumps(delivery[1]), timeout=30)
            return time.perf_counter() - started

        for i in range(20):
            post_noop(cloud.finalize(f"clicks/noop-warmup-{i}.csv"))
        rec_fn, rec_bare, sub_fn, sub_bare, floor = [], [], [], [], []
        for i in range(WARM_EVENTS):
            rec_fn.append(post(cloud.finalize(f"clicks/warm-{i}.csv")))
            rec_bare.append(bare_create(i))
            floor.append(post_noop(cloud.finalize(f"clicks/noop-{i}.csv")))
        for i in range(WARM_EVENTS // 4):
            sub_fn.append(post(cloud.message({"pipeline": "events"}, f"warm-submit-{i}")))
            sub_bare.append(bare_submit(i))
        noop.stop()
    finally:
        cloud.stop()
    return {"rec_fn": rec_fn, "rec_bare": rec_bare, "sub_fn": sub_fn, "sub_bare": sub_bare,
            "floor": floor}  # fmt: skip


# burst -----------------------------------------------------------------------------------
def _burst(gcs: StorageServer, tmp: Path) -> str:
    cloud = Cloud(gcs, tmp / "burst")
    try:
        deliveries = [cloud.finalize(f"clicks/burst/part-{i:04d}.csv") for i in range(BURST)]
        before = cloud.gcs_faults.requests
        started = time.perf_counter()
        statuses = cloud.deliver_concurrently(deliveries, workers=16)
        seconds = time.perf_counter() - started
        requests_made = cloud.gcs_faults.requests - before
        assert all(s < 300 for s in statuses)
    finally:
        cloud.stop()
    return (
        "## Trigger: 2,000-object burst\n\n"
        f"{BURST} storage finalize events for one `quiet` pipeline posted by 16 concurrent "
        "clients to the function (functions-framework, default gunicorn threads).\n\n"
        "| measure | value | target |\n|---|---:|---|\n"
        f"| events/s through the HTTP function | {BURST / seconds:.0f} | |\n"
        f"| GCS requests per recorded event | **{requests_made / BURST:.2f}** | ≤ 2 |\n"
    )
