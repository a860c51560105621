"""Scale: bursts of N objects in each trigger mode, 50 pipelines at once, a quiet batch of
many pending objects, and 6 batches into pipelines capped at 1 concurrent job.

Reported against N, so that growth shows: events/s through the HTTP trigger function,
GCS requests the function made per event (counted by a proxy in front of
fake-gcs-server), the time of the flush that turns the batch into one job, and the
function's peak memory. Every batch must end exactly once: one job per batch, one run
record per job, nothing left pending.

`make bench` runs the short form (`run`); `make reliability` the long one (`run_long`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud.storage import StorageServer
from tests.bench.bench_trigger import _peak_rss_mib
from tests.contract.conftest import PROJECT, Cloud

WORKERS = 16


@dataclass(frozen=True)
class Burst:
    mode: str
    n: int
    seconds: float
    gcs_requests: int
    flush_s: float  # the delivery that turned the batch into a job (0 for `each`)
    jobs: int
    expected_jobs: int
    pending_left: int
    peak_mib: float

    @property
    def per_s(self) -> float:
        return self.n / self.seconds

    @property
    def per_event(self) -> float:
        return self.gcs_requests / self.n

    @property
    def exact(self) -> bool:
        return self.jobs == self.expected_jobs and self.pending_left == 0


def _post_all(cloud: Cloud, deliveries: list[tuple[dict[str, str], Any]]) -> float:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=WORKERS)
    session.mount("http://", adapter)

    def post(delivery: tuple[dict[str, str], Any]) -> int:
        for _ in range(20):
            reply = session.post(
                cloud.function.url, headers=delivery[0], data=json.dumps(delivery[1]), timeout=600
            )
            if reply.status_code < 300:
                return reply.status_code
        return reply.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(post, deliveries))
    seconds = time.perf_counter() - started
    assert all(s < 300 for s in statuses), sorted(set(statuses))
    return seconds


def _timed(call: Callable[[], int]) -> float:
    started = time.perf_counter()
    assert call() < 300
    return time.perf_counter() - started


def burst(gcs: StorageServer, tmp: Path, mode: str, n: int) -> Burst:
    """`n` storage events for one pipeline of `mode` (`each`: `events/`; `marker`: `churn/`
    parts then the marker; `quiet`: `clicks/` then ticks once quiet)."""
    cloud = Cloud(gcs, tmp, quiet_seconds=1)
    try:
        prefix = {"each": "events", "marker": "churn", "quiet": "clicks"}[mode]
        deliveries = [cloud.finalize(f"{prefix}/burst/part-{i:06d}.csv") for i in range(n)]
        before = cloud.gcs_faults.requests
        seconds = _post_all(cloud, deliveries)
        flush_s = 0.0
        if mode == "marker":
            marker = cloud.finalize(f"{prefix}/burst/_SUCCESS", size=0)
            flush_s = _timed(lambda: cloud.post(*marker))
        elif mode == "quiet":
            time.sleep(1.1)  # quiet_seconds = 1: then one tick flushes the batch
            flush_s = _timed(lambda: cloud.post(*cloud.tick(f"flush-{n}")))
        requests_made = cloud.gcs_faults.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = len(cloud.jobs())
        # `each`: one run per object, at most max_concurrent_jobs submitted at once.
        expected = min(n, 50) if mode == "each" else 1
        runs = len(cloud.state_objects(f"runs/{prefix}/"))
        assert mode != "each" or runs == n, f"{runs} runs for {n} objects"
        pending = len(cloud.state_objects(f"pending/{prefix}/"))
    finally:
        cloud.stop()
    return Burst(mode, n, seconds, requests_made, flush_s, jobs, expected, pending, peak)


def quiet_batch(gcs: StorageServer, tmp: Path, n: int) -> Burst:
    """A quiet batch of `n` pending objects recorded beforehand (written straight into the
    state bucket, as the function writes them), then flushed by one tick: how the flush
    grows with the batch."""
    cloud = Cloud(gcs, tmp, quiet_seconds=1)
    try:
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": gcs.url})  # fmt: skip
        bucket = client.bucket(cloud.state)

        def record(i: int) -> None:
            key = f"clicks/big/part-{i:06d}.csv@1"
            doc = {"object": key, "event_id": f"{key}", "recorded_at": "2026-12-01T00:00:00Z"}
            bucket.blob(f"state/pending/clicks/{key}").upload_from_string(
                json.dumps(doc), content_type="application/json", if_generation_match=0
            )

        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(record, range(n)))
        seconds = time.perf_counter() - started
        time.sleep(1.1)
        before = cloud.gcs_faults.requests
        flush_s = _timed(lambda: cloud.post(*cloud.tick(f"flush-{n}")))
        requests_made = cloud.gcs_faults.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = len(cloud.jobs())
        record_doc = cloud.run_record("clicks") if jobs else {}
        assert len(record_doc.get("objects") or ()) == n
        pending = len(cloud.state_objects("pending/clicks/"))
    finally:
        cloud.stop()
    return Burst("quiet (recorded beforehand)", n, seconds, requests_made, flush_s, jobs, 1,
                 pending, peak)  # fmt: skip


def many_pipelines(gcs: StorageServer, tmp: Path, pipelines: int, objects: int) -> Burst:
    """`pipelines` marker pipelines at once: `objects` parts each, then all markers."""
    extra = "".join(
        f'\n[pipelines.p{i:02d}]\nbucket = "{{landing}}"\nprefix = "p{i:02d}/"\n'
        f'include = ["*.csv"]\ntrigger = "marker"\n\n[pipelines.p{i:02d}.training]\n'
        f'image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"\n'
        f'machine_type = "n1-standard-8"\n'
        for i in range(pipelines)
    )
    cloud = Cloud(gcs, tmp, quiet_seconds=1)
    # The function reads its config on its first delivery: the pipelines join it before.
    cloud.config_path.write_text(
        cloud.config_path.read_text() + extra.replace("{landing}", cloud.landing)
    )
    try:
        parts = [
            cloud.finalize(f"p{i:02d}/b/part-{j:04d}.csv")
            for j in range(objects)
            for i in range(pipelines)
        ]
        markers = [cloud.finalize(f"p{i:02d}/b/_SUCCESS", size=0) for i in range(pipelines)]
        before = cloud.gcs_faults.requests
        seconds = _post_all(cloud, parts)
        flush_s = _post_all(cloud, markers + markers)  # every marker twice, all at once
        requests_made = cloud.gcs_faults.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = cloud.jobs()
        assert len({j.labels["retrain-run"] for j in jobs}) == len(jobs)
        pending = len(cloud.state_objects("pending/"))
    finally:
        cloud.stop()
    n = len(parts) + 2 * len(markers)
    return Burst(f"{pipelines} marker pipelines", n, seconds + flush_s, requests_made, flush_s,
                 len(jobs), pipelines, pending, peak)  # fmt: skip


def _table(rows: list[Burst]) -> str:
    lines = [
        "| burst | N | events/s | GCS requests / event | flush s | peak MiB | jobs | exactly once |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.n:,} | {r.per_s:,.0f} | {r.per_event:.2f} | {r.flush_s:.2f} | "
            f"{r.peak_mib:.0f} | {r.jobs}/{r.expected_jobs} | {'yes' if r.exact else '**no**'} |"
        )
    return "\n".join(lines)


def _growth(rows: list[Burst]) -> str:
    """How each figure grows from the smallest to the largest N of a mode."""
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        mine = sorted((r for r in rows if r.mode == mode), key=lambda r: r.n)
        if len(mine) < 2:
            continue
        a, b = mine[0], mine[-1]
        k = b.n / a.n
        flush = f"flush x{b.flush_s / a.flush_s:.1f}" if a.flush_s > 0 else "no flush"
        out.append(
            f"- `{mode}`, N x{k:.0f}: events/s x{b.per_s / a.per_s:.2f}, GCS requests per "
            f"event x{b.per_event / a.per_event:.2f}, {flush}, peak memory "
            f"x{b.peak_mib / a.peak_mib:.2f}"
        )
    return "\n".join(out)


def measure(
    sizes: Mapping[str, tuple[int, ...]], quiet_sizes: tuple[int, ...], pipelines: int
) -> str:
    rows: list[Burst] = []
    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        for mode, ns in sizes.items():
            for n in ns:
                print(f"   scale: {mode} burst of {n}", flush=True)
                rows.append(burst(gcs, Path(tmp) / f"{mode}-{n}", mode, n))
        for n in quiet_sizes:
            print(f"   scale: quiet batch of {n} pending objects", flush=True)
            rows.append(quiet_batch(gcs, Path(tmp) / f"quiet-{n}", n))
        print(f"   scale: {pipelines} pipelines at once", flush=True)
        rows.append(many_pipelines(gcs, Path(tmp) / "many", pipelines, 10))
    return (
        f"{_table(rows)}\n\nGrowth from the smallest to the largest N:\n\n{_growth(rows)}\n\n"
        "`each`: one run per object, at most `max_concurrent_jobs` (50) submitted at once — "
        "the others wait for a tick (their run records are counted: one per object). "
        "`marker`/`quiet`: the batch is one job, submitted by the marker's delivery or by the "
        "first tick after the quiet period; *flush s* is that one delivery's time (listing and "
        "removing every pending record, writing the manifest and the run record, creating "
        "the job). Events are posted by "
        f"{WORKERS} concurrent clients to one function instance (functions-framework's "
        "default threads); peak memory is the function's processes' VmHWM.\n"
    )


def run() -> str:
    sizes = {"each": (200, 1000), "marker": (500, 2000), "quiet": (500, 2000)}
    return "## Scale: bursts per trigger mode\n\n" + measure(sizes, (), 50)


# The long form fits `make reliability`'s 30 minutes on a 2-core machine: N up to 4,000 per
# mode and a quiet batch of 10,000 (at the rates measured here, 20,000 objects per mode and a
# batch of 100,000 would take over an hour; the growth figures say what they would cost).
LONG_SIZES = {"each": (500, 2000), "marker": (1000, 4000), "quiet": (1000, 4000)}
LONG_QUIET_BATCH = (10_000,)


def run_long() -> str:
    return measure(LONG_SIZES, LONG_QUIET_BATCH, 50)
