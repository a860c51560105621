"""Training: learning on real data, the output directory, the command line contract."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.trainer.conftest import DIGITS_ARGS, PYTHON, child_env, digits_csv
from trainer import blobs, task
from trainer.table import parse_csv
from trainer.task import Hyperparameters, Outputs, TrainingResult, main, predict_rows, run

EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+) loss=\d+\.\d{4} (val_accuracy|val_rmse)=\d+\.\d{4} samples_per_s=\d+$"
)


def test_digits_learns_and_writes_a_complete_model_dir(
    digits_model: tuple[TrainingResult, Path, str],
) -> None:
    result, model_dir, _ = digits_model

    assert result.metrics["val_accuracy"] >= 0.9
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "metadata.json",
        "metrics.json",
        "model.onnx",
        "smoke.json",
    ]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert all(isinstance(v, float) for v in metrics.values())
    assert "val_loss" in metrics
    onnx.checker.check_model(onnx.load(str(model_dir / "model.onnx")))
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["schema"]["label"]["classes"] == [str(d) for d in range(10)]
    assert [f["name"] for f in metadata["schema"]["features"]] == [f"p{i}" for i in range(64)]
    smoke = json.loads((model_dir / "smoke.json").read_text())
    assert len(smoke["instances"]) == task.SMOKE_ROWS
    assert set(smoke["instances"][0]) == {f"p{i}" for i in range(64)}


def test_one_line_per_epoch_in_the_shape_the_live_view_parses(
    digits_model: tuple[TrainingResult, Path, str],
) -> None:
    _, _, stdout = digits_model
    epochs = [m for m in map(EPOCH_LINE.match, stdout.splitlines()) if m]

    assert [int(m.group(1)) for m in epochs] == list(range(1, 16))
    assert {m.group(2) for m in epochs} == {"15"}
    assert {m.group(3) for m in epochs} == {"val_accuracy"}


def test_metrics_json_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.csv"
    data.write_text(digits_csv(slice(0, 200)))
    written: list[str] = []
    real_write = blobs.write_bytes

    def recording_write(uri: str, payload: bytes, content_type: str = "") -> None:
        written.append(Path(uri).name)
        real_write(uri, payload)

    monkeypatch.setattr(blobs, "write_bytes", recording_write)
    run(
        str(data),
        "digit",
        Outputs(str(tmp_path / "m")),
        Hyperparameters(epochs=1),
        out=io.StringIO(),
    )

    assert written[-1] == "metrics.json"
    assert set(written) == {"model.onnx", "metadata.json", "smoke.json", "metrics.json"}


def test_regression_reports_rmse_in_label_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3))
    y = 100 + 30 * x[:, 0] - 20 * x[:, 1] + rng.normal(scale=1.0, size=600)
    lines = ["a,b,c,price"] + [
        f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t:.4f}" for r, t in zip(x, y, strict=True)
    ]
    data = tmp_path / "houses.csv"
    data.write_text("\n".join(lines) + "\n")
    out = io.StringIO()

    result = run(
        str(data),
        "price",
        Outputs(str(tmp_path / "m")),
        Hyperparameters(epochs=40, lr=0.01, batch_size=32),
        out=out,
    )

    assert result.schema.label.task == "regression"
    assert set(json.loads((tmp_path / "m" / "metrics.json").read_text())) >= {
        "val_rmse",
        "val_loss",
    }
    assert result.metrics["val_rmse"] < 6.0  # label std is about 36
    assert "val_rmse=" in out.getvalue().splitlines()[-1]
    # Serving turns the network's standardised output back into prices.
    from trainer.serving import Model

    served = Model.load(str(tmp_path / "m")).predict([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    columns = {"a": np.array([1.0, 0.0]), "b": np.array([0.5, 0.0]), "c": np.array([0.0, 0.0])}
    expected = predict_rows(result, columns).reshape(-1) * result.schema.label.std
    expected += result.schema.label.mean
    assert [p["value"] for p in served] == pytest.approx(expected.tolist(), rel=1e-5)
    assert served[0]["value"] == pytest.approx(120, abs=8)


def test_categorical_features_and_text_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    lines = ["plan,tenure,churned"]
    for _ in range(400):
        plan = rng.choice(["basic", "pro", "team"])
        tenure = int(rng.integers(1, 60))
        churned = "yes" if plan == "basic" and tenure < 30 else "no"
        lines.append(f"{plan},{tenure},{churned}")
    data = tmp_path / "churn.csv"
    data.write_text("\n".join(lines) + "\n")

    result = run(
        str(data),
        "churned",
        Outputs(str(tmp_path / "m")),
        Hyperparameters(epochs=30, lr=0.01, batch_size=32),
        out=io.StringIO(),
    )

    plan = result.schema.features[0]
    assert (plan.kind, plan.categories) == ("categorical", ("basic", "pro", "team"))
    assert result.schema.label.classes == ("no", "yes")
    assert result.metrics["val_accuracy"] >= 0.9


def test_prefix_reads_every_csv_and_ignores_markers(tmp_path: Path) -> None:
    prefix = tmp_path / "batch"
    prefix.mkdir()
    (prefix / "part-0.csv").write_text(digits_csv(slice(0, 150)))
    (prefix / "part-1.csv").write_text(digits_csv(slice(150, 300)))
    (prefix / "_SUCCESS").write_text("")
    (prefix / "notes.txt").write_text("not data")
    out = io.StringIO()

    run(str(prefix), "digit", Outputs(str(tmp_path / "m")), Hyperparameters(epochs=1), out=out)

    assert out.getvalue().startswith(f"data {prefix}: 300 rows, 64 features")


def test_trainer_predictions_match_its_onnx_model(
    digits_model: tuple[TrainingResult, Path, str], digits_file: Path
) -> None:
    import onnxruntime

    result, model_dir, _ = digits_model
    table = parse_csv(str(digits_file), digits_file.read_bytes())
    columns = {name: column.values for name, column in table.columns.items()}
    expected = predict_rows(result, columns)

    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"))
    from trainer.features import encode_features

    (served,) = session.run(None, {"features": encode_features(result.schema, columns)})

    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_unknown_flag_exits_2_with_a_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-uri=x.csv", "--label=y", f"--model-dir={tmp_path}", "--learning_rate=0.1"])

    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning_rate=0.1" in capsys.readouterr().err


def test_bad_hyperparameter_value_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-uri=x.csv", "--label=y", f"--model-dir={tmp_path}", "--epochs=0"])

    assert exit_info.value.code == 2
    assert "epochs must be positive" in capsys.readouterr().err


def test_command_line_accepts_both_spellings_and_reads_vertex_env(
    digits_file: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    tensorboard = tmp_path / "tb"
    args = [a.replace("batch_size", "batch-size") for a in DIGITS_ARGS]
    completed = subprocess.run(
        [PYTHON, "-m", "trainer.task", f"--data-uri={digits_file}", *args, "--hidden_units=64",
         "--weight-decay=0.0001", "--epochs=3"],
        env=child_env(
            AIP_MODEL_DIR=str(model_dir),
            AIP_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
            AIP_TENSORBOARD_LOG_DIR=str(tensorboard),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert [line for line in completed.stdout.splitlines() if EPOCH_LINE.match(line)][
        -1
    ].startswith("epoch 3/3 ")
    assert (model_dir / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "checkpoint-00002.pt",
        "checkpoint-00003.pt",
    ]
    assert len(list(tensorboard.glob("events.out.tfevents.*"))) == 1
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["hyperparameters"]["hidden_units"] == [64]
