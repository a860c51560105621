"""The work of one BatchPredictionJob, run as a process by the job runtime (so it gets the
runtime's environment, log lines, cancellation and timeout):

    python -m localcloud.vertex.batch_worker --predict-url URL --format jsonl|csv
        --source gs://b/in.jsonl [--source ...] --output-dir gs://b/out/prediction-... \
        [--batch-size N] [--stats FILE]

Reads the instances (JSON Lines: one instance per line; CSV: a header row, then one
instance per row as the list of its values, numbers as numbers), posts them in batches of
`{"instances": [...]}` to the model's serving container, and writes what Vertex writes:
`prediction.results-00000-of-00001` with one `{"instance": ..., "prediction": ...}` per
line and, for instances the model refused, `prediction.errors_stats-00000-of-00001` with
`{"instance": ..., "error": {"code": 3, "message": ...}}`. A source may hold `*`
wildcards. Exit code 1 with an `error: ` line when the input cannot be read."""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

from localcloud.vertex.packages import storage_client

RESULTS_FILE = "prediction.results-00000-of-00001"
ERRORS_FILE = "prediction.errors_stats-00000-of-00001"
PREDICT_TIMEOUT_S = 600
INVALID_ARGUMENT = 3


class BatchError(Exception):
    """The input cannot be read, or the model server cannot be reached."""


def instances(text: str, fmt: str) -> Iterator[Any]:
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as err:
                    raise BatchError(f"line {number} is not JSON: {err}") from err
        return
    rows = csv.reader(io.StringIO(text))
    next(rows, None)  # the header row names the columns; instances are the values
    for row in rows:
        if row:
            yield [_number_or_text(value) for value in row]


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def predict_all(
    url: str, rows: Sequence[Any], batch_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, errors): a batch the model refuses is retried row by row, so one bad
    instance costs only its own prediction."""
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        batch = list(rows[start : start + batch_size])
        predictions, problem = _post(url, batch)
        if predictions is not None:
            results += [
                {"instance": i, "prediction": p} for i, p in zip(batch, predictions, strict=True)
            ]
            continue
        if len(batch) == 1:
            errors.append(
                {"instance": batch[0], "error": {"code": INVALID_ARGUMENT, "message": problem}}
            )
            continue
        for row in batch:
            single, problem = _post(url, [row])
            if single is not None:
                results.append({"instance": row, "prediction": single[0]})
            else:
                errors.append(
                    {"instance": row, "error": {"code": INVALID_ARGUMENT, "message": problem}}
                )
        print(f"{len(results)} of {len(rows)} instances predicted", flush=True)
    return results, errors


def _post(url: str, batch: list[Any]) -> tuple[list[Any] | None, str]:
    try:
        reply = requests.post(url, json={"instances": batch}, timeout=PREDICT_TIMEOUT_S)
    except requests.RequestException as err:
        raise BatchError(f"the model server did not answer at {url}: {err}") from err
    if reply.status_code >= 500:
        raise BatchError(
            f"the model server failed with HTTP {reply.status_code}: {reply.text[:500]}"
        )
    try:
        predictions = reply.json()["predictions"] if reply.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        predictions = None
    if predictions is None or len(predictions) != len(batch):
        return None, reply.text.strip()[:2000] or f"HTTP {reply.status_code}"
    return list(predictions), ""


def read_sources(client: Any, sources: Sequence[str]) -> list[str]:
    """The text of every object the sources name (wildcards expanded, in name order)."""
    texts = []
    for source in sources:
        bucket_name, _, pattern = source.removeprefix("gs://").partition("/")
        bucket = client.bucket(bucket_name)
        if "*" not in pattern:
            names = [pattern]
        else:
            prefix = pattern.split("*", 1)[0]
            names = sorted(
                blob.name
                for blob in client.list_blobs(bucket_name, prefix=prefix)
                if fnmatch.fnmatchcase(blob.name, pattern)
            )
            if not names:
                raise BatchError(f"no object matches {source}")
        for name in names:
            try:
                texts.append(bucket.blob(name).download_as_text())
            except Exception as err:  # the job cannot read its input: say which
                raise BatchError(f"cannot read gs://{bucket_name}/{name}: {err}") from err
    return texts


def write(client: Any, output_dir: str, name: str, lines: Sequence[dict[str, Any]]) -> None:
    bucket_name, _, prefix = output_dir.removeprefix("gs://").partition("/")
    blob = client.bucket(bucket_name).blob(f"{prefix.strip('/')}/{name}")
    blob.upload_from_string(
        "".join(json.dumps(line) + "\n" for line in lines), content_type="application/jsonl"
    )


def run(args: argparse.Namespace) -> dict[str, int]:
    client = storage_client(os.environ)
    rows = [
        row for text in read_sources(client, args.source) for row in instances(text, args.format)
    ]
    print(f"read {len(rows)} instances from {len(args.source)} source(s)", flush=True)
    results, errors = predict_all(args.predict_url, rows, args.batch_size)
    write(client, args.output_dir, RESULTS_FILE, results)
    if errors:
        write(client, args.output_dir, ERRORS_FILE, errors)
    print(
        f"wrote {len(results)} predictions and {len(errors)} errors to {args.output_dir}",
        flush=True,
    )
    return {"successful_count": len(results), "failed_count": len(errors)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.vertex.batch_worker")
    parser.add_argument("--predict-url", required=True)
    parser.add_argument("--format", choices=("jsonl", "csv"), required=True)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stats", type=Path)
    args = parser.parse_args(argv)
    try:
        stats = run(args)
    except BatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.stats is not None:
        args.stats.write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
