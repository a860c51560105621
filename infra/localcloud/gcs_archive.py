"""The generations localcloud's Cloud Storage keeps for buckets with object versioning, on
disk: which buckets have versioning on, and each kept generation's bytes and metadata.

fake-gcs-server's filesystem backend refuses versioned buckets and drops a generation
when its object is overwritten; the proxy in localcloud.gcs_versions archives every
generation written to a versioned bucket here and serves the ones GCS would still have
(noncurrent versions) from here. The layout lives outside fake-gcs-server's root, since
that server takes every directory in its root for a bucket:

    ROOT/BUCKET/versioning.json                     {"enabled": true}
    ROOT/BUCKET/objects/SHA256(NAME)/GENERATION.data  the bytes
    ROOT/BUCKET/objects/SHA256(NAME)/GENERATION.json  the object resource (written last:
                                                      a generation is kept once it exists)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# GCS bucket names (dots allowed for domain-named buckets): never `.`, `..` or a path.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_GENERATION = re.compile(r"^[0-9]{1,20}$")
_COPY_CHUNK = 1024 * 1024


class VersionArchive:
    """Kept generations and versioning flags under `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # bucket configuration -----------------------------------------------------------
    @staticmethod
    def valid_bucket(bucket: str) -> bool:
        return bool(_BUCKET.match(bucket)) and ".." not in bucket

    def versioned(self, bucket: str) -> bool:
        path = self._bucket_dir(bucket)
        if path is None:
            return False
        try:
            return bool(json.loads((path / "versioning.json").read_text())["enabled"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def set_versioning(self, bucket: str, enabled: bool) -> None:
        """Turn versioning on or off (GCS keeps what it has kept when it is suspended)."""
        path = self._bucket_dir(bucket)
        if path is None:
            raise ValueError(f"invalid bucket name: {bucket!r}")
        path.mkdir(parents=True, exist_ok=True)
        _write_atomically(path / "versioning.json", json.dumps({"enabled": enabled}).encode())

    def drop_bucket(self, bucket: str) -> None:
        path = self._bucket_dir(bucket)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    # generations --------------------------------------------------------------------
    def has(self, bucket: str, name: str, generation: int | str) -> bool:
        return self.metadata(bucket, name, generation) is not None

    def put(self, resource: dict[str, Any], data: IO[bytes]) -> None:
        """Keep one generation: its object resource (bucket, name, generation) and bytes."""
        entry = self._entry(resource["bucket"], resource["name"], resource["generation"])
        if entry is None:
            raise ValueError(f"cannot keep {resource.get('bucket')}/{resource.get('name')}")
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(entry.with_suffix(".data")) as out:
            shutil.copyfileobj(data, out, _COPY_CHUNK)
        self.put_metadata(resource)

    def put_metadata(self, resource: dict[str, Any]) -> None:
        """Replace a kept generation's metadata (a metadata patch changes no bytes)."""
        entry = self._entry(resource["bucket"], resource["name"], resource["generation"])
        if entry is None or not entry.with_suffix(".data").exists():
            raise ValueError(f"generation not kept: {resource.get('name')}")
        _write_atomically(entry.with_suffix(".json"), json.dumps(resource).encode())

    def metadata(self, bucket: str, name: str, generation: int | str) -> dict[str, Any] | None:
        entry = self._entry(bucket, name, generation)
        if entry is None:
            return None
        return _read_json(entry.with_suffix(".json"))

    def data_path(self, bucket: str, name: str, generation: int | str) -> Path | None:
        entry = self._entry(bucket, name, generation)
        if entry is None or not entry.with_suffix(".json").exists():
            return None
        return entry.with_suffix(".data")

    def delete(self, bucket: str, name: str, generation: int | str) -> bool:
        """Forget one kept generation; False when it was not kept."""
        entry = self._entry(bucket, name, generation)
        if entry is None:
            return False
        try:
            entry.with_suffix(".json").unlink()
        except FileNotFoundError:
            return False
        entry.with_suffix(".data").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: other generations of the name
            entry.parent.rmdir()
        return True

    def generations(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """The metadata of every kept generation whose name starts with `prefix`."""
        path = self._bucket_dir(bucket)
        if path is None or not (path / "objects").is_dir():
            return []
        found = []
        for meta_path in _files(path / "objects", "*.json"):
            resource = _read_json(meta_path)
            if resource is not None and str(resource.get("name", "")).startswith(prefix):
                found.append(resource)
        return found

    # layout -------------------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> Path | None:
        return self.root / bucket if self.valid_bucket(bucket) else None

    def _entry(self, bucket: str, name: str, generation: int | str) -> Path | None:
        """The entry's path without its suffix; None for what cannot name one."""
        path = self._bucket_dir(bucket)
        generation = str(generation)
        if path is None or not _GENERATION.match(generation) or not name:
            return None
        # Object names hold any character up to 1024 bytes: a digest names the directory.
        digest = hashlib.sha256(name.encode()).hexdigest()
        return path / "objects" / digest / generation


def _files(directory: Path, pattern: str) -> Iterable[Path]:
    return sorted(directory.glob(f"*/{pattern}"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file that appears at `path` whole or not at all (a crash leaves no half entry)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_atomically(path: Path, data: bytes) -> None:
    with _atomic_file(path) as out:
        out.write(data)
