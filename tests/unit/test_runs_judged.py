"""`retrain runs` shows the comparison the gate made: both figures and on which rows."""

from __future__ import annotations

from retrain.cli.runs import judged


def test_same_rows_eval_set_and_recorded_comparisons_read_with_both_figures():
    same = {"metric": 0.9815, "champion_metric": 0.9753, "basis": "same_rows", "basis_rows": 361}
    assert judged(same) == "0.9815 vs champion 0.9753 (same rows, 361 rows)"
    evaluation = {**same, "basis": "eval_set", "basis_rows": 500}
    assert judged(evaluation) == "0.9815 vs champion 0.9753 (eval set, 500 rows)"
    recorded = {**same, "basis": "recorded", "basis_rows": None}
    assert judged(recorded) == "0.9815 vs champion 0.9753 (recorded)"


def test_no_comparison_shows_a_dash():
    assert judged({"metric": 0.97, "basis": "none"}) == "-"
    assert judged({}) == "-"
