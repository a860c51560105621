"""The quality gate and the traffic arithmetic, as pure functions."""

from __future__ import annotations

import pytest

from retrain.config import Deploy
from retrain.gate import NEW_MODEL, deploy_split, judge, read_metric, without


def deploy(**fields) -> Deploy:
    return Deploy(model="churn", endpoint="churn", serving_image_uri="serving", **fields)


def test_threshold_in_the_goal_direction():
    assert judge(deploy(min_value=0.8), 0.8, None).passed
    low = judge(deploy(min_value=0.8), 0.79, None)
    assert not low.passed and "does not reach the threshold (>= 0.8)" in low.reason
    loss = deploy(metric="val_loss", goal="minimize", min_value=0.5)
    assert judge(loss, 0.5, None).passed
    assert not judge(loss, 0.51, None).passed


def test_must_beat_the_champion_strictly_unless_disabled():
    gate = deploy(min_value=0.5)
    assert judge(gate, 0.91, 0.9).passed
    tie = judge(gate, 0.9, 0.9)
    assert not tie.passed and "not better than the champion's 0.9" in tie.reason
    assert judge(deploy(min_value=0.5, must_beat_champion=False), 0.7, 0.9).passed
    loss = deploy(metric="val_loss", goal="minimize")
    assert judge(loss, 0.2, 0.3).passed and not judge(loss, 0.4, 0.3).passed


def test_read_metric_names_what_is_wrong():
    assert read_metric({"val_accuracy": 1}, "val_accuracy") == 1.0
    with pytest.raises(ValueError, match=r"no metric 'val_accuracy' \(it has: val_loss\)"):
        read_metric({"val_loss": 0.3}, "val_accuracy")
    for bad in ("0.9", True, float("nan"), None):
        with pytest.raises(ValueError, match="not a finite number"):
            read_metric({"val_accuracy": bad}, "val_accuracy")


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
