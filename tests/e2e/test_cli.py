"""The `retrain` command line as a person uses it: real processes, real localcloud."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcloud.demo.run import make_data

EMULATOR_VARS = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "VERTEX_API_ENDPOINT",
                 "RETRAIN_CONFIG", "GOOGLE_CLOUD_PROJECT")  # fmt: skip
EVENTS = Path(__file__).resolve().parents[1] / "events"


def retrain(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in EMULATOR_VARS}
    return subprocess.run(
        [sys.executable, "-m", "retrain.cli", *args],
        cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_clear_errors_when_not_started_or_config_invalid(tmp_path: Path) -> None:
    not_started = retrain("runs", cwd=tmp_path)
    assert not_started.returncode == 1
    assert "RETRAIN_CONFIG is not set (and no localcloud runs in --dir)" in not_started.stderr
    down = retrain("local", "down", cwd=tmp_path)
    assert down.returncode == 1 and "localcloud is not running in .localcloud" in down.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[defaults]\nstate_uri = "gs://s/state"\noutput_uri = "gs://a/runs"\n[pipelines.x]\nbucket = "b"\n'
    )
    up = retrain("local", "up", "--config", str(bad), "--detach", cwd=tmp_path)
    assert up.returncode == 1
    assert "config invalid" in up.stderr and "pipelines.x.training: is required" in up.stderr
    assert not (tmp_path / ".localcloud" / "env").exists()


@pytest.fixture
def running(tmp_path: Path):
    up = retrain("local", "up", "--detach", cwd=tmp_path)
    assert up.returncode == 0, up.stderr + up.stdout
    yield tmp_path
    retrain("local", "down", cwd=tmp_path)


def test_up_drop_runs_request_replay_down(running: Path) -> None:
    cwd = running
    assert "VERTEX_API_ENDPOINT=" in (cwd / ".localcloud" / "env").read_text()
    again = retrain("local", "up", "--detach", cwd=cwd)
    assert again.returncode == 1 and "already running" in again.stderr

    train, _ = make_data()
    data = cwd / "batch"
    data.mkdir()
    with (data / "part-0.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(train[0]))
        writer.writeheader()
        writer.writerows(train[:300])
    (data / "_SUCCESS").write_text("")
    drop = retrain(
        "drop",
        str(data / "_SUCCESS"),
        str(data / "part-0.csv"),
        "--to",
        "gs://demo-landing/digits/cli/",
        cwd=cwd,
    )
    assert drop.returncode == 0, drop.stderr
    # The marker is uploaded last whatever the order given.
    assert drop.stdout.strip().splitlines()[-1].endswith("gs://demo-landing/digits/cli/_SUCCESS")

    deadline = time.monotonic() + 60
    runs = retrain("runs", cwd=cwd)
    while "marker" not in runs.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        runs = retrain("runs", cwd=cwd)
    assert runs.returncode == 0, runs.stderr
    assert "digits" in runs.stdout and "marker" in runs.stdout

    request = retrain(
        "request", "digits", "--set", "lr=0.01", "--reason", "from the cli test", cwd=cwd
    )
    assert request.returncode == 0, request.stderr
    assert '"hyperparameters": {"lr": 0.01}' in request.stdout
    bad_set = retrain("request", "digits", "--set", "lr", cwd=cwd)
    assert bad_set.returncode == 1 and "--set takes KEY=VALUE" in bad_set.stderr

    replay = retrain("replay", str(EVENTS / "pubsub-tick.http.json"), "--to", "job-events", cwd=cwd)
    assert replay.returncode == 0 and replay.stdout.startswith("200")

    unknown = retrain("predict", "nope", "--instances", "-", cwd=cwd, stdin='{"instances": [{}]}')
    assert unknown.returncode == 1 and "unknown pipeline 'nope'" in unknown.stderr

    down = retrain("local", "down", cwd=cwd)
    assert down.returncode == 0, down.stderr
    assert not (cwd / ".localcloud" / "env").exists()
    assert (cwd / ".localcloud" / "vertex").exists()  # state stays for the next up
