"""Encoding instances: the fast path for plain numbers equals the checking path."""

from __future__ import annotations

import numpy as np

from trainer.features import (
    Feature,
    Label,
    Schema,
    columns_from_instances,
    encode_features,
    encode_instances,
)

SCHEMA = Schema(
    features=(Feature("a", "numeric", mean=1.0, std=2.0), Feature("b", "numeric", mean=-3.0)),
    label=Label("y", "classification", classes=("0", "1")),
)


def test_plain_numbers_encode_like_the_checking_path() -> None:
    as_lists = [[1, 2.5], [3.0, -4]]
    as_dicts = [{"a": 1, "b": 2.5}, {"a": 3.0, "b": -4, "y": 1}]  # the label may ride along
    as_text = [["1", "2.5"], ["3", "-4"]]  # only the checking path accepts text numbers

    checked = encode_features(SCHEMA, columns_from_instances(SCHEMA, as_text))

    np.testing.assert_array_equal(encode_instances(SCHEMA, as_lists), checked)
    np.testing.assert_array_equal(encode_instances(SCHEMA, as_dicts), checked)
    np.testing.assert_allclose(checked, [[0.0, 5.5], [1.0, -1.0]])


def test_categories_one_hot_and_unseen_ones_encode_as_zeros() -> None:
    schema = Schema(
        features=(Feature("plan", "categorical", categories=("basic", "pro")),),
        label=SCHEMA.label,
    )

    encoded = encode_instances(schema, [["pro"], ["basic"], ["enterprise"]])

    np.testing.assert_array_equal(encoded, [[0, 1], [1, 0], [0, 0]])
