"""The quality gate and the traffic arithmetic, as pure functions."""

from __future__ import annotations

import pytest

from retrain.config import Deploy, GateCondition
from retrain.gate import NEW_MODEL, deploy_split, judge, read_metric, without

CHAMPION_DIR = "gs://acme-artifacts/runs/churn/r1/model/"


def deploy(**fields) -> Deploy:
    return Deploy(model="churn", endpoint="churn", serving_image_uri="serving", **fields)


def test_threshold_in_the_goal_direction():
    assert judge(deploy(min_value=0.8), {"val_accuracy": 0.8}, None).passed
    low = judge(deploy(min_value=0.8), {"val_accuracy": 0.79}, None)
    assert not low.passed and "does not reach the threshold (>= 0.8)" in low.reason
    assert low.basis == "none" and low.champion_metric is None
    loss = deploy(metric="val_loss", goal="minimize", min_value=0.5)
    assert judge(loss, {"val_loss": 0.5}, None).passed
    assert not judge(loss, {"val_loss": 0.51}, None).passed


def test_must_beat_the_recorded_champion_strictly_unless_disabled():
    gate = deploy(min_value=0.5)
    better = judge(gate, {"val_accuracy": 0.91}, 0.9, CHAMPION_DIR)
    assert better.passed and (better.basis, better.champion_metric) == ("recorded", 0.9)
    tie = judge(gate, {"val_accuracy": 0.9}, 0.9, CHAMPION_DIR)
    assert not tie.passed
    assert tie.reason == "val_accuracy 0.9 is not better than the champion's 0.9 (recorded)"
    assert judge(deploy(min_value=0.5, must_beat_champion=False), {"val_accuracy": 0.7}, 0.9).passed
    loss = deploy(metric="val_loss", goal="minimize")
    assert judge(loss, {"val_loss": 0.2}, 0.3).passed
    assert not judge(loss, {"val_loss": 0.4}, 0.3).passed


def test_same_rows_figures_win_over_the_recorded_metric():
    metrics = {"val_accuracy": 0.95, "val_loss": 0.2,
               "champion": {"model_dir": CHAMPION_DIR, "rows": 361, "val_accuracy": 0.96}}  # fmt: skip
    # Recorded on its own data, the champion looked worse (0.9); on the same rows it is better.
    verdict = judge(deploy(), metrics, 0.9, CHAMPION_DIR)

    assert not verdict.passed
    assert (verdict.basis, verdict.rows) == ("same_rows", 361)
    assert (verdict.metric, verdict.champion_metric) == (0.95, 0.96)
    assert verdict.reason == (
        "val_accuracy 0.95 is not better than the champion's 0.96 (same rows, 361 rows)"
    )
    passed = judge(deploy(), metrics | {"val_accuracy": 0.97}, 0.99, CHAMPION_DIR)
    assert passed.passed and passed.basis == "same_rows"
    assert passed.reason == "val_accuracy 0.97 passes the gate (champion 0.96, same rows, 361 rows)"


def test_minimize_on_the_same_rows():
    gate = deploy(metric="val_rmse", goal="minimize", min_value=5.0)
    metrics = {
        "val_rmse": 3.0,
        "champion": {"model_dir": CHAMPION_DIR, "rows": 80, "val_rmse": 3.5},
    }
    assert judge(gate, metrics, None, CHAMPION_DIR).passed
    worse = judge(gate, metrics | {"val_rmse": 4.0}, None, CHAMPION_DIR)
    assert (
        not worse.passed
        and "not better than the champion's 3.5 (same rows, 80 rows)" in worse.reason
    )


EVAL = {
    "uri": "gs://acme-landing/churn-eval/golden.csv",
    "rows": 500,
    "candidate": {"val_accuracy": 0.91, "val_loss": 0.3},
    "champion": {"val_accuracy": 0.93, "val_loss": 0.25},
}
SAME_ROWS = {"model_dir": CHAMPION_DIR, "rows": 361, "val_accuracy": 0.90}


def test_a_configured_eval_set_wins_over_the_same_rows():
    metrics = {"val_accuracy": 0.95, "champion": SAME_ROWS, "eval_set": EVAL}
    configured = deploy(eval_uri=EVAL["uri"])

    verdict = judge(configured, metrics, 0.8, CHAMPION_DIR)

    assert not verdict.passed
    assert (verdict.basis, verdict.rows, verdict.metric, verdict.champion_metric) == (
        "eval_set", 500, 0.91, 0.93,
    )  # fmt: skip
    assert "not better than the champion's 0.93 (eval set, 500 rows)" in verdict.reason
    # Not configured: the same rows come first, the eval set only when they are missing.
    assert judge(deploy(), metrics, 0.8, CHAMPION_DIR).basis == "same_rows"
    alone = judge(deploy(), {"val_accuracy": 0.95, "eval_set": EVAL}, 0.8, CHAMPION_DIR)
    assert alone.basis == "eval_set" and not alone.passed


def test_the_threshold_and_gates_read_the_eval_set_figures_on_that_basis():
    metrics = {
        "val_accuracy": 0.99,
        "val_loss": 0.01,
        "eval_set": EVAL | {"champion": {"val_accuracy": 0.8}},
    }
    gate = deploy(eval_uri=EVAL["uri"], min_value=0.95, gates=(GateCondition("val_loss", max=0.2),))

    verdict = judge(gate, metrics, 0.8, CHAMPION_DIR)

    assert verdict.failures == (
        "val_accuracy 0.91 does not reach the threshold (>= 0.95)",
        "val_loss 0.3 is above the gate's max 0.2",
    )


def test_an_unusable_eval_set_falls_back_and_says_why():
    broken = {
        "uri": EVAL["uri"],
        "error": "data file gs://acme-landing/churn-eval/golden.csv does not exist",
    }
    metrics = {"val_accuracy": 0.95, "champion": SAME_ROWS, "eval_set": broken}

    verdict = judge(deploy(eval_uri=EVAL["uri"]), metrics, 0.8, CHAMPION_DIR)

    assert verdict.passed and verdict.basis == "same_rows"
    assert verdict.reason.endswith(f"[the eval set was not usable: {broken['error']}]")
    # A champion the eval set could not score leaves no eval comparison either.
    half = EVAL | {"champion": {"error": "columns changed: -a"}}
    recorded = judge(
        deploy(eval_uri=EVAL["uri"]), {"val_accuracy": 0.95, "eval_set": half}, 0.8, CHAMPION_DIR
    )
    assert recorded.basis == "recorded" and recorded.champion_metric == 0.8
    assert "the champion was not scored on the eval set: columns changed: -a" in recorded.reason


def test_without_a_champion_a_configured_eval_set_carries_the_threshold():
    first = {"val_accuracy": 0.99, "eval_set": {k: v for k, v in EVAL.items() if k != "champion"}}
    verdict = judge(deploy(eval_uri=EVAL["uri"], min_value=0.95), first, None, None)
    assert not verdict.passed and verdict.basis == "eval_set" and verdict.champion_metric is None
    assert verdict.reason == "val_accuracy 0.91 does not reach the threshold (>= 0.95)"


def test_the_recorded_metric_is_the_fallback_and_the_decision_says_so():
    broken = {
        "model_dir": CHAMPION_DIR,
        "error": "cannot score the champion: model.onnx is not a loadable model",
    }
    verdict = judge(deploy(), {"val_accuracy": 0.95, "champion": broken}, 0.9, CHAMPION_DIR)
    assert verdict.passed and verdict.basis == "recorded" and verdict.champion_metric == 0.9
    assert verdict.reason == (
        "val_accuracy 0.95 passes the gate (champion 0.9, recorded) [the champion was not scored "
        f"on the same rows: {broken['error']}]"
    )
    # Figures of a champion that has since been replaced are another model's: not used.
    stale = {"val_accuracy": 0.95, "champion": SAME_ROWS | {"val_accuracy": 0.99}, "eval_set": EVAL}
    moved = judge(
        deploy(eval_uri=EVAL["uri"]), stale, 0.9, "gs://acme-artifacts/runs/churn/r2/model/"
    )
    assert moved.passed and moved.basis == "recorded"
    assert f"metrics.json scored {CHAMPION_DIR}, but the champion is now" in moved.reason
    # The same directory with or without its trailing slash is the same champion.
    assert (
        judge(
            deploy(), {"val_accuracy": 0.95, "champion": SAME_ROWS}, 0.9, CHAMPION_DIR.rstrip("/")
        ).basis
        == "same_rows"
    )


SCHEMA_CHANGE = {
    "model_dir": CHAMPION_DIR,
    "error": "columns changed: +plan, -region, ~tenure (numeric -> categorical)",
}


def test_a_schema_change_rejects_by_default_naming_the_columns():
    verdict = judge(
        deploy(min_value=0.5), {"val_accuracy": 0.99, "champion": SCHEMA_CHANGE}, 0.9, CHAMPION_DIR
    )

    assert not verdict.passed and verdict.basis == "none" and verdict.champion_metric is None
    assert verdict.reason == (
        "the champion cannot score the new data (columns changed: +plan, -region, "
        "~tenure (numeric -> categorical)); deploy.on_schema_change is 'reject'"
    )


def test_a_schema_change_judged_alone_uses_threshold_and_gates_only():
    gate = deploy(
        min_value=0.5, on_schema_change="judge_alone", gates=(GateCondition("val_loss", max=0.4),)
    )
    metrics = {"val_accuracy": 0.6, "val_loss": 0.3, "champion": SCHEMA_CHANGE}

    # The recorded 0.9 is the champion on other columns: not a comparison, so it passes.
    verdict = judge(gate, metrics, 0.9, CHAMPION_DIR)
    assert verdict.passed and verdict.basis == "none" and verdict.champion_metric is None
    assert verdict.reason.startswith("val_accuracy 0.6 passes the gate, judged alone: the champion")
    low = judge(gate, metrics | {"val_accuracy": 0.4, "val_loss": 0.5}, 0.9, CHAMPION_DIR)
    assert low.failures == (
        "val_accuracy 0.4 does not reach the threshold (>= 0.5)",
        "val_loss 0.5 is above the gate's max 0.4",
    )


def test_every_failed_condition_is_named():
    gate = deploy(
        min_value=0.9,
        gates=(
            GateCondition("val_loss", max=0.3),
            GateCondition("val_precision", min=0.8),
            GateCondition("val_recall", min=0.5, max=0.99),
            GateCondition("val_f1", min=0.1),
        ),
    )
    metrics = {"val_accuracy": 0.85, "val_loss": 0.35, "val_precision": 0.7, "val_recall": 1.0,
               "champion": {"model_dir": CHAMPION_DIR, "rows": 10, "val_accuracy": 0.86}}  # fmt: skip

    verdict = judge(gate, metrics, None, CHAMPION_DIR)

    assert verdict.failures == (
        "val_accuracy 0.85 does not reach the threshold (>= 0.9)",
        "val_loss 0.35 is above the gate's max 0.3",
        "val_precision 0.7 is below the gate's min 0.8",
        "val_recall 1 is above the gate's max 0.99",
        "gate metric 'val_f1' is not a finite number in metrics.json: None",
        "val_accuracy 0.85 is not better than the champion's 0.86 (same rows, 10 rows)",
    )
    assert verdict.reason == "; ".join(verdict.failures)
    fixed = metrics | {"val_accuracy": 0.95, "val_loss": 0.3, "val_precision": 0.8,
                       "val_recall": 0.99, "val_f1": 0.5}  # fmt: skip
    assert judge(gate, fixed, None, CHAMPION_DIR).passed


def test_read_metric_names_what_is_wrong():
    assert read_metric({"val_accuracy": 1}, "val_accuracy") == 1.0
    with pytest.raises(ValueError, match=r"no metric 'val_accuracy' \(it has: val_loss\)"):
        read_metric({"val_loss": 0.3, "champion": {"val_accuracy": 0.9}}, "val_accuracy")
    for bad in ("0.9", True, float("nan"), None):
        with pytest.raises(ValueError, match="not a finite number"):
            read_metric({"val_accuracy": bad}, "val_accuracy")
    with pytest.raises(ValueError, match="no metric"):
        judge(deploy(), {"val_loss": 0.3}, 0.9)


def test_deploy_split_scales_the_others_into_the_rest():
    assert deploy_split({}, 100) == {NEW_MODEL: 100}
    assert deploy_split({"a": 100}, 100) == {NEW_MODEL: 100, "a": 0}
    assert deploy_split({"a": 100}, 10) == {NEW_MODEL: 10, "a": 90}
    split = deploy_split({"a": 50, "b": 50, "c": 0}, 15)
    assert split[NEW_MODEL] == 15 and sum(split.values()) == 100 and split["c"] == 0
    assert {split["a"], split["b"]} == {42, 43}
    assert deploy_split({"a": 0}, 10) == {NEW_MODEL: 100, "a": 0}  # nobody to share with


def test_without_gives_the_share_back():
    assert without({"new": 10, "old": 90}, "new") == {"old": 100}
    assert without({"new": 100, "old": 0}, "new") == {"old": 100}
    assert without({"new": 100}, "new") == {}
    split = without({"new": 40, "a": 30, "b": 30}, "new")
    assert split == {"a": 50, "b": 50}
