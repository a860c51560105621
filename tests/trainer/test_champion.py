"""The new model and the champion judged on the same rows: the champion's figures in
metrics.json are what serving that champion on those rows gives."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.conftest import DIGITS_HP, digits_csv
from trainer.features import instances_from_columns
from trainer.serving import Model
from trainer.table import parse_csv
from trainer.task import Hyperparameters, Inputs, Outputs, TrainingResult, main, run, split_rows


@dataclass(frozen=True)
class Compared:
    result: TrainingResult
    model_dir: Path
    champion_dir: Path
    data: Path
    eval_file: Path
    stdout: str


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """A weak champion (two epochs on 300 rows), then a new model trained on the first
    1500 rows with that champion and a fixed evaluation set of the rest."""
    root = tmp_path_factory.mktemp("compared")
    (root / "old.csv").write_text(digits_csv(slice(0, 300)))
    champion_dir = root / "champion"
    run(str(root / "old.csv"), "digit", Outputs(str(champion_dir)),
        Hyperparameters(epochs=2, lr=1e-3, batch_size=64), out=io.StringIO())  # fmt: skip
    data, eval_file = root / "new.csv", root / "golden.csv"
    data.write_text(digits_csv(slice(0, 1500)))
    eval_file.write_text(digits_csv(slice(1500, None)))
    model_dir = root / "model"
    out = io.StringIO()
    result = run(
        str(data),
        "digit",
        Outputs(str(model_dir)),
        DIGITS_HP,
        inputs=Inputs(champion_model_dir=str(champion_dir), eval_uri=str(eval_file)),
        out=out,
    )
    return Compared(result, model_dir, champion_dir, data, eval_file, out.getvalue())


def _served_figures(model_dir: Path, csv: Path, rows: np.ndarray) -> dict[str, float]:
    """Accuracy and log loss of the model as the serving container answers for `rows`."""
    model = Model.load(str(model_dir))
    table = parse_csv(str(csv), csv.read_bytes())
    columns = {name: column.values for name, column in table.columns.items()}
    predictions = model.predict(instances_from_columns(model.schema, columns, rows.tolist()))
    truth = [str(int(v)) for v in columns["digit"][rows]]
    hits = sum(p["label"] == t for p, t in zip(predictions, truth, strict=True))
    losses = [-math.log(p["probabilities"][t]) for p, t in zip(predictions, truth, strict=True)]
    return {"val_accuracy": hits / len(rows), "val_loss": sum(losses) / len(rows)}


def test_the_champion_on_the_same_rows_scores_what_serving_it_gives(compared: Compared) -> None:
    metrics = json.loads((compared.model_dir / "metrics.json").read_text())
    _, val_rows = split_rows(1500, DIGITS_HP, rank=0)

    served = _served_figures(compared.champion_dir, compared.data, val_rows)

    champion = metrics["champion"]
    assert champion["model_dir"] == str(compared.champion_dir)
    assert champion["rows"] == len(val_rows) == 300
    assert champion["val_accuracy"] == served["val_accuracy"]
    assert champion["val_loss"] == pytest.approx(served["val_loss"], rel=1e-4)
    # The flat metrics are the new model's, on the same rows; the champion is weaker.
    assert metrics["val_accuracy"] == pytest.approx(compared.result.metrics["val_accuracy"])
    assert champion["val_accuracy"] < metrics["val_accuracy"]
    assert f"on the same 300 rows: val_accuracy={champion['val_accuracy']:.4f}" in compared.stdout


def test_both_models_on_the_eval_set_score_what_serving_them_gives(compared: Compared) -> None:
    block = json.loads((compared.model_dir / "metrics.json").read_text())["eval_set"]
    rows = np.arange(1797 - 1500)

    assert block["uri"] == str(compared.eval_file) and block["rows"] == len(rows)
    for who, model_dir in (("candidate", compared.model_dir), ("champion", compared.champion_dir)):
        served = _served_figures(model_dir, compared.eval_file, rows)
        assert block[who]["val_accuracy"] == served["val_accuracy"], who
        assert block[who]["val_loss"] == pytest.approx(served["val_loss"], rel=1e-4), who
    assert compared.result.comparisons["eval_set"] == block


def test_a_regression_champion_is_scored_in_label_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)

    def write(path: Path, rows: int, noise: float) -> None:
        x = rng.normal(size=(rows, 2))
        y = 50 + 10 * x[:, 0] - 5 * x[:, 1] + rng.normal(scale=noise, size=rows)
        lines = ["a,b,price"] + [
            f"{r[0]:.5f},{r[1]:.5f},{t:.4f}" for r, t in zip(x, y, strict=True)
        ]
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "old.csv", 200, 1.0)
    write(tmp_path / "new.csv", 400, 1.0)
    hp = Hyperparameters(epochs=5, lr=0.01, batch_size=32)
    run(str(tmp_path / "old.csv"), "price", Outputs(str(tmp_path / "champion")), hp,
        out=io.StringIO())  # fmt: skip

    result = run(
        str(tmp_path / "new.csv"),
        "price",
        Outputs(str(tmp_path / "model")),
        hp,
        inputs=Inputs(champion_model_dir=str(tmp_path / "champion")),
        out=io.StringIO(),
    )

    champion = result.comparisons["champion"]
    _, val_rows = split_rows(400, hp, rank=0)
    table = parse_csv("new.csv", (tmp_path / "new.csv").read_bytes())
    served_model = Model.load(str(tmp_path / "champion"))
    columns = {name: column.values for name, column in table.columns.items()}
    served = served_model.predict(
        instances_from_columns(served_model.schema, columns, val_rows.tolist())
    )
    errors = np.array([p["value"] for p in served]) - columns["price"][val_rows]
    rmse = math.sqrt(float((errors**2).mean()))
    assert champion["rows"] == len(val_rows)
    assert champion["val_rmse"] == pytest.approx(rmse, rel=1e-5)
    # val_loss is on the new model's standardised scale, comparable with its own.
    assert champion["val_loss"] == pytest.approx(rmse**2 / result.schema.label.std**2, rel=1e-5)


def _table(path: Path, header: str, rows: list[str]) -> None:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_a_schema_change_is_named_column_by_column_and_training_still_succeeds(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    old = [f"{rng.normal():.3f},{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(80)]
    _table(tmp_path / "old.csv", "a,b,c,y", old)
    hp = Hyperparameters(epochs=1)
    run(str(tmp_path / "old.csv"), "y", Outputs(str(tmp_path / "champion")), hp,
        out=io.StringIO())  # fmt: skip
    # a removed, b now text (a category), d added; c and the label unchanged.
    new = [f"{'xyz'[i % 3]},{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(80)]
    _table(tmp_path / "new.csv", "b,c,d,y", new)

    result = run(
        str(tmp_path / "new.csv"),
        "y",
        Outputs(str(tmp_path / "model")),
        hp,
        inputs=Inputs(champion_model_dir=str(tmp_path / "champion")),
        out=io.StringIO(),
    )

    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["champion"] == {
        "model_dir": str(tmp_path / "champion"),
        "error": "columns changed: +d, -a, ~b (numeric -> categorical)",
    }
    assert metrics["val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])


def test_a_label_that_changed_task_is_a_schema_change(tmp_path: Path) -> None:
    rows = [f"{i},{i % 3}" for i in range(60)]
    _table(tmp_path / "old.csv", "x,y", rows)
    run(str(tmp_path / "old.csv"), "y", Outputs(str(tmp_path / "champion")),
        Hyperparameters(epochs=1), out=io.StringIO())  # fmt: skip

    result = run(
        str(tmp_path / "old.csv"),
        "y",
        Outputs(str(tmp_path / "model")),
        Hyperparameters(epochs=1),
        task="regression",
        inputs=Inputs(champion_model_dir=str(tmp_path / "champion")),
        out=io.StringIO(),
    )

    assert result.comparisons["champion"]["error"] == (
        "columns changed: ~y (classification -> regression)"
    )


def test_a_missing_champion_is_reported_and_never_fails_the_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d.csv").write_text(digits_csv(slice(0, 200)))
    missing = tmp_path / "no-such-champion"

    code = main([f"--data-uri={tmp_path / 'd.csv'}", "--label=digit", "--epochs=1",
                 f"--model-dir={tmp_path / 'm'}", f"--champion-model-dir={missing}",
                 f"--eval-uri={tmp_path / 'no-such-eval.csv'}"])  # fmt: skip

    assert code == 0, capsys.readouterr().err
    metrics: dict[str, Any] = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["champion"] == {
        "model_dir": str(missing),
        "error": f"cannot score the champion: cannot load the model from {missing}: "
        f"{missing / 'metadata.json'} does not exist",
    }
    assert metrics["eval_set"] == {
        "uri": str(tmp_path / "no-such-eval.csv"),
        "error": f"data file {tmp_path / 'no-such-eval.csv'} does not exist",
    }
    assert isinstance(metrics["val_accuracy"], float)
