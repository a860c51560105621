"""Read and write files that live either on local disk or in Cloud Storage (`gs://`).

google-cloud-storage honours STORAGE_EMULATOR_HOST itself (anonymous credentials), so the
same code reads fake-gcs-server locally and GCS on Vertex. The client is imported lazily:
local paths never pay for it.
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import StorageError

if TYPE_CHECKING:
    from google.cloud.storage import Client

GS = "gs://"


def is_gcs(uri: str) -> bool:
    return uri.startswith(GS)


def split_gcs(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    bucket, _, name = uri[len(GS) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, name


def join(directory: str, name: str) -> str:
    if is_gcs(directory):
        return directory.rstrip("/") + "/" + name
    return str(Path(directory) / name)


@functools.cache
def _client() -> Client:
    from google.cloud import storage

    return storage.Client()


def _not_found(err: Exception) -> bool:
    return type(err).__name__ == "NotFound"


def read_bytes(uri: str, generation: int | None = None) -> bytes:
    """The object's bytes; with `generation`, exactly that generation of a gs:// object
    (GCS keeps an overwritten generation only in a bucket with object versioning)."""
    if not is_gcs(uri):
        if generation is not None:
            raise StorageError(f"{uri} is a local path: it has no generation {generation}")
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as err:
            raise StorageError(f"{uri} does not exist") from err
        except OSError as err:
            raise StorageError(f"cannot read {uri}: {err.strerror}") from err
    bucket, name = split_gcs(uri)
    what = uri if generation is None else f"{uri} generation {generation}"
    try:
        blob = _client().bucket(bucket).blob(name, generation=generation)
        data: bytes = blob.download_as_bytes()
    except Exception as err:  # the client raises many types; all mean "cannot read"
        if _not_found(err):
            raise StorageError(f"{what} does not exist") from err
        raise StorageError(f"cannot read {what}: {err}") from err
    return data


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    if not is_gcs(uri):
        path = Path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader never sees half a file.
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)
        except OSError as err:
            raise StorageError(f"cannot write {uri}: {err.strerror}") from err
        return
    bucket, name = split_gcs(uri)
    try:
        _client().bucket(bucket).blob(name).upload_from_string(data, content_type=content_type)
    except Exception as err:  # GCS uploads are atomic per object: nothing half-written
        raise StorageError(f"cannot write {uri}: {err}") from err


def delete(uri: str) -> None:
    if not is_gcs(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, name = split_gcs(uri)
    try:
        _client().bucket(bucket).blob(name).delete()
    except Exception as err:
        if not _not_found(err):
            raise StorageError(f"cannot delete {uri}: {err}") from err


def exists(uri: str) -> bool:
    if not is_gcs(uri):
        return Path(uri).is_file()
    bucket, name = split_gcs(uri)
    try:
        return bool(_client().bucket(bucket).blob(name).exists())
    except Exception as err:
        raise StorageError(f"cannot look up {uri}: {err}") from err


def list_files(uri: str, pattern: str = "*") -> list[str]:
    """Files directly or indirectly under the folder `uri` whose base name matches `pattern`,
    sorted by URI."""
    if not is_gcs(uri):
        root = Path(uri)
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob(pattern) if p.is_file())
    bucket, prefix = split_gcs(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        blobs: Any = _client().list_blobs(bucket, prefix=prefix)
        names = [b.name for b in blobs]
    except Exception as err:
        if _not_found(err):
            raise StorageError(f"bucket {bucket!r} of {uri} does not exist") from err
        raise StorageError(f"cannot list {uri}: {err}") from err
    return sorted(
        f"{GS}{bucket}/{name}"
        for name in names
        if not name.endswith("/") and fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern)
    )


def is_folder(uri: str) -> bool:
    """A local directory, or a gs:// URI that ends with `/` or names no single object."""
    if not is_gcs(uri):
        return Path(uri).is_dir()
    if uri.endswith("/") or not split_gcs(uri)[1]:
        return True
    return not exists(uri)
