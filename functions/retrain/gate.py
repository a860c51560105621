"""The quality gate and the traffic arithmetic of a deployment: pure functions, no I/O.

A run's model passes when its metric clears the configured threshold in the goal's
direction, every `deploy.gates` condition holds and, with `must_beat_champion`, it is
strictly better than the champion. The champion comparison uses the fairest figures
metrics.json offers (its `basis`):

* `eval_set`: both models scored on the fixed evaluation set; first when `deploy.eval_uri`
  is configured, otherwise after the same rows;
* `same_rows`: the champion scored on the new model's own validation rows;
* `recorded`: the metric the champion recorded on its own validation rows, when the run
  brought no figure of its own (an older trainer, or a champion it could not load);
* `none`: nothing to compare with (no champion, or a schema change judged alone).

A champion that cannot score the new data (its `error` says "columns changed: …") follows
`deploy.on_schema_change`: "reject" the new model, or "judge_alone" on threshold and gates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrain.config import Deploy, GateCondition

NEW_MODEL = "0"  # DeployModelRequest.traffic_split key for the model being deployed
SAME_ROWS, EVAL_SET, RECORDED, NONE = "same_rows", "eval_set", "recorded", "none"
SCHEMA_CHANGE = "columns changed"  # how the trainer's champion error starts for a schema change
_BASIS_WORDS = {SAME_ROWS: "same rows", EVAL_SET: "eval set", RECORDED: "recorded"}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # every failed condition, or why it passed, and on what basis
    metric: float | None = None  # the new model's figure the decision used
    champion_metric: float | None = None  # the champion's figure on the same basis
    basis: str = NONE
    rows: int | None = None  # how many rows both figures come from (same rows, eval set)
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Basis:
    kind: str
    candidate: Mapping[str, Any]  # the new model's figures on this basis
    champion: float | None = None
    rows: int | None = None
    schema_change: str | None = None
    note: str | None = None  # why a fairer basis was not used


def basis_text(basis: str | None, rows: int | None) -> str | None:
    """`same rows, 361 rows`, `eval set, 500 rows`, `recorded`: for people."""
    words = _BASIS_WORDS.get(basis or "")
    if words is None:
        return None
    return f"{words}, {rows} rows" if rows is not None else words


def read_metric(metrics: Mapping[str, Any], name: str) -> float:
    """The gate metric from a parsed metrics.json; ValueError names what is wrong."""
    if name not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if not isinstance(v, dict)))
        raise ValueError(f"metrics.json has no metric {name!r} (it has: {known or 'none'})")
    value = metrics[name]
    if not _number(value):
        raise ValueError(f"metrics.json metric {name!r} is not a finite number: {value!r}")
    return float(value)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _better(value: float, than: float, goal: str) -> bool:
    return value > than if goal == "maximize" else value < than


def _clears(value: float, threshold: float, goal: str) -> bool:
    return value >= threshold if goal == "maximize" else value <= threshold


def judge(
    deploy: Deploy,
    metrics: Mapping[str, Any],
    recorded: float | None,
    champion_dir: str | None = None,
) -> Verdict:
    """Pass or reject the model whose parsed metrics.json is `metrics`. `recorded` is the
    metric stored with the current champion, `champion_dir` its artifact directory (None
    when there is no champion). Raises ValueError when the gate metric itself is unusable."""
    read_metric(metrics, deploy.metric)
    basis = _choose_basis(deploy, metrics, recorded, champion_dir)
    name = deploy.metric
    value = float(basis.candidate[name])
    failures: list[str] = []
    if basis.schema_change and deploy.on_schema_change == "reject":
        failures.append(
            f"the champion cannot score the new data ({basis.schema_change}); "
            "deploy.on_schema_change is 'reject'"
        )
    word = ">=" if deploy.goal == "maximize" else "<="
    if deploy.min_value is not None and not _clears(value, deploy.min_value, deploy.goal):
        failures.append(
            f"{name} {value:g} does not reach the threshold ({word} {deploy.min_value:g})"
        )
    failures += [f for gate in deploy.gates if (f := _gate_failure(gate, basis.candidate))]
    champion = basis.champion
    where = basis_text(basis.kind, basis.rows)
    beaten = champion is None or _better(value, champion, deploy.goal)
    if deploy.must_beat_champion and not beaten:
        failures.append(
            f"{name} {value:g} is not better than the champion's {champion:g} ({where})"
        )
    if failures:
        reason = "; ".join(failures)
    else:
        reason = f"{name} {value:g} passes the gate"
        if champion is not None:
            reason += f" (champion {champion:g}, {where})"
        elif basis.schema_change:
            reason += (
                f", judged alone: the champion cannot score the new data ({basis.schema_change})"
            )
    if basis.note:
        reason += f" [{basis.note}]"
    return Verdict(not failures, reason, value, champion, basis.kind, basis.rows, tuple(failures))


def _gate_failure(gate: GateCondition, figures: Mapping[str, Any]) -> str | None:
    raw: Any = figures.get(gate.metric)
    if not _number(raw):
        return f"gate metric {gate.metric!r} is not a finite number in metrics.json: {raw!r}"
    value = float(raw)
    if gate.min is not None and value < gate.min:
        return f"{gate.metric} {value:g} is below the gate's min {gate.min:g}"
    if gate.max is not None and value > gate.max:
        return f"{gate.metric} {value:g} is above the gate's max {gate.max:g}"
    return None


def _choose_basis(
    deploy: Deploy, metrics: Mapping[str, Any], recorded: float | None, champion_dir: str | None
) -> _Basis:
    name = deploy.metric
    notes: list[str] = []
    block = _block(metrics, "champion")
    evaluation = _block(metrics, "eval_set")
    scored_dir = block.get("model_dir") if block else None
    if champion_dir and isinstance(scored_dir, str) and not _same_dir(scored_dir, champion_dir):
        # The champion moved since the job started: its figures are another model's.
        notes.append(f"metrics.json scored {scored_dir}, but the champion is now {champion_dir}")
        block = None
        evaluation = _without_champion(evaluation)
    same_rows: _Basis | None = None
    schema_change: str | None = None
    if block:
        error = block.get("error")
        if isinstance(error, str) and error.startswith(SCHEMA_CHANGE):
            schema_change = error
        elif _number(block.get(name)):
            rows = block.get("rows")
            same_rows = _Basis(
                SAME_ROWS, metrics, float(block[name]), rows if isinstance(rows, int) else None
            )
        else:
            notes.append(f"the champion was not scored on the same rows: {error or f'no {name}'}")
    eval_set = _eval_basis(evaluation, metrics, name, notes)
    note = "; ".join(notes) or None

    def chosen(b: _Basis) -> _Basis:
        return _Basis(b.kind, b.candidate, b.champion, b.rows, b.schema_change, note)

    if deploy.eval_uri and eval_set and eval_set.champion is not None:
        return chosen(eval_set)
    if same_rows:
        return chosen(same_rows)
    if schema_change:
        return _Basis(NONE, metrics, schema_change=schema_change, note=note)
    if eval_set and eval_set.champion is not None:
        return chosen(eval_set)
    if recorded is not None:
        return _Basis(RECORDED, metrics, recorded, note=note)
    if deploy.eval_uri and eval_set and champion_dir is None and not block:
        return chosen(eval_set)  # no champion yet: the threshold applies to the eval set
    return _Basis(NONE, metrics, note=note)


def _eval_basis(
    evaluation: Mapping[str, Any] | None, metrics: Mapping[str, Any], name: str, notes: list[str]
) -> _Basis | None:
    if evaluation is None:
        return None
    candidate = _block(evaluation, "candidate")
    if evaluation.get("error") or not candidate or not _number(candidate.get(name)):
        problem = evaluation.get("error") or (candidate or {}).get("error") or f"no {name}"
        notes.append(f"the eval set was not usable: {problem}")
        return None
    rows = evaluation.get("rows")
    champion = _block(evaluation, "champion")
    figure: float | None = None
    if champion is not None:
        if _number(champion.get(name)):
            figure = float(champion[name])
        else:
            notes.append(f"the champion was not scored on the eval set: {champion.get('error')}")
    # Gate conditions read the eval set's figures first, the run's own for the rest.
    figures = {**metrics, **candidate}
    return _Basis(EVAL_SET, figures, figure, rows if isinstance(rows, int) else None)


def _block(parent: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    value = parent.get(key) if parent else None
    return value if isinstance(value, Mapping) else None


def _without_champion(evaluation: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if evaluation is None:
        return None
    return {k: v for k, v in evaluation.items() if k != "champion"}


def _same_dir(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


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
