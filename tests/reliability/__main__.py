"""Run the long forms of the reliability checks and write docs/reliability.md.

python -m tests.reliability          # everything (`make reliability`)
python -m tests.reliability fuzz     # only sections whose name contains "fuzz"

Sections: hostile input case by case, hostile deliveries fuzzed through both HTTP
functions, sustained faults, guards under races, crash points, scale. Each figure comes
with the command that reproduces it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.__main__ import _machine, _split

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "reliability.md"
# Examples per property: 4 properties, so 10,000 cases in all. A case posts to a served
# function (~10-60 ms here): 10,000 per property would take most of the 30 minutes alone.
FUZZ_EXAMPLES = 2_500
FAULT_RATE = 0.22


def fuzz() -> str:
    command = [sys.executable, "-m", "pytest", "tests/unit/test_deliveries_fuzz.py", "-q",
               "--hypothesis-show-statistics", "-p", "no:randomly"]  # fmt: skip
    env = {**os.environ, "RETRAIN_FUZZ_EXAMPLES": str(FUZZ_EXAMPLES)}
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    out = done.stdout + done.stderr
    per_test = [
        (name, int(passing), int(failing))
        for name, passing, failing in re.findall(
            r"::(test_\w+):\n\n  - during generate phase[^\n]*\n(?:    [^\n]*\n)*?"
            r"    - (\d+) passing, (\d+) failing",
            out,
        )
    ]
    total = sum(p for _n, p, _f in per_test)
    failing = sum(f for _n, _p, f in per_test)
    summary = (out.strip().splitlines() or ["(no output)"])[-1]
    table = "\n".join(f"| `{n}` | {p:,} | {f} |" for n, p, f in per_test)
    return (
        "## Hostile deliveries, fuzzed\n\n"
        f"`RETRAIN_FUZZ_EXAMPLES={FUZZ_EXAMPLES} .venv/bin/python -m pytest "
        "tests/unit/test_deliveries_fuzz.py --hypothesis-show-statistics` — generated "
        "deliveries (CloudEvents in binary and structured mode, Pub/Sub envelopes, retrain "
        "requests, ticks, LogEntries, incidents) posted to both served functions: never an "
        "unhandled exception, never a 5xx for a permanent error, an answer within seconds, "
        "never a job or model for an invalid input.\n\n"
        "| property | cases run | failing |\n|---|---:|---:|\n"
        f"{table}\n\n"
        f"**{total:,} cases, {failing} failing** in {seconds:.0f} s (`make test` runs 100 "
        f"per property); pytest: `{summary}`"
        f"{'' if done.returncode == 0 else ' (**failed**)'}.\n"
    )


def hostile() -> str:
    from localcloud.storage import StorageServer
    from tests.reliability import hostile as cases

    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        report = cases.run(gcs, Path(tmp) / "hostile")
    return cases.markdown(report) + (
        "" if report.ok else "\n**Some cases did not get the answer they must get.**\n"
    )


def sustained_faults() -> str:
    from localcloud.storage import StorageServer
    from tests.reliability import sustained

    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        model = sustained.train_model(Path(tmp) / "trained")
        report = sustained.run(gcs, Path(tmp) / "loop", model, sustained.LONG, FAULT_RATE)
    ok = report.actual() == report.expected() and not report.unhandled
    return (
        "## Sustained faults\n\n"
        "`.venv/bin/python -m tests.reliability sustained` (short form in `make test`: "
        "`.venv/bin/python -m pytest tests/contract/test_faults_sustained.py`). Both functions "
        "served by functions-framework; seeded random faults from the proxies of "
        "tests/contract/faults.py in front of fake-gcs-server, the Vertex AI emulator's gRPC "
        f"front (production's transport) and the webhook, at {FAULT_RATE:.0%} of the calls "
        "(twice that for the webhook, which sees few).\n\n"
        + sustained.markdown(report)
        + ("" if ok else "\n**The counts differ from what the events call for.**\n")
    )


def races() -> str:
    from localcloud.storage import StorageServer
    from retrain.jobevents import HEARTBEAT_S, LEASE
    from tests.reliability import races as scenario

    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        result = scenario.run(gcs, Path(tmp) / "race")
    batches = len(scenario.PIPELINES) * scenario.BATCHES
    most = ", ".join(f"{p}: {n}" for p, n in result.most_at_once.items())
    return (
        "## Guards under races\n\n"
        "`.venv/bin/python -m pytest tests/contract/test_faults_cap_race.py "
        "tests/unit/test_guards_atomic.py`. 6 batches dropped at once into 2 marker "
        "pipelines with `max_concurrent_jobs = 1` (every marker delivered twice, ticks every "
        f"half second, jobs of ~{result.seconds_per_job:.1f} s).\n\n"
        "| measure | value |\n|---|---|\n"
        f"| jobs / distinct runs / run records | {result.jobs} / {result.distinct_runs} / "
        f"{result.run_records} (batches: {batches}) |\n"
        f"| most jobs of one pipeline at once (from the emulator's create/end times) | {most} |\n"
        f"| overlapping jobs of one pipeline | {len(result.overlaps)} |\n"
        f"| outcomes | {result.outcomes} |\n"
        f"| slots / open runs left at the end | {result.slots_left} / {result.open_left} |\n"
        f"| unhandled exceptions / deliveries never acknowledged | {len(result.unhandled)} / "
        f"{len(result.never_acked)} |\n\n"
        f"A job end's lease is {LEASE.total_seconds():.0f} s, renewed every {HEARTBEAT_S:.0f} s "
        "while the delivery works: a crashed delivery's job end is taken over within a minute "
        "(`tests/unit/test_guards_atomic.py::test_a_crashed_deliverys_lease_is_taken_over_"
        "within_a_minute`), where it waited 10 minutes before.\n"
    )


def crash_points() -> str:
    from localcloud.storage import StorageServer
    from tests.reliability import sustained
    from tests.reliability.crashpoints import scenario

    with tempfile.TemporaryDirectory() as tmp, StorageServer(root=Path(tmp) / "gcs") as gcs:
        model = sustained.train_model(Path(tmp) / "trained")
        report = scenario.run(gcs, Path(tmp) / "crash", model)
    return "## Crash points\n\n" + scenario.markdown(report)


def scale() -> str:
    from tests.bench import bench_scale

    return (
        "## Scale\n\n"
        "`.venv/bin/python -m tests.reliability scale` (short form: `make bench`, "
        "tests/bench/bench_scale.py). The trigger function against localcloud's Cloud Storage "
        "(fake-gcs-server behind localcloud's storage proxy, which counts the requests); "
        "Vertex AI over gRPC.\n\n" + bench_scale.run_long()
    )


SECTIONS: dict[str, Callable[[], str]] = {
    "hostile": hostile,
    "fuzz": fuzz,
    "sustained": sustained_faults,
    "races": races,
    "crash": crash_points,
    "scale": scale,
}
# Sections that mostly wait (the clients' retry backoff after injected faults): each runs
# in a process of its own beside the others. Scale measures throughput, so it runs last
# and alone.
BESIDE = ("sustained",)
ALONE = ("scale",)


def _section(name: str) -> tuple[str, bool]:
    """One section's markdown, and whether it ran to the end."""
    started = time.monotonic()
    try:
        section, ok = SECTIONS[name](), True
    except Exception:  # a broken section is reported, the others still run
        section, ok = f"## {name}\n\nFailed:\n\n```\n{traceback.format_exc()}```\n", False
    print(f"   ({name}: {time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    return section, ok


def _beside(name: str) -> subprocess.Popen[str]:
    print(f"== {name} (in a process of its own, beside the others)", flush=True)
    command = [sys.executable, "-m", "tests.reliability", "--section", name]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--section"]:  # one section's markdown on stdout, for _beside
        section, ok = _section(argv[2])
        print(section, flush=True)
        return 0 if ok else 1
    wanted = argv[1:]
    names = [n for n in SECTIONS if not wanted or any(w in n for w in wanted)]
    done: dict[str, str] = {}
    failed = 0
    started = time.monotonic()
    beside = {n: _beside(n) for n in names if n in BESIDE}
    for name in [n for n in names if n not in BESIDE and n not in ALONE]:
        print(f"== {name}", flush=True)
        done[name], ok = _section(name)
        failed += not ok
        print(done[name], flush=True)
    for name, process in beside.items():
        out, _ = process.communicate()
        failed += process.returncode != 0
        done[name] = out.strip() or f"## {name}\n\nFailed: exit status {process.returncode}\n"
        print(done[name], flush=True)
    for name in [n for n in names if n in ALONE]:
        print(f"== {name} (alone)", flush=True)
        done[name], ok = _section(name)
        failed += not ok
        print(done[name], flush=True)
    minutes = (time.monotonic() - started) / 60
    print(f"   (all: {minutes:.1f} min)", flush=True)
    sections = [done[n].strip() + "\n" for n in names]
    header = (
        "# Reliability in figures\n\n"
        f"Written by `make reliability` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on "
        f"{_machine()}, in {minutes:.1f} minutes: {_order(names)}. Each section names the "
        "command that reproduces it.\n\n"
    )
    if wanted and OUTPUT.exists():
        first = OUTPUT.read_text().split("\n\n")[1]
        header = (
            f"# Reliability in figures\n\n{first}\n\nRerun since, on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python -m tests.reliability "
            f"{' '.join(wanted)}`: {', '.join(names)}.\n\n"
        )
    notes = _notes()
    if wanted and OUTPUT.exists():
        # A section that failed before is kept under its short name: the rerun replaces it.
        kept = {t: s for t, s in _split(OUTPUT.read_text()).items() if t[3:] not in names}
        for section in sections:
            kept[section.splitlines()[0]] = section
        sections = [s for title, s in kept.items() if title != "## Closing notes"]
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(header + "\n".join(sections) + "\n" + notes)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 1 if failed else 0


def _order(names: list[str]) -> str:
    """How the sections ran, in words."""
    beside = " and ".join(n for n in names if n in BESIDE)
    first = " then ".join(n for n in names if n not in BESIDE and n not in ALONE)
    alone = " and ".join(n for n in names if n in ALONE)
    if first and beside:
        first = f"{first}, with {beside} beside them in a process of its own"
    else:
        first = first or beside
    return f"{first}; then {alone} alone" if first and alone else first or f"{alone} alone"


def _notes() -> str:
    return (Path(__file__).parent / "notes.md").read_text()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
