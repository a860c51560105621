"""A tuning trial restarted after its last checkpoint (Vertex restarts a trial whose VM was
lost) trains no further epoch, and still reports its metric to the hypertune file: a trial
with no metric line is infeasible."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.trainer.conftest import digits_csv
from trainer.task import Hyperparameters, Outputs, run


def test_a_trial_resumed_after_its_last_epoch_reports_the_final_metric(tmp_path: Path) -> None:
    # GIVEN a trial that finished both epochs and checkpointed them
    data = tmp_path / "d.csv"
    data.write_text(digits_csv(slice(0, 400)))
    outputs = Outputs(str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "ckpt"))
    hp = Hyperparameters(epochs=2, batch_size=64)
    run(str(data), "digit", outputs, hp, out=io.StringIO())

    # WHEN it runs again as a tuning trial with a fresh metric file
    path = tmp_path / "hypertune" / "output.metrics"
    env = {"CLOUD_ML_TRIAL_ID": "3", "CLOUD_ML_HP_METRIC_FILE": str(path)}
    resumed = run(str(data), "digit", outputs, hp, env=env, out=io.StringIO())

    # THEN no epoch was trained, and the file holds the checkpoint's metric at the last step
    assert resumed.first_epoch == 3
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    accuracy = [e for e in entries if "val_accuracy" in e]
    assert [(e["trial"], e["global_step"]) for e in accuracy] == [("3", "2")]
    assert float(accuracy[0]["val_accuracy"]) == resumed.metrics["val_accuracy"]
