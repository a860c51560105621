"""The job-events handler gates on the fairest figures metrics.json offers, and records and
announces both figures with their basis."""

from __future__ import annotations

import json

from retrain.config import parse_config
from tests.unit.test_jobevents import CONFIG, MODEL_DIR, World


def _metrics(world: World, job, metrics: dict) -> None:
    world.blobs.files[MODEL_DIR.format(run=job.labels["retrain-run"]) + "metrics.json"] = (
        json.dumps(metrics)
    )


def test_a_challenger_worse_on_the_same_rows_is_rejected_and_both_figures_are_shown():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    challenger = world.job("JOB_STATE_SUCCEEDED")
    # Above the champion's recorded 0.9, but below it on the same 361 rows.
    champion = {"model_dir": MODEL_DIR.format(run="run-1"), "rows": 361, "val_accuracy": 0.97}
    _metrics(world, challenger, {"val_accuracy": 0.95, "champion": champion})

    (outcome,) = world.end(challenger)

    assert outcome.action == "rejected"
    assert "not better than the champion's 0.97 (same rows, 361 rows)" in outcome.detail
    note = world.notifier.sent[-1]
    assert (note["metric"], note["champion_metric"], note["basis"], note["basis_rows"]) == (
        0.95, 0.97, "same_rows", 361,
    )  # fmt: skip
    assert (
        "metric: val_accuracy = 0.95 vs champion 0.97 (same rows, 361 rows)"
        in world.notifier.texts[-1]
    )
    record = world.run_record(challenger)
    assert (record["metric"], record["champion_metric"], record["basis"], record["basis_rows"]) == (
        0.95, 0.97, "same_rows", 361,
    )  # fmt: skip


def test_a_challenger_better_on_the_same_rows_is_deployed_with_its_basis():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    challenger = world.job("JOB_STATE_SUCCEEDED")
    champion = {"model_dir": MODEL_DIR.format(run="run-1"), "rows": 361, "val_accuracy": 0.93}
    _metrics(world, challenger, {"val_accuracy": 0.95, "champion": champion})

    (outcome,) = world.end(challenger)

    assert outcome.action == "deployed"
    assert (
        "metric: val_accuracy = 0.95 vs champion 0.93 (same rows, 361 rows)"
        in world.notifier.texts[-1]
    )
    record = world.run_record(challenger)
    assert (record["champion_metric"], record["basis"], record["basis_rows"]) == (
        0.93,
        "same_rows",
        361,
    )
    # The version keeps the run's own metric, the figure a later recorded comparison uses.
    new_champion = world.registry.by_alias("churn", "champion")
    assert new_champion is not None and new_champion.metric == 0.95


def test_a_schema_change_follows_the_configured_policy():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    changed = {
        "model_dir": MODEL_DIR.format(run="run-1"),
        "error": "columns changed: +plan, -region",
    }
    rejected = world.job("JOB_STATE_SUCCEEDED")
    _metrics(world, rejected, {"val_accuracy": 0.85, "champion": changed})

    assert world.end(rejected)[0].detail == (
        "the champion cannot score the new data (columns changed: +plan, -region); "
        "deploy.on_schema_change is 'reject'"
    )

    world.config = parse_config(
        CONFIG.replace("@CANARY@", "0").replace(
            "must_beat_champion = true",
            'must_beat_champion = true\non_schema_change = "judge_alone"',
        ),
        "pipelines.toml",
    )
    alone = world.job("JOB_STATE_SUCCEEDED")
    _metrics(world, alone, {"val_accuracy": 0.85, "champion": changed})
    (outcome,) = world.end(alone)
    assert outcome.action == "deployed"
    assert "metric: val_accuracy = 0.85\n" in world.notifier.texts[-1]  # no champion figure
    assert world.run_record(alone)["basis"] == "none"


def test_without_comparison_blocks_the_recorded_metric_is_the_basis():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    (outcome,) = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.85))
    assert outcome.action == "rejected"
    assert outcome.detail == "val_accuracy 0.85 is not better than the champion's 0.9 (recorded)"
    assert world.notifier.sent[-1]["basis"] == "recorded"
    assert "metric: val_accuracy = 0.85 vs champion 0.9 (recorded)" in world.notifier.texts[-1]
