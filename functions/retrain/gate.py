"""The quality gate and the traffic arithmetic of a deployment: pure functions, no I/O.

A run's model passes when its metric clears the configured threshold in the goal's
direction and, with `must_beat_champion`, is strictly better than the champion's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrain.config import Deploy

NEW_MODEL = "0"  # DeployModelRequest.traffic_split key for the model being deployed


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    metric: float | None = None
    champion_metric: float | None = None


def read_metric(metrics: Mapping[str, Any], name: str) -> float:
    """The gate metric from a parsed metrics.json; ValueError names what is wrong."""
    if name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise ValueError(f"metrics.json has no metric {name!r} (it has: {known})")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"metrics.json metric {name!r} is not a finite number: {value!r}")
    return float(value)


def _better(value: float, than: float, goal: str) -> bool:
    return value > than if goal == "maximize" else value < than


def _clears(value: float, threshold: float, goal: str) -> bool:
    return value >= threshold if goal == "maximize" else value <= threshold


def judge(deploy: Deploy, value: float, champion: float | None) -> Verdict:
    """Pass or reject a model whose gate metric is `value`; `champion` is the current
    champion's metric (None when there is no champion, or it has no metric)."""
    metric = deploy.metric
    word = ">=" if deploy.goal == "maximize" else "<="
    if deploy.min_value is not None and not _clears(value, deploy.min_value, deploy.goal):
        return Verdict(
            False,
            f"{metric} {value:g} does not reach the threshold ({word} {deploy.min_value:g})",
            value,
            champion,
        )
    beaten = champion is None or _better(value, champion, deploy.goal)
    if deploy.must_beat_champion and not beaten:
        return Verdict(
            False,
            f"{metric} {value:g} is not better than the champion's {champion:g}",
            value,
            champion,
        )
    return Verdict(True, f"{metric} {value:g} passes the gate", value, champion)


def deploy_split(current: Mapping[str, int], percent: int) -> dict[str, int]:
    """The DeployModel traffic split giving the new model `percent` and scaling the
    current split into the rest (largest remainders first, so it sums to 100)."""
    live = {key: share for key, share in current.items() if share > 0}
    if percent >= 100 or not live:
        return {NEW_MODEL: 100, **{key: 0 for key in current}}
    rest = 100 - percent
    total = sum(live.values())
    exact = {key: share * rest / total for key, share in live.items()}
    split = {key: math.floor(value) for key, value in exact.items()}
    short = rest - sum(split.values())
    for key in sorted(exact, key=lambda k: exact[k] - split[k], reverse=True)[:short]:
        split[key] += 1
    return {NEW_MODEL: percent, **{key: split.get(key, 0) for key in current}}


def without(current: Mapping[str, int], deployed_id: str) -> dict[str, int]:
    """The split once `deployed_id` is gone: its share goes back to the others in
    proportion (all to the first one when none of them had any)."""
    remaining = {key: share for key, share in current.items() if key != deployed_id}
    if not remaining:
        return {}
    total = sum(remaining.values())
    if total == 0:
        first = sorted(remaining)[0]
        return {key: (100 if key == first else 0) for key in remaining}
    scaled = deploy_split({k: v for k, v in remaining.items()}, 0)
    scaled.pop(NEW_MODEL)
    return scaled
