"""The model's view of a table: which columns are features, how they are encoded and
normalised, what the label means. Pure numpy, shared by training and serving, so a row is
encoded the same way in both.

Numeric features are standardised; categorical ones are one-hot encoded (an unseen
category encodes as all zeros). Classification labels become class indices; regression
labels are standardised and turned back into values after prediction.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trainer.errors import BadRequest, DataError

Task = Literal["classification", "regression"]

MAX_CATEGORIES = 100  # one-hot width per categorical feature: the most frequent values
MAX_INFERRED_CLASSES = 20  # an integer label with at most this many values is a class label
MAX_NUMERIC_DISTINCT = 1000  # distinct numbers tracked per column (enough for class labels)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical"]
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.categories)


@dataclass(frozen=True)
class Label:
    name: str
    task: Task
    classes: tuple[str, ...] = ()
    numeric_classes: bool = False  # classes are numbers written as text ("0", "1.5")
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    label: Label

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def outputs(self) -> int:
        return len(self.label.classes) if self.label.task == "classification" else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [
                {"name": f.name, "kind": f.kind, "mean": f.mean, "std": f.std}
                | ({"categories": list(f.categories)} if f.kind == "categorical" else {})
                for f in self.features
            ],
            "label": {"name": self.label.name, "task": self.label.task}
            | (
                {"classes": list(self.label.classes), "numeric_classes": self.label.numeric_classes}
                if self.label.task == "classification"
                else {"mean": self.label.mean, "std": self.label.std}
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schema:
        try:
            features = tuple(
                Feature(
                    name=str(f["name"]),
                    kind=f["kind"],
                    mean=float(f.get("mean", 0.0)),
                    std=float(f.get("std", 1.0)),
                    categories=tuple(str(c) for c in f.get("categories", ())),
                )
                for f in data["features"]
            )
            raw = data["label"]
            label = Label(
                name=str(raw["name"]),
                task=raw["task"],
                classes=tuple(str(c) for c in raw.get("classes", ())),
                numeric_classes=bool(raw.get("numeric_classes", False)),
                mean=float(raw.get("mean", 0.0)),
                std=float(raw.get("std", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"schema is malformed: {err!r}") from err
        for f in features:
            if f.kind not in ("numeric", "categorical"):
                raise ValueError(f"schema feature {f.name!r} has unknown kind {f.kind!r}")
        if label.task not in ("classification", "regression"):
            raise ValueError(f"schema label has unknown task {label.task!r}")
        return cls(features=features, label=label)


# --- summaries: what schema inference needs, mergeable across files and replicas ---------


@dataclass(frozen=True)
class ColumnSummary:
    count: int
    numeric: bool
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations (Chan et al. merge)
    integral: bool = True
    # Value counts: every text value; numbers only while there are few distinct ones.
    counts: Mapping[str, int] | None = field(default_factory=dict)
    where: str = ""  # a file holding this column, for messages
    non_number: tuple[str, int, str] | None = None  # (file, row, value) of a text value


def summarize(uri: str, values: np.ndarray) -> ColumnSummary:
    if values.dtype.kind == "f":
        count = len(values)
        mean = float(values.mean()) if count else 0.0
        m2 = float(((values - mean) ** 2).sum()) if count else 0.0
        distinct, tallies = np.unique(values, return_counts=True)
        counts = (
            {_number_text(v): int(c) for v, c in zip(distinct, tallies, strict=True)}
            if len(distinct) <= MAX_NUMERIC_DISTINCT
            else None
        )
        integral = bool(np.all(np.floor(values) == values))
        return ColumnSummary(count, True, mean, m2, integral, counts, uri)
    distinct, tallies = np.unique(values, return_counts=True)
    example = _first_non_number(values)
    return ColumnSummary(
        count=len(values),
        numeric=False,
        counts={str(v): int(c) for v, c in zip(distinct, tallies, strict=True)},
        where=uri,
        non_number=(uri, example[0] + 1, example[1]) if example else None,
    )


def merge(name: str, a: ColumnSummary, b: ColumnSummary) -> ColumnSummary:
    if a.count == 0:
        return b
    if b.count == 0:
        return a
    if a.numeric != b.numeric:
        number, text = (a, b) if a.numeric else (b, a)
        detail = ""
        if text.non_number:
            file, row, value = text.non_number
            detail = f" ({value!r} at row {row} of {file})"
        raise DataError(
            f"column {name!r} holds numbers in data file {number.where} but text in data "
            f"file {text.where}{detail}"
        )
    counts: dict[str, int] | None = None
    if a.counts is not None and b.counts is not None:
        merged = Counter(a.counts)
        merged.update(b.counts)
        counts = dict(merged)
        if a.numeric and len(counts) > MAX_NUMERIC_DISTINCT:
            counts = None
    count = a.count + b.count
    delta = b.mean - a.mean
    return ColumnSummary(
        count=count,
        numeric=a.numeric,
        mean=a.mean + delta * b.count / count,
        m2=a.m2 + b.m2 + delta * delta * a.count * b.count / count,
        integral=a.integral and b.integral,
        counts=counts,
        where=a.where,
        non_number=a.non_number or b.non_number,
    )


def merge_all(
    header: Sequence[str], summaries: Sequence[Mapping[str, ColumnSummary]]
) -> dict[str, ColumnSummary]:
    merged: dict[str, ColumnSummary] = {}
    for name in header:
        parts = [s[name] for s in summaries if name in s]
        total = parts[0]
        for part in parts[1:]:
            total = merge(name, total, part)
        merged[name] = total
    return merged


# --- schema inference ---------------------------------------------------------------------


def infer_schema(
    header: Sequence[str],
    summaries: Mapping[str, ColumnSummary],
    label: str,
    task: Task | None = None,
    where: str = "the data",
) -> Schema:
    target = summaries[label]
    if target.count == 0:
        raise DataError(f"{where} has a header but no data rows")
    resolved = task or _infer_task(target)
    features = tuple(_feature(name, summaries[name]) for name in header if name != label)
    if not features:
        raise DataError(f"{where} has no feature columns besides the label {label!r}")
    if resolved == "regression":
        if not target.numeric:
            detail = ""
            if target.non_number:
                file, row, value = target.non_number
                detail = f" ({value!r} at row {row} of {file})"
            raise DataError(f"label column {label!r} holds text{detail}; regression needs numbers")
        return Schema(features, Label(label, "regression", mean=target.mean, std=_std(target)))
    if target.counts is None:
        raise DataError(
            f"label column {label!r} has more than {MAX_NUMERIC_DISTINCT} distinct values: "
            "too many classes (pass --task=regression for a continuous label)"
        )
    if target.numeric:
        classes = tuple(sorted(target.counts, key=float))
    else:
        classes = tuple(sorted(target.counts))
    if len(classes) < 2:
        raise DataError(
            f"label column {label!r} has a single class {classes[0]!r} in all {target.count} "
            f"rows of {where}; classification needs at least two"
        )
    return Schema(features, Label(label, "classification", classes, numeric_classes=target.numeric))


def _infer_task(target: ColumnSummary) -> Task:
    if not target.numeric:
        return "classification"
    few = target.counts is not None and len(target.counts) <= MAX_INFERRED_CLASSES
    return "classification" if target.integral and few else "regression"


def _feature(name: str, summary: ColumnSummary) -> Feature:
    if summary.numeric:
        return Feature(name, "numeric", mean=summary.mean, std=_std(summary))
    counts = summary.counts or {}
    frequent = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_CATEGORIES]
    return Feature(name, "categorical", categories=tuple(sorted(frequent)))


def _std(summary: ColumnSummary) -> float:
    std = math.sqrt(summary.m2 / summary.count) if summary.count else 0.0
    return std if std > 1e-12 else 1.0  # a constant column: leave it unscaled


# --- encoding ----------------------------------------------------------------------------


def encode_features(schema: Schema, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Columns (float64 numbers or text) -> float32 matrix [rows, schema.width]."""
    rows = len(next(iter(columns.values()))) if columns else 0
    out = np.zeros((rows, schema.width), dtype=np.float32)
    at = 0
    for f in schema.features:
        values = columns[f.name]
        if f.kind == "numeric":
            out[:, at] = (values.astype(np.float64) - f.mean) / f.std
        elif f.categories:
            categories = np.array(f.categories, dtype=str)
            text = values.astype(str)
            index = np.searchsorted(categories, text).clip(0, len(categories) - 1)
            known = categories[index] == text
            out[np.nonzero(known)[0], at + index[known]] = 1.0
        at += f.width
    return out


def encode_labels(schema: Schema, values: np.ndarray) -> np.ndarray:
    """Label column -> int64 class indices, or float32 standardised values."""
    label = schema.label
    if label.task == "regression":
        return ((values.astype(np.float64) - label.mean) / label.std).astype(np.float32)
    if label.numeric_classes:
        classes: np.ndarray = np.array([float(c) for c in label.classes])
        keys: np.ndarray = values.astype(np.float64)
    else:
        classes = np.array(label.classes, dtype=str)
        keys = values.astype(str)
    index = np.searchsorted(classes, keys).clip(0, len(classes) - 1)
    if not np.all(classes[index] == keys):
        raise DataError(f"label column {label.name!r} holds a value outside its classes")
    return index.astype(np.int64)


def decode_predictions(schema: Schema, outputs: np.ndarray) -> list[dict[str, Any]]:
    """Model outputs (probabilities, or standardised values) -> JSON predictions."""
    label = schema.label
    if label.task == "regression":
        values = outputs.reshape(-1).astype(np.float64) * label.std + label.mean
        return [{"value": float(v)} for v in values]
    best = outputs.argmax(axis=1)
    return [
        {
            "label": label.classes[int(k)],
            "probabilities": {c: float(p) for c, p in zip(label.classes, row, strict=True)},
        }
        for k, row in zip(best, outputs, strict=True)
    ]


# --- instances (serving requests, smoke rows) --------------------------------------------


def columns_from_instances(schema: Schema, instances: Any) -> dict[str, np.ndarray]:
    """Prediction instances (objects by feature name, or lists in feature order) -> columns.
    Raises BadRequest naming the instance and the field."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list")
    names = [f.name for f in schema.features]
    known = {*names, schema.label.name}
    cells: dict[str, list[Any]] = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            unknown = sorted(set(instance) - known)
            if unknown:
                raise BadRequest(f"instance {i} has unknown field {unknown[0]!r}")
            for name in names:
                if name not in instance:
                    raise BadRequest(f"instance {i} lacks field {name!r}")
                cells[name].append(instance[name])
        elif isinstance(instance, list):
            if len(instance) != len(names):
                raise BadRequest(
                    f"instance {i} has {len(instance)} values; expected {len(names)} "
                    f"in this order: {', '.join(names)}"
                )
            for name, value in zip(names, instance, strict=True):
                cells[name].append(value)
        else:
            raise BadRequest(f"instance {i} must be an object or a list, not {_kind(instance)}")
    columns: dict[str, np.ndarray] = {}
    for f in schema.features:
        if f.kind == "numeric":
            columns[f.name] = _numbers(f.name, cells[f.name])
        else:
            columns[f.name] = np.array(
                [_category(i, f.name, v) for i, v in enumerate(cells[f.name])], dtype=str
            )
    return columns


def encode_instances(schema: Schema, instances: Any) -> np.ndarray:
    """Prediction instances -> the model's input matrix. Raises BadRequest."""
    matrix = _plain_numeric_matrix(schema, instances)
    if matrix is None:
        return encode_features(schema, columns_from_instances(schema, instances))
    means = np.array([f.mean for f in schema.features])
    stds = np.array([f.std for f in schema.features])
    return ((matrix - means) / stds).astype(np.float32)


def _plain_numeric_matrix(schema: Schema, instances: Any) -> np.ndarray | None:
    """The usual request, converted in one numpy call: numeric features only, every
    instance complete and made of plain JSON numbers. None sends it down the checking path."""
    if not isinstance(instances, list) or not instances:
        return None
    if any(f.kind != "numeric" for f in schema.features):
        return None
    names = [f.name for f in schema.features]
    rows: list[Any] = []
    for instance in instances:
        if type(instance) is list and len(instance) == len(names):
            rows.append(instance)
        elif type(instance) is dict and instance.keys() == set(names):
            rows.append([instance[name] for name in names])
        else:
            return None
    if not all(type(v) in _PLAIN_NUMBERS for row in rows for v in row):
        return None
    matrix = np.array(rows, dtype=np.float64)
    return matrix if np.isfinite(matrix).all() else None


def instances_from_columns(
    schema: Schema, columns: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows of a table as prediction instances (numbers stay numbers)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        instance: dict[str, Any] = {}
        for f in schema.features:
            value = columns[f.name][r]
            if f.kind == "categorical":
                instance[f.name] = str(value)
            else:
                number = float(value)
                instance[f.name] = int(number) if number.is_integer() else number
        out.append(instance)
    return out


_PLAIN_NUMBERS = frozenset({int, float})


def _numbers(name: str, values: list[Any]) -> np.ndarray:
    # Fast path for the usual request: plain JSON numbers, converted in one numpy call.
    if all(type(v) in _PLAIN_NUMBERS for v in values):
        array = np.array(values, dtype=np.float64)
        if np.isfinite(array).all():
            return array
    return np.array([_number(i, name, v) for i, v in enumerate(values)], dtype=np.float64)


def _number(i: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"instance {i} field {name!r} must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except ValueError as err:
        raise BadRequest(f"instance {i} field {name!r} must be a number, not {value!r}") from err
    if not math.isfinite(number):
        raise BadRequest(f"instance {i} field {name!r} must be a finite number, not {value!r}")
    return number


def _category(i: int, name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_text(float(value))
    raise BadRequest(f"instance {i} field {name!r} must be text, not {_kind(value)}")


def _kind(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        dict: "an object",
        list: "a list",
        str: "text",
    }.get(type(value), "a number")


def _number_text(value: float) -> str:
    """3.0 -> "3", 0.5 -> "0.5": how numeric class labels and categories are named."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _first_non_number(values: np.ndarray) -> tuple[int, str] | None:
    for i, s in enumerate(values):
        try:
            float(s)
        except ValueError:
            return i, str(s)
    return None
