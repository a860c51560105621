"""The demo's trial table: a HyperparameterTuningJob's trials as rows (id, parameters,
final metric, state), the chosen trial marked, a failed trial's reason shown."""

from __future__ import annotations

from typing import Any

from google.cloud import aiplatform_v1

from localcloud.demo.trials import CHOSEN_MARK, table_lines, trial_rows, value_text

T = aiplatform_v1.Trial.State


def _job() -> Any:
    return aiplatform_v1.HyperparameterTuningJob(
        display_name="retrain-digits-tuned-r1",
        study_spec={"metrics": [{"metric_id": "val_accuracy", "goal": "MAXIMIZE"}]},
        trials=[
            {
                "id": "10",
                "state": T.SUCCEEDED,
                "parameters": [
                    {"parameter_id": "lr", "value": 0.0196},
                    {"parameter_id": "hidden_units", "value": "32"},
                ],
                "final_measurement": {
                    "step_count": 10,
                    "metrics": [
                        {"metric_id": "val_loss", "value": 0.2},
                        {"metric_id": "val_accuracy", "value": 0.98456},
                    ],
                },
            },
            {
                "id": "2",
                "state": T.INFEASIBLE,
                "infeasible_reason": "the trial reported no value of val_accuracy",
                "parameters": [
                    {"parameter_id": "lr", "value": 0.001},
                    {"parameter_id": "hidden_units", "value": "128,64"},
                ],
            },
            {
                "id": "1",
                "state": T.SUCCEEDED,
                "parameters": [
                    {"parameter_id": "lr", "value": 0.00469049},
                    {"parameter_id": "hidden_units", "value": "128,64"},
                ],
                "final_measurement": {
                    "step_count": 10,
                    "metrics": [{"metric_id": "val_accuracy", "value": 0.99383}],
                },
            },
        ],
    )


def test_rows_are_in_trial_order_with_the_studys_metric() -> None:
    rows = trial_rows(_job())

    assert [r.id for r in rows] == ["1", "2", "10"]  # numerically, as Vertex numbers them
    assert [r.metric for r in rows] == [0.99383, None, 0.98456]  # not val_loss
    assert [r.state for r in rows] == ["SUCCEEDED", "INFEASIBLE", "SUCCEEDED"]
    assert rows[0].parameters == {"lr": 0.00469049, "hidden_units": "128,64"}
    assert rows[1].reason == "the trial reported no value of val_accuracy"


def test_the_table_is_aligned_and_marks_the_chosen_trial() -> None:
    lines = table_lines(trial_rows(_job()), "val_accuracy", chosen="1")

    assert lines == [
        "trial  hidden_units  lr       val_accuracy  state",
        f"1      128,64        0.00469  0.9938        SUCCEEDED   {CHOSEN_MARK}",
        "2      128,64        0.001    -             INFEASIBLE  "
        "(the trial reported no value of val_accuracy)",
        "10     32            0.0196   0.9846        SUCCEEDED",
    ]


def test_no_trial_is_marked_when_none_was_chosen() -> None:
    lines = table_lines(trial_rows(_job()), "val_accuracy", chosen=None)

    assert not any(CHOSEN_MARK in line for line in lines)


def test_parameter_values_read_as_people_write_them() -> None:
    assert value_text(64.0) == "64"  # an integer parameter arrives as a float
    assert value_text(0.0046904996) == "0.00469"
    assert value_text("128,64") == "128,64"
