"""The comparison blocks of metrics.json: the champion scored on the new model's validation
rows (`champion`), and both models scored on a fixed evaluation set (`eval_set`).

A comparison is advice to the quality gate, never a reason to fail the training: whatever
goes wrong with the champion or the evaluation set is written into its block as `error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.data import data_files, load_shard
from trainer.distributed import Collective
from trainer.errors import TrainerError
from trainer.features import Schema
from trainer.scoring import Tally, column_changes, metrics, missing_columns, score
from trainer.serving import Model


@dataclass(frozen=True)
class Champion:
    """The champion as loaded for this run: its metrics.json block, and the model when it
    can score the new data."""

    block: dict[str, Any]
    model: Model | None


def score_champion(
    champion_dir: str,
    schema: Schema,
    columns: Mapping[str, np.ndarray],
    val_rows: np.ndarray,
    collective: Collective,
) -> Champion:
    """Score the champion on exactly the validation rows the new model was scored on.
    Every replica scores its own validation rows; the tallies are summed."""
    problem: str | None = None
    model: Model | None = None
    tally = Tally()
    try:
        model = Model.load(champion_dir)
        changes = column_changes(model.schema, schema)
        if changes:
            problem = "columns changed: " + ", ".join(changes)
        else:
            tally = score(model, columns, val_rows)
    except Exception as err:  # a broken champion must not fail the new model's training
        problem = f"cannot score the champion: {_message(err)}"
    # Every replica takes part in both collectives, whatever happened to it.
    problems = [p for p in collective.gather(problem) if p]
    total = Tally.of(collective.sum(tally.values()))
    if problems:
        return Champion({"model_dir": champion_dir, "error": problems[0]}, None)
    figures = metrics(total, schema.label.task, schema.label.std)
    return Champion({"model_dir": champion_dir, "rows": int(total.rows), **figures}, model)


def score_eval_set(
    eval_uri: str,
    candidate: Model,
    champion: Champion | None,
    categorical: frozenset[str],
) -> dict[str, Any]:
    """Both models on the fixed evaluation set (a CSV file or a prefix of them)."""
    schema = candidate.schema
    models = [candidate] + ([champion.model] if champion and champion.model else [])
    # Categorical columns stay text, as they were when each model was trained.
    text_columns = categorical | {
        f.name for m in models for f in m.schema.features if f.kind == "categorical"
    }
    try:
        table = load_shard(data_files(eval_uri), schema.label.name, frozenset(text_columns))
    except TrainerError as err:
        return {"uri": eval_uri, "error": _message(err)}
    rows = np.arange(table.rows)
    block: dict[str, Any] = {
        "uri": eval_uri,
        "rows": table.rows,
        "candidate": _figures(candidate, table.columns, rows, schema),
    }
    if champion is not None:
        if champion.model is None:
            block["champion"] = {"error": champion.block.get("error", "not loaded")}
        else:
            block["champion"] = _figures(champion.model, table.columns, rows, schema)
    return block


def _figures(
    model: Model, columns: Mapping[str, np.ndarray], rows: np.ndarray, reference: Schema
) -> dict[str, Any]:
    problems = missing_columns(model.schema, columns)
    if problems:
        return {"error": "columns changed: " + ", ".join(problems)}
    try:
        tally = score(model, columns, rows)
    except Exception as err:  # the evaluation set is advice: report, do not fail
        return {"error": f"cannot score: {_message(err)}"}
    return metrics(tally, reference.label.task, reference.label.std)


def _message(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, TrainerError) else f"{type(err).__name__}: {text}"
