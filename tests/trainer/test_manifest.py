"""A run's manifest pins its inputs: the trainer reads exactly those generations, whatever
was written to the same names since, and fails before training when one is gone.

localcloud's Cloud Storage keeps an overwritten generation readable only in a bucket
created with versioning, like GCS; in a bucket without it the old generation is gone."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import digits_csv, make_bucket
from trainer.errors import DataError
from trainer.manifest import DataFile, read_manifest
from trainer.task import Hyperparameters, Inputs, Outputs, main, run


def _upload(bucket: Any, name: str, text: str) -> dict[str, Any]:
    blob = bucket.blob(name)
    blob.upload_from_string(text)
    return {"uri": f"gs://{bucket.name}/{name}", "generation": str(blob.generation),
            "size": blob.size}  # fmt: skip


def _manifest(bucket: Any, name: str, entries: list[dict[str, Any]]) -> str:
    bucket.blob(name).upload_from_string("".join(json.dumps(e) + "\n" for e in entries))
    return f"gs://{bucket.name}/{name}"


def test_the_pinned_generations_are_read_not_what_the_prefix_holds_now(
    gcs: str, tmp_path: Path
) -> None:
    bucket: Any = make_bucket("pinned", versioning=True)
    entries = [
        _upload(bucket, "digits/b1/part-0.csv", digits_csv(slice(0, 300))),
        _upload(bucket, "digits/b1/part-1.csv", digits_csv(slice(300, 500))),
        _upload(bucket, "digits/b1/_SUCCESS", ""),
    ]
    manifest = _manifest(bucket, "runs/r1/inputs.jsonl", entries)
    # After the trigger planned the run: one part overwritten, another part added.
    bucket.blob("digits/b1/part-0.csv").upload_from_string(digits_csv(slice(0, 50)))
    bucket.blob("digits/b1/part-2.csv").upload_from_string(digits_csv(slice(500, 900)))
    out = io.StringIO()

    run(
        "gs://pinned/digits/b1/",
        "digit",
        Outputs(str(tmp_path / "m")),
        Hyperparameters(epochs=1),
        inputs=Inputs(data_manifest=manifest),
        out=out,
    )

    assert out.getvalue().startswith(
        f"data gs://pinned/digits/b1/ (pinned by {manifest}): 500 rows, 64 features"
    )
    metadata = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert metadata["data_manifest"] == manifest
    # Listing the prefix instead reads what it holds now: 50 + 200 + 400 rows.
    out = io.StringIO()
    run("gs://pinned/digits/b1/", "digit", Outputs(str(tmp_path / "m2")),
        Hyperparameters(epochs=1), out=out)  # fmt: skip
    assert out.getvalue().startswith("data gs://pinned/digits/b1/: 650 rows")


def test_a_generation_that_is_gone_fails_before_training_naming_it(
    gcs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket: Any = make_bucket("unversioned")
    entry = _upload(bucket, "churn/part-0.csv", digits_csv(slice(0, 100)))
    manifest = _manifest(bucket, "runs/r2/inputs.jsonl", [entry])
    bucket.blob("churn/part-0.csv").upload_from_string(digits_csv(slice(100, 200)))

    code = main(["--data-uri=gs://unversioned/churn/", "--label=digit", "--epochs=1",
                 f"--model-dir={tmp_path / 'm'}", f"--data-manifest={manifest}"])  # fmt: skip

    assert code == 1
    err = capsys.readouterr()
    assert err.err.strip().splitlines()[-1] == (
        f"error: data file gs://unversioned/churn/part-0.csv generation {entry['generation']} "
        "(pinned by the run's manifest) is gone: the object was overwritten or deleted after "
        "the run was planned, and its bucket keeps no older generations"
    )
    assert "epoch" not in err.out
    assert not (tmp_path / "m").exists()


def test_a_size_that_differs_from_the_manifest_fails(gcs: str, tmp_path: Path) -> None:
    bucket: Any = make_bucket("pinned", versioning=True)
    entry = _upload(bucket, "sized/part-0.csv", digits_csv(slice(0, 100)))
    manifest = _manifest(bucket, "runs/r3/inputs.jsonl", [entry | {"size": 7}])

    with pytest.raises(DataError, match=r"has \d+ bytes; the run's manifest says 7$"):
        run("gs://pinned/sized/", "digit", Outputs(str(tmp_path / "m")),
            Hyperparameters(epochs=1), inputs=Inputs(data_manifest=manifest),
            out=io.StringIO())  # fmt: skip


def test_manifest_lines_are_checked_and_named(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_text(
        '{"uri": "gs://b/a.csv", "generation": "12", "size": 3}\n'
        "\n"
        '{"uri": "gs://b/c.csv", "generation": 13}\n'
    )
    assert read_manifest(str(path)) == [
        DataFile("gs://b/a.csv", 12, 3),
        DataFile("gs://b/c.csv", 13),
    ]

    for line, problem in (
        ("not json", "line 1 is not JSON"),
        ('["gs://b/a.csv"]', "line 1 must be an object"),
        (
            '{"uri": "/local/a.csv", "generation": "1"}',
            "line 1: 'uri' must be a gs://bucket/object",
        ),
        (
            '{"uri": "gs://b/a.csv"}',
            "line 1: 'generation' must be a non-negative integer, not None",
        ),
        ('{"uri": "gs://b/a.csv", "generation": "x1"}', "'generation' must be a non-negative"),
        ('{"uri": "gs://b/a.csv", "generation": 1, "size": -1}', "'size' must be a non-negative"),
    ):
        path.write_text(line + "\n")
        with pytest.raises(DataError, match=problem):
            read_manifest(str(path))
    path.write_text("")
    with pytest.raises(DataError, match="lists no objects"):
        read_manifest(str(path))


def test_a_manifest_of_markers_only_names_no_data(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"uri": "gs://b/batch/_SUCCESS", "generation": "1", "size": 0}\n')

    with pytest.raises(DataError, match=r"inputs.jsonl lists no \*\.csv objects"):
        run("gs://b/batch/", "digit", Outputs(str(tmp_path / "m")),
            inputs=Inputs(data_manifest=str(path)), out=io.StringIO())  # fmt: skip
