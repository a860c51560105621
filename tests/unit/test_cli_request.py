"""GIVEN `retrain request` and a readable config WHEN the request would be refused THEN the
command says which field and why, exits 2 and publishes nothing — with the function's own
check."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.cli import main
from tests.fakes import SAMPLE_CONFIG


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("GOOGLE_CLOUD_PROJECT", "RETRAIN_CONFIG", "PUBSUB_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "pipelines.toml"
    path.write_text(SAMPLE_CONFIG)
    return path


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--data-uri", "gs://acme-landing/churn/../other/"], "data_uri must not contain '..'"),
        (["--data-uri", "gs://acme-landing/p\n--epochs=999"], "data_uri must not contain control"),
        (["--data-uri", "gs://acme-landing.evil/churn/"], "data_uri bucket 'acme-landing.evil'"),
        (["--set", "lr=1e999"], "hyperparameters.lr must be a finite number"),
        (["--set", "batch_size=true"], "hyperparameters.batch_size must be int, not bool"),
        (["--set", "epochs=3"], "hyperparameters.epochs cannot be overridden"),
    ],
)
def test_a_request_the_function_would_refuse_exits_2_naming_the_field(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags, phrase
) -> None:
    code = main(["request", "churn", "--config", str(config), "--dir", str(tmp_path), *flags])
    out, err = capsys.readouterr()
    assert code == 2 and phrase in err and "published" not in out


def test_an_unknown_pipeline_is_refused_from_retrain_config(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("RETRAIN_CONFIG", str(config))
    assert main(["request", "nope", "--dir", str(tmp_path)]) == 2
    assert "unknown pipeline 'nope' (configured: churn, clicks, events)" in capsys.readouterr().err


def test_a_valid_request_passes_the_check_and_goes_on_to_publish(
    config: Path, tmp_path: Path, capsys
) -> None:
    # No project set: the command gets past the check and stops where publishing starts.
    code = main(["request", "churn", "--config", str(config), "--dir", str(tmp_path),
                 "--data-uri", "gs://acme-landing/churn/d1/", "--set", "lr=0.01"])  # fmt: skip
    assert code == 1 and "GOOGLE_CLOUD_PROJECT is not set" in capsys.readouterr().err


def test_an_unreadable_config_is_an_error_when_named_and_a_warning_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, config: Path
) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["request", "churn", "--config", str(missing), "--dir", str(tmp_path)]) == 2
    assert "cannot read --config" in capsys.readouterr().err
    monkeypatch.setenv("RETRAIN_CONFIG", str(missing))
    assert main(["request", "churn", "--dir", str(tmp_path)]) == 1  # unchecked, then no project
    assert "not checked" in capsys.readouterr().err
