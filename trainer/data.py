"""Where the training rows come from: one CSV file, every `*.csv` under a prefix (local or
gs://), or the `*.csv` objects of a run's manifest at their pinned generations; split
between replicas, checked, summarised for schema inference."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from trainer import blobs
from trainer.errors import DataError, StorageError
from trainer.features import ColumnSummary, merge_all, summarize
from trainer.manifest import DataFile, read_manifest
from trainer.table import CsvFile, parse_csv

DOWNLOAD_THREADS = 8
F = TypeVar("F")


@dataclass(frozen=True)
class Shard:
    """This replica's rows: columns concatenated over its files, and their summaries."""

    header: tuple[str, ...]
    columns: dict[str, np.ndarray]
    rows: int
    summaries: dict[str, ColumnSummary]


def data_files(data_uri: str) -> list[str]:
    """The CSV files a data URI names: itself, or every `*.csv` below it (other objects,
    such as a `_SUCCESS` marker, are ignored)."""
    try:
        if blobs.is_folder(data_uri):
            files = blobs.list_files(data_uri, "*.csv")
            if not files and data_uri.endswith(".csv"):
                raise DataError(f"data file {data_uri} does not exist")
            if not files:
                raise DataError(f"no *.csv files under {data_uri}")
            return files
        if not blobs.exists(data_uri):
            raise DataError(f"data file {data_uri} does not exist")
    except StorageError as err:
        raise DataError(str(err)) from err
    return [data_uri]


def manifest_files(manifest_uri: str) -> list[DataFile]:
    """The `*.csv` objects a run's manifest pins (a marker it may list is not data)."""
    files = [f for f in read_manifest(manifest_uri) if fnmatch.fnmatch(_base(f.uri), "*.csv")]
    if not files:
        raise DataError(f"data manifest {manifest_uri} lists no *.csv objects")
    return files


def _base(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def shard_plan(files: Sequence[F], rank: int, world: int) -> tuple[list[F], bool]:
    """(files this replica reads, whether it keeps only every world-th row of them).
    With at least one file per replica each reads its own files; otherwise all read all
    files and split the rows."""
    if world > 1 and len(files) >= world:
        return list(files[rank::world]), False
    return list(files), world > 1


def load_shard(
    files: Sequence[str | DataFile],
    label: str,
    text_columns: frozenset[str] = frozenset(),
    *,
    rank: int = 0,
    world: int = 1,
) -> Shard:
    pinned = [f if isinstance(f, DataFile) else DataFile(f) for f in files]
    mine, split_rows = shard_plan(pinned, rank, world)
    parsed = _read_all(mine, text_columns)
    header = _common_header(parsed, label)
    per_file: list[dict[str, np.ndarray]] = []
    for f in parsed:
        values = {name: f.columns[name].values for name in header}
        if split_rows:  # row i of every file goes to replica i % world
            values = {name: column[rank::world] for name, column in values.items()}
        per_file.append(values)
    # Summarised file by file, so a column that is numeric in one file and text in another
    # is reported with both file names.
    summaries = merge_all(
        header, [_summaries(f.uri, v) for f, v in zip(parsed, per_file, strict=True)]
    )
    columns = {name: _concat([v[name] for v in per_file]) for name in header}
    return Shard(header=header, columns=columns, rows=len(columns[label]), summaries=summaries)


def _summaries(uri: str, columns: dict[str, np.ndarray]) -> dict[str, ColumnSummary]:
    return {name: summarize(uri, values) for name, values in columns.items()}


def _read_all(files: Sequence[DataFile], text_columns: frozenset[str]) -> list[CsvFile]:
    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, max(1, len(files)))) as pool:
        contents = pool.map(_read, files)
        return [
            parse_csv(f.uri, data, text_columns) for f, data in zip(files, contents, strict=True)
        ]


def _read(f: DataFile) -> bytes:
    try:
        data = blobs.read_bytes(f.uri, f.generation)
    except StorageError as err:
        if f.generation is not None and "does not exist" in str(err):
            raise DataError(
                f"data file {f.uri} generation {f.generation} (pinned by the run's manifest) "
                "is gone: the object was overwritten or deleted after the run was planned, "
                "and its bucket keeps no older generations"
            ) from err
        raise DataError(f"data file {err}") from err
    if f.size is not None and len(data) != f.size:
        raise DataError(
            f"data file {f.uri} generation {f.generation} has {len(data)} bytes; "
            f"the run's manifest says {f.size}"
        )
    return data


def _common_header(parsed: Sequence[CsvFile], label: str) -> tuple[str, ...]:
    for f in parsed:
        if label not in f.header:
            raise DataError(f"data file {f.uri} has no column {label!r}")
    first = parsed[0]
    for f in parsed[1:]:
        missing = [c for c in first.header if c not in f.header]
        if missing:
            raise DataError(f"data file {f.uri} has no column {missing[0]!r} ({first.uri} has)")
        extra = [c for c in f.header if c not in first.header]
        if extra:
            raise DataError(
                f"data file {f.uri} has column {extra[0]!r} that {first.uri} does not have"
            )
    return first.header


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if any(p.dtype.kind == "f" for p in parts) and not all(p.dtype.kind == "f" for p in parts):
        return np.concatenate([p.astype(str) for p in parts])
    return np.concatenate(parts)
