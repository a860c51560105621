"""The run's input manifest (`--data-manifest`): the exact objects, at the generations the
trigger saw, that a run trains on. One JSON object a line:
`{"uri": "gs://b/o", "generation": "123", "size": 456}` (int64s may come as strings, the
way GCS writes them). Reading these generations, instead of listing the data URI again,
makes a run repeatable: an object overwritten after the trigger fired cannot slip in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainer import blobs
from trainer.errors import DataError, StorageError


@dataclass(frozen=True)
class DataFile:
    """One data file: a path or gs:// URI, pinned to a generation (and its size) when it
    comes from a manifest."""

    uri: str
    generation: int | None = None
    size: int | None = None

    def __str__(self) -> str:
        return self.uri if self.generation is None else f"{self.uri}#{self.generation}"


def read_manifest(manifest_uri: str) -> list[DataFile]:
    """Every object the manifest lists, in its order; DataError names the line at fault."""
    try:
        text = blobs.read_bytes(manifest_uri).decode("utf-8")
    except StorageError as err:
        raise DataError(f"data manifest {err}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"data manifest {manifest_uri} is not UTF-8 text") from err
    files: list[DataFile] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            files.append(_entry(manifest_uri, number, line))
    if not files:
        raise DataError(f"data manifest {manifest_uri} lists no objects")
    return files


def _entry(manifest_uri: str, number: int, line: str) -> DataFile:
    where = f"data manifest {manifest_uri} line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not JSON: {err.msg}") from err
    if not isinstance(entry, dict):
        raise DataError(f"{where} must be an object with 'uri' and 'generation'")
    uri = entry.get("uri")
    if not isinstance(uri, str) or not blobs.is_gcs(uri) or not blobs.split_gcs(uri)[1]:
        raise DataError(f"{where}: 'uri' must be a gs://bucket/object URI, not {uri!r}")
    generation = _int64(where, "generation", entry.get("generation"), required=True)
    size = _int64(where, "size", entry.get("size"), required=False)
    return DataFile(uri, generation, size)


def _int64(where: str, key: str, value: Any, *, required: bool) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise DataError(f"{where}: {key!r} must be a non-negative integer, not {value!r}")
