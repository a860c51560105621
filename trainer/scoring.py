"""Scoring a servable model on rows of a table, so that the new model and the champion are
judged on the same rows with the same metric definitions; and the column differences that
stop a champion from scoring the new data.

A model is scored through its ONNX graph (serving's `Model`), exactly as it answers
predictions. Tallies are sums, so replicas that each hold part of the rows add theirs up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from trainer.features import Schema, Task, encode_features
from trainer.serving import Model

# -log(p) of a probability the float32 softmax rounds to 0 (or of a class the model does
# not know) would be infinite; this caps one row's loss at about 27.6.
MIN_PROBABILITY = 1e-12


@dataclass(frozen=True)
class Tally:
    rows: float = 0.0
    correct: float = 0.0  # classification: rows whose most likely class is the label
    log_loss: float = 0.0  # classification: sum of -log p(label)
    squared: float = 0.0  # regression: sum of squared errors, in the label's units

    def values(self) -> list[float]:
        return list(astuple(self))

    @classmethod
    def of(cls, values: Sequence[float]) -> Tally:
        return cls(*values)


def column_changes(old: Schema, new: Schema) -> list[str]:
    """What stops a model with schema `old` from scoring data with schema `new`: `+a` (a
    column added), `-b` (removed), `~c (numeric -> categorical)` (retyped); empty when the
    columns match. The label counts as a column, typed by its task."""
    before = _kinds(old)
    after = _kinds(new)
    added = [f"+{name}" for name in after if name not in before]
    removed = [f"-{name}" for name in before if name not in after]
    retyped = [
        f"~{name} ({before[name]} -> {kind})"
        for name, kind in after.items()
        if name in before and before[name] != kind
    ]
    return added + removed + retyped


def _kinds(schema: Schema) -> dict[str, str]:
    kinds = {f.name: str(f.kind) for f in schema.features}
    kinds[schema.label.name] = schema.label.task
    return kinds


def missing_columns(schema: Schema, columns: Mapping[str, np.ndarray]) -> list[str]:
    """Columns the model needs that a table lacks, or holds as text where it needs numbers."""
    problems: list[str] = []
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    if schema.label.task == "regression":
        numeric.add(schema.label.name)
    for name in [f.name for f in schema.features] + [schema.label.name]:
        if name not in columns:
            problems.append(f"-{name}")
        elif name in numeric and columns[name].dtype.kind != "f":
            problems.append(f"~{name} (numeric -> text)")
    return problems


def score(model: Model, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> Tally:
    """The model's tally on `rows` of `columns` (which must hold its feature columns)."""
    if len(rows) == 0:
        return Tally()
    schema = model.schema
    needed = [f.name for f in schema.features]
    subset = {name: columns[name][rows] for name in needed}
    outputs = model.outputs(encode_features(schema, subset)).astype(np.float64)
    truth = columns[schema.label.name][rows]
    label = schema.label
    if label.task == "regression":
        predicted = outputs.reshape(-1) * label.std + label.mean
        errors = predicted - truth.astype(np.float64)
        return Tally(rows=float(len(rows)), squared=float((errors * errors).sum()))
    index = _class_index(schema, truth)
    known = index >= 0
    probability = np.zeros(len(rows))
    probability[known] = outputs[np.nonzero(known)[0], index[known]]
    correct = known & (outputs.argmax(axis=1) == index)
    return Tally(
        rows=float(len(rows)),
        correct=float(correct.sum()),
        log_loss=float(-np.log(np.maximum(probability, MIN_PROBABILITY)).sum()),
    )


def _class_index(schema: Schema, values: np.ndarray) -> np.ndarray:
    """Each label's position among the model's classes; -1 for a class it does not know."""
    label = schema.label
    if label.numeric_classes:
        classes = np.array([float(c) for c in label.classes])
        try:
            keys = values.astype(np.float64)
        except ValueError:
            return np.full(len(values), -1)
    else:
        classes = np.array(label.classes, dtype=str)
        keys = values.astype(str) if values.dtype.kind != "f" else _number_texts(values)
    index = np.searchsorted(classes, keys).clip(0, len(classes) - 1)
    return np.where(classes[index] == keys, index, -1)


def _number_texts(values: np.ndarray) -> np.ndarray:
    # 3.0 -> "3": how a numeric column's values are named as text classes.
    return np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values])


def metrics(tally: Tally, task: Task, label_std: float) -> dict[str, float]:
    """The trainer's validation metrics from a tally, under the same names: val_accuracy
    and val_loss (cross-entropy), or val_rmse (label units) and val_loss (mean squared
    error on labels standardised with `label_std`, the new model's scale)."""
    rows = max(tally.rows, 1.0)
    if task == "classification":
        return {"val_accuracy": tally.correct / rows, "val_loss": tally.log_loss / rows}
    mse = tally.squared / rows
    return {"val_rmse": math.sqrt(mse), "val_loss": mse / (label_std * label_std)}
