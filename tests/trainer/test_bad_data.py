"""Bad data: exit code 1 and a last stderr line `error: ...` naming file, column and row."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.trainer.conftest import PYTHON, child_env
from trainer.task import main

GOOD = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"


def _error_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def _train(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"--data-uri={data}",
        "--label=label",
        f"--model-dir={tmp_path / 'm'}",
        "--epochs=1",
        *extra,
    ]


CASES = {
    "missing label column": (
        {"d.csv": "a,b,target\n1,2,x\n3,4,y\n"},
        "data file {dir}/d.csv has no column 'label'",
    ),
    "label missing in one file of a prefix": (
        {"part-0.csv": GOOD, "part-1.csv": "a,b\n1,2\n"},
        "data file {dir}/part-1.csv has no column 'label'",
    ),
    "empty file": ({"d.csv": ""}, "data file {dir}/d.csv is empty"),
    "header only": ({"d.csv": "a,b,label\n"}, "has a header but no data rows"),
    "unparseable number": (
        {"d.csv": "a,b,label\n1,2,x\n3,oops,y\n5,6,x\n7,8,y\n"},
        "data file {dir}/d.csv column 'b' row 2 holds 'oops', not a number",
    ),
    "empty cell in a numeric column": (
        {"d.csv": "a,b,label\n1,2,x\n3,4,y\n,6,x\n7,8,y\n"},
        "data file {dir}/d.csv column 'a' row 3 is empty",
    ),
    "NaN": (
        {"d.csv": "a,b,label\n1,2,x\n3,4,y\n5,nan,x\n7,8,y\n"},
        "data file {dir}/d.csv column 'b' row 3 is NaN",
    ),
    "infinity": (
        {"d.csv": "a,b,label\n1,2,x\n3,inf,y\n5,6,x\n7,8,y\n"},
        "data file {dir}/d.csv column 'b' row 2 is infinite",
    ),
    "single class": (
        {"d.csv": "a,b,label\n1,2,x\n3,4,x\n5,6,x\n"},
        "label column 'label' has a single class 'x' in all 3 rows",
    ),
    "ragged row": (
        {"d.csv": "a,b,label\n1,2,x\n3,4\n5,6,x\n"},
        "data file {dir}/d.csv row 2 has 2 fields, the header has 3",
    ),
    "numbers in one file, text in another": (
        {"part-0.csv": GOOD, "part-1.csv": "a,b,label\nlow,2,x\nhigh,4,y\n"},
        "column 'a' holds numbers in data file {dir}/part-0.csv but text in data file "
        "{dir}/part-1.csv ('low' at row 1",
    ),
    "no csv under the prefix": ({"_SUCCESS": ""}, "no *.csv files under {dir}"),
    "duplicate column": ({"d.csv": "a,a,label\n1,2,x\n"}, "has column 'a' twice"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_exits_1_naming_what_and_where(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)

    code = main(_train(data, tmp_path))

    assert code == 1
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: ")
    assert expected.format(dir=data) in line
    assert not (tmp_path / "m" / "metrics.json").exists()


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_train(tmp_path / "nowhere.csv", tmp_path))

    assert code == 1
    assert _error_line(capsys.readouterr().err) == (
        f"error: data file {tmp_path / 'nowhere.csv'} does not exist"
    )


def test_regression_on_a_text_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    data.write_text(GOOD)

    code = main(_train(data, tmp_path, "--task=regression"))

    assert code == 1
    assert "label column 'label' holds text ('x' at row 1" in _error_line(capsys.readouterr().err)


def test_forced_categorical_keeps_numbers_as_categories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.csv"
    data.write_text("zip,b,label\n10115,2,x\n8001,4,y\nSW1A,6,x\n75001,8,y\n")

    assert main(_train(data, tmp_path, "--categorical=zip")) == 0
    assert "no column" not in capsys.readouterr().err


def test_the_process_exit_code_and_last_line(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,b,label\n1,2,x\n3,oops,y\n5,6,x\n7,8,y\n")

    completed = subprocess.run(
        [PYTHON, "-m", "trainer.task", *_train(data, tmp_path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 1
    assert _error_line(completed.stderr) == (
        f"error: data file {data} column 'b' row 2 holds 'oops', not a number"
    )
