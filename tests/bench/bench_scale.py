"""Scale: bursts of N objects in each trigger mode, 50 pipelines at once, a quiet batch of
many pending objects, and 6 batches into pipelines capped at 1 concurrent job.

Reported against N, so that growth shows: events/s through the HTTP trigger function,
GCS requests the function made per event (counted by localcloud's storage proxy in
front of fake-gcs-server), the time of the flush that turns the batch into one job, and the
function's peak memory. Every batch must end exactly once: one job per batch, one run
record per job, nothing left pending.

`make bench` runs the short form (`run`); `make reliability` the long one (`run_long`).
Objects the measured part needs in place beforehand are seeded (seed_gcs.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from localcloud.storage import StorageServer
from tests.bench.bench_trigger import _peak_rss_mib
from tests.bench.seed_gcs import Seeder
from tests.contract.conftest import Cloud

WORKERS = 16
CSV = b"x,y\n" + b"0.5,1\n" * 16  # a small data object; its events name its real generation


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
    covered: int  # objects the batches' run records and input manifests name, all of them
    expected_covered: int

    @property
    def per_s(self) -> float:
        """Events per second through the function (0: recorded beforehand, not posted)."""
        return self.n / self.seconds if self.seconds else 0.0

    @property
    def per_event(self) -> float:
        return self.gcs_requests / self.n

    @property
    def exact(self) -> bool:
        return (
            self.jobs == self.expected_jobs
            and self.pending_left == 0
            and self.covered == self.expected_covered
        )


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


def _flush(cloud: Cloud, delivery: tuple[dict[str, str], Any]) -> float:
    """Seconds of the one delivery that turns a batch into a job. Waited for as long as it
    takes (a flush of 100,000 objects outlasts Cloud.post's two minutes)."""
    started = time.perf_counter()
    reply = requests.post(
        cloud.function.url, headers=delivery[0], data=json.dumps(delivery[1]), timeout=3600
    )
    assert reply.status_code < 300, reply.status_code
    return time.perf_counter() - started


def _landing(cloud: Cloud, gcs: StorageServer, names: list[str]) -> list[int]:
    """The data objects the events announce, in the landing bucket; their generations."""
    seeder = Seeder(cloud.gcs_client, gcs.root, cloud.landing)
    return seeder.write((name, CSV, "text/csv") for name in names)


def _manifest_lines(cloud: Cloud, record: dict[str, Any]) -> int:
    """Objects the run's input manifest pins (what its job trains on)."""
    uri = str(record.get("data_manifest") or "")
    if not uri.startswith("gs://"):
        return 0
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    text = cloud.gcs_client.bucket(bucket).blob(name).download_as_text()
    return len([line for line in text.splitlines() if line.strip()])


def _one_batch(cloud: Cloud, pipeline: str) -> int:
    """Objects covered by the pipeline's one run: as many as both its record and its input
    manifest name (0 unless the pipeline has exactly one run)."""
    runs = cloud.state_objects(f"runs/{pipeline}/")
    if len(runs) != 1:
        return 0
    record = cloud.run_record(pipeline)
    named = len(set(record.get("objects") or ()))
    return min(named, _manifest_lines(cloud, record))


def burst(gcs: StorageServer, tmp: Path, mode: str, n: int) -> Burst:
    """`n` storage events for one pipeline of `mode` (`each`: `events/`; `marker`: `churn/`
    parts then the marker; `quiet`: `clicks/` then ticks once quiet). The objects exist in
    the landing bucket at the generations their events name, so input manifests are real."""
    cloud = Cloud(gcs, tmp, quiet_seconds=1, faults=False)
    try:
        prefix = {"each": "events", "marker": "churn", "quiet": "clicks"}[mode]
        names = [f"{prefix}/burst/part-{i:06d}.csv" for i in range(n)]
        generations = _landing(cloud, gcs, names)
        deliveries = [
            cloud.finalize(name, size=len(CSV), generation=g)
            for name, g in zip(names, generations, strict=True)
        ]
        seeder = Seeder(cloud.gcs_client, gcs.root, cloud.landing)  # its probe: not counted
        before = gcs.requests
        seconds = _post_all(cloud, deliveries)
        flush_s = 0.0
        if mode == "marker":
            (g,) = seeder.write([(f"{prefix}/burst/_SUCCESS", b"", "text/plain")])
            marker = cloud.finalize(f"{prefix}/burst/_SUCCESS", size=0, generation=g)
            flush_s = _flush(cloud, marker)
        elif mode == "quiet":
            time.sleep(1.1)  # quiet_seconds = 1: then one tick flushes the batch
            flush_s = _flush(cloud, cloud.tick(f"flush-{n}"))
        requests_made = gcs.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = cloud.jobs()
        distinct = len({j.labels["retrain-run"] for j in jobs})
        if mode == "each":
            # One run per object, at most max_concurrent_jobs (50) submitted at once: the
            # others wait for a tick. Covered: objects with a run record of their own.
            expected = min(n, 50)
            runs = cloud.state_objects(f"runs/{prefix}/")
            covered = len(runs) if distinct == len(jobs) else 0
        else:
            expected = 1
            covered = _one_batch(cloud, prefix)
        pending = len(cloud.state_objects(f"pending/{prefix}/"))
    finally:
        cloud.stop()
    # A marker batch's run names its marker object too (the manifest pins it, empty).
    whole = n + 1 if mode == "marker" else n
    return Burst(mode, n, seconds, requests_made, flush_s, len(jobs), expected, pending, peak,
                 covered, whole)  # fmt: skip


def quiet_batch(gcs: StorageServer, tmp: Path, n: int) -> Burst:
    """A quiet batch of `n` objects recorded beforehand, then flushed by one tick: how the
    flush grows with the batch. The data objects, their pending records and their `seen/`
    markers are put in place as the function leaves them after recording each object
    (see seed_gcs.py for how, and why not through the API); *events/s* is that seeding."""
    cloud = Cloud(gcs, tmp, quiet_seconds=1, faults=False)
    try:
        started = time.perf_counter()
        names = [f"clicks/big/part-{i:06d}.csv" for i in range(n)]
        generations = _landing(cloud, gcs, names)
        state = Seeder(cloud.gcs_client, gcs.root, cloud.state)

        def records(folder: str) -> Any:
            for name, generation in zip(names, generations, strict=True):
                key = f"{name}@{generation}"
                doc: dict[str, Any] = {"object": key, "event_id": f"{name}#{generation}",
                       "recorded_at": "2026-12-01T00:00:00Z"}  # fmt: skip
                if folder == "seen":
                    doc["pending_generation"] = 0  # not read by a flush
                yield f"state/{folder}/clicks/{key}", json.dumps(doc).encode(), "application/json"

        state.write(records("pending"))
        state.write(records("seen"))
        seconds = time.perf_counter() - started
        listed = len(cloud.state_objects("pending/clicks/"))
        assert listed == n, f"fake-gcs-server lists {listed} of {n} pending records"
        time.sleep(1.1)  # quiet_seconds = 1: then one tick flushes the batch
        before = gcs.requests
        flush_s = _flush(cloud, cloud.tick(f"flush-{n}"))
        requests_made = gcs.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = len(cloud.jobs())
        covered = _one_batch(cloud, "clicks")
        pending = len(cloud.state_objects("pending/clicks/"))
    finally:
        cloud.stop()
    print(f"   seeded {3 * n:,} objects in {seconds:.1f} s", flush=True)
    return Burst("quiet (recorded beforehand)", n, 0.0, requests_made, flush_s, jobs, 1,
                 pending, peak, covered, n)  # fmt: skip


def many_pipelines(gcs: StorageServer, tmp: Path, pipelines: int, objects: int) -> Burst:
    """`pipelines` marker pipelines at once: `objects` parts each, then all markers."""
    extra = "".join(
        f'\n[pipelines.p{i:02d}]\nbucket = "{{landing}}"\nprefix = "p{i:02d}/"\n'
        f'include = ["*.csv"]\ntrigger = "marker"\n\n[pipelines.p{i:02d}.training]\n'
        f'image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"\n'
        f'machine_type = "n1-standard-8"\n'
        for i in range(pipelines)
    )
    cloud = Cloud(gcs, tmp, quiet_seconds=1, faults=False)
    # The function reads its config on its first delivery: the pipelines join it before.
    cloud.config_path.write_text(
        cloud.config_path.read_text() + extra.replace("{landing}", cloud.landing)
    )
    try:
        names = [f"p{i:02d}/b/part-{j:04d}.csv" for j in range(objects) for i in range(pipelines)]
        seeder = Seeder(cloud.gcs_client, gcs.root, cloud.landing)
        parts = [
            cloud.finalize(name, size=len(CSV), generation=g)
            for name, g in zip(names, seeder.write((m, CSV, "text/csv") for m in names),
                               strict=True)
        ]  # fmt: skip
        ends = [f"p{i:02d}/b/_SUCCESS" for i in range(pipelines)]
        markers = [
            cloud.finalize(name, size=0, generation=g)
            for name, g in zip(ends, seeder.write((m, b"", "text/plain") for m in ends),
                               strict=True)
        ]  # fmt: skip
        before = gcs.requests
        seconds = _post_all(cloud, parts)
        flush_s = _post_all(cloud, markers + markers)  # every marker twice, all at once
        requests_made = gcs.requests - before
        peak = _peak_rss_mib(cloud.function._process.pid)  # type: ignore[union-attr]
        jobs = cloud.jobs()
        distinct = len({j.labels["retrain-run"] for j in jobs}) == len(jobs)
        covered = sum(_one_batch(cloud, f"p{i:02d}") for i in range(pipelines))
        pending = len(cloud.state_objects("pending/"))
    finally:
        cloud.stop()
    n = len(parts) + 2 * len(markers)
    return Burst(f"{pipelines} marker pipelines", n, seconds + flush_s, requests_made, flush_s,
                 len(jobs) if distinct else 0, pipelines, pending, peak, covered,
                 pipelines * (objects + 1))  # fmt: skip


def _table(rows: list[Burst]) -> str:
    lines = [
        "| burst | N | events/s | GCS requests / event | flush s | peak MiB | jobs | exactly once |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.n:,} | {f'{r.per_s:,.0f}' if r.per_s else '—'} | "
            f"{r.per_event:.2f} | {r.flush_s:.2f} | "
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
        flush = (
            f"flush {a.flush_s:.1f} s → {b.flush_s:.1f} s (x{b.flush_s / a.flush_s:.1f})"
            if a.flush_s > 0
            else "no flush"
        )
        out.append(
            f"- `{mode}`, N {a.n:,} → {b.n:,} (x{k:.0f}): events/s x{b.per_s / a.per_s:.2f}, "
            f"GCS requests per event x{b.per_event / a.per_event:.2f}, {flush}, peak memory "
            f"x{b.peak_mib / a.peak_mib:.2f}"
        )
    flushes = sorted((r for r in rows if r.mode.startswith("quiet")), key=lambda r: r.n)
    if len(flushes) > 2:
        steps = ", ".join(
            f"{r.n:,}: {r.flush_s:.1f} s ({1000 * r.flush_s / r.n:.1f} ms/object)" for r in flushes
        )
        out.append(f"- quiet flush against the batch size: {steps}")
    return "\n".join(out)


def measure(
    sizes: Mapping[str, tuple[int, ...]], quiet_sizes: tuple[int, ...], pipelines: int
) -> str:
    rows: list[Burst] = []
    started = time.monotonic()
    scratch = _memory_disk()
    with (
        tempfile.TemporaryDirectory(dir=scratch) as tmp,
        # As localcloud runs it: the proxy in front of fake-gcs-server serves batch requests.
        StorageServer(root=Path(tmp) / "gcs", keep_versions=True) as gcs,
    ):
        for mode, ns in sizes.items():
            for n in ns:
                print(f"   scale: {mode} burst of {n}", flush=True)
                rows.append(burst(gcs, Path(tmp) / f"{mode}-{n}", mode, n))
        for n in quiet_sizes:
            print(f"   scale: quiet batch of {n} pending objects", flush=True)
            rows.append(quiet_batch(gcs, Path(tmp) / f"quiet-{n}", n))
        print(f"   scale: {pipelines} pipelines at once", flush=True)
        rows.append(many_pipelines(gcs, Path(tmp) / "many", pipelines, 10))
    minutes = (time.monotonic() - started) / 60
    return (
        f"{_table(rows)}\n\nGrowth from the smallest to the largest N:\n\n{_growth(rows)}\n\n"
        "`each`: one run per object, at most `max_concurrent_jobs` (50) submitted at once — "
        "the others wait for a tick. `marker`/`quiet`: the batch is one job, submitted by the "
        "marker's delivery or by the first tick after the quiet period; *flush s* is that one "
        "delivery's time (listing every pending record, writing the run record, removing the "
        "pending records in batch requests of 100 deletes, listing the data objects and "
        "writing the input manifest, creating the job). The data "
        "objects exist in the landing bucket at the generations their events name, so every "
        "manifest pins real objects. Events are posted by "
        f"{WORKERS} concurrent clients to one function instance (functions-framework's "
        "default threads); *GCS requests / event* counts the function's HTTP requests over the "
        "burst and its flush (a batch request counts once); peak memory is the function's "
        "processes' VmHWM.\n\n"
        "*Exactly once* is checked after each row, not assumed: `each` — the jobs carry "
        "distinct run labels, 50 of them, and every object has its own run record; "
        "`marker`/`quiet` — one job, one run record, whose object list and input manifest "
        "both name every object of the batch (a marker batch's also its marker), and no "
        "pending record left.\n\n"
        "A burst into a full `each` pipeline costs three writes per event (the run's claim, "
        "its open record, its waiting status). The slots are listed once per "
        "`FULL_MEMO` (2 s) per instance, not on every event (trigger.py, `_still_full`). "
        "Every event used to list them once or twice, and fake-gcs-server's filesystem "
        "backend walks the whole bucket for each listing: at 40,000 state objects one listing "
        "took 134 ms, and a burst slowed as it went.\n\n"
        f"{_where(scratch)} The section took {minutes:.1f} minutes.\n"
    )


def _memory_disk() -> str | None:
    """Where fake-gcs-server's filesystem backend is fastest: a tmpfs when the machine has
    one with room (a write costs fake-gcs-server ~0.8 ms of CPU there, ~2.3 ms on disk)."""
    shm = Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    room = stat.f_bavail * stat.f_frsize
    return str(shm) if os.access(shm, os.W_OK) and room > 4 * 2**30 else None


def _where(scratch: str | None) -> str:
    if scratch is None:
        return "fake-gcs-server kept its objects on disk."
    return (
        f"fake-gcs-server kept its objects on a tmpfs ({scratch}): they are the emulator's "
        "storage, not the product's, and on disk each write costs the emulator ~3 times the "
        "CPU."
    )


def run() -> str:
    sizes = {"each": (200, 1000), "marker": (500, 2000), "quiet": (500, 2000)}
    return "## Scale: bursts per trigger mode\n\n" + measure(sizes, (), 50)


# The long form, sized for `make reliability`'s 30 minutes on a 2-core machine: bursts
# of 500 and 20,000 objects in every trigger mode (growth x40) and a quiet batch of 100,000.
LONG_SIZES = {"each": (500, 20_000), "marker": (500, 20_000), "quiet": (500, 20_000)}
LONG_QUIET_BATCH = (100_000,)


def run_long() -> str:
    return measure(LONG_SIZES, LONG_QUIET_BATCH, 50)
