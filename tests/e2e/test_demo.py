"""`retrain local demo` as a person runs it (a real process, a real localcloud, few epochs):
both pipelines end deployed and answer, and the tuned pipeline's trial table and chosen
trial are shown — the chosen trial is the table's best, and the one the summary names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EMULATOR_VARS = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "VERTEX_API_ENDPOINT",
                 "VERTEX_EMULATOR_HOST", "RETRAIN_CONFIG", "GOOGLE_CLOUD_PROJECT")  # fmt: skip
TABLE_ROW = re.compile(r"^\s+\| (\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(\s+<- chosen)?$")


@pytest.mark.slow
def test_the_demo_deploys_both_pipelines_and_shows_the_chosen_trial(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in EMULATOR_VARS}
    demo = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "local", "demo", "--epochs", "5",
         "--dir", str(tmp_path / "demo"), "--timeout", "400"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = demo.stdout
    assert demo.returncode == 0, out[-4000:] + demo.stderr[-2000:]

    # The tuned pipeline's trials, live: each started and completed in the job's log.
    for trial in ("1", "2", "3", "4"):
        assert re.search(rf"service: Trial {trial} started with hidden_units=\S+, lr=", out)
        assert re.search(rf"service: Trial {trial} completed: val_accuracy=", out)

    # The table: header, one row per trial, the best one marked as chosen.
    header = out.index("           | trial  hidden_units  lr")
    assert "val_accuracy  state" in out[header : out.index("\n", header)]
    rows = [m.groups() for line in out[header:].splitlines()[1:5] if (m := TABLE_ROW.match(line))]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert all(r[4] == "SUCCEEDED" for r in rows)
    marked = [r for r in rows if r[5]]
    assert len(marked) == 1
    best = max(rows, key=lambda r: float(r[3]))
    assert marked[0][3] == best[3]
    chosen_id, hidden, lr = marked[0][0], marked[0][1], marked[0][2]
    assert f"chosen: trial {chosen_id} (hidden_units={hidden}, lr={lr}), val_accuracy" in out

    # Its endpoint answers, and the summary names both pipelines' runs and the chosen trial.
    assert re.search(r"predicted 179 held-out rows through the digits-tuned endpoint", out)
    summary = out[out.index("\nsummary\n") :]
    assert re.search(r"  digits batch-1: run \w+, job \d+, state SUCCEEDED", summary)
    assert re.search(r"  digits-tuned batch-1: run \w+, tuning job \d+, state SUCCEEDED", summary)
    assert f"trials: 4 (4 succeeded); chosen: trial {chosen_id} (" in summary
    assert summary.count("outcome: deployed") == 2
    assert "models/digits-tuned@1" in summary
