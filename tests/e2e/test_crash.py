"""localcloud killed (kill -9 of the `retrain local up --detach` process group) in the
middle of training: the next `up` stops what the dead one left running and runs the
interrupted job again under its name, and the batch ends with exactly one outcome."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from localcloud.demo.run import make_data
from localcloud.procs import process_identity
from localcloud.stack import read_env
from localcloud.vertex.jobs import RERUN_MESSAGE
from retrain.cli.runs import load_config, run_records
from tests.e2e.test_cli import retrain

pytestmark = pytest.mark.slow
TIMEOUT_S = 300


def _poll(condition: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def _entries(directory: Path) -> list[dict[str, Any]]:
    path = directory / "logs" / "entries.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
    return entries


def _lines(directory: Path, job_id: str, task_name: str) -> list[str]:
    return [
        str(e.get("jsonPayload", {}).get("message", e.get("textPayload", "")))
        for e in _entries(directory)
        if e.get("resource", {}).get("labels", {}).get("job_id") == job_id
        and e["resource"]["labels"].get("task_name") == task_name
    ]


def _children(directory: Path, what: str) -> list[int]:
    folder = directory / "children"
    records = [json.loads(p.read_text()) for p in folder.iterdir()] if folder.is_dir() else []
    return [int(r["pid"]) for r in records if str(r["what"]).startswith(what)]


def test_kill_9_mid_training_then_up_gives_exactly_one_outcome(tmp_path: Path) -> None:
    cwd = tmp_path
    directory = cwd / ".localcloud"
    up = retrain("local", "up", "--detach", "--tick-seconds", "1", cwd=cwd)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        train, _ = make_data()
        part = cwd / "part-0.csv"
        with part.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(train[0]))
            writer.writeheader()
            writer.writerows(train[:600])
        uri = "gs://demo-landing/digits/crash/"
        assert retrain("drop", str(part), "--to", uri, cwd=cwd).returncode == 0
        # Enough epochs that the job is still training when localcloud is killed.
        request = retrain("request", "digits", "--data-uri", uri, "--set", "epochs=600", cwd=cwd)
        assert request.returncode == 0, request.stderr
        env = read_env(directory / "env")
        config = load_config(env)

        def record() -> dict[str, Any] | None:
            found = [r for r in run_records(env, config, "digits") if r.get("data_uri") == uri]
            return found[0] if found and found[0].get("job_name") else None

        job_name = _poll(record, "the run's job")["job_name"]
        job_id = job_name.rsplit("/", 1)[1]
        _poll(lambda: _lines(directory, job_id, "workerpool0-0"), "the job training")
        (replica,) = _children(directory, f"job {job_id} replica")

        localcloud = int((directory / "pid").read_text())
        os.killpg(localcloud, signal.SIGKILL)  # the whole `up --detach` process group
        _poll(lambda: process_identity(localcloud) is None, "localcloud gone")

        again = retrain("local", "up", "--detach", "--tick-seconds", "1", cwd=cwd)
        assert again.returncode == 0, again.stderr + again.stdout
        env = read_env(directory / "env")
        # The replica of the killed localcloud does not train on beside the rerun.
        _poll(lambda: process_identity(replica) is None, "the old replica stopped", 30)

        done = _poll(lambda: (r := record()) and r.get("outcome") and r, "the run's outcome")
        assert done["outcome"] == "deployed", done
        assert done["job_name"] == job_name
        runs = [r for r in run_records(env, config, "digits") if r.get("data_uri") == uri]
        assert len(runs) == 1
        service = _lines(directory, job_id, "service")
        assert service.count(RERUN_MESSAGE) == 1, service
        assert service.count("Job completed successfully.") == 1, service
        assert not [line for line in service if line.startswith("Job failed")], service
    finally:
        retrain("local", "down", cwd=cwd)
