"""Cloud Storage adapters: the state store (preconditions as the only lock) and blobs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.adapters.errors import is_transient, translated
from retrain.ports import Listed, ObjectVersion, Stored

if TYPE_CHECKING:
    from google.cloud import storage  # type: ignore[attr-defined]


# Cloud Storage takes at most 100 calls in one batch request.
BATCH_LIMIT = 100
BATCHES_AT_ONCE = 8
SINGLE_DELETES_AT_ONCE = 16


def split_gs_uri(uri: str) -> tuple[str, str]:
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    return bucket, path


class GcsStateStore:
    """JSON documents under `gs://bucket/prefix`: `if_generation_match=0` creates are
    atomic claims and `if_generation_match=<generation>` writes are compare-and-swap."""

    def __init__(self, client: storage.Client, state_uri: str):
        bucket, prefix = split_gs_uri(state_uri)
        self._bucket = client.bucket(bucket)
        self._client = client
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # Whether the server takes batch requests: None until the first one is answered.
        self._batches: bool | None = None

    def _name(self, key: str) -> str:
        return self._prefix + key

    def create(self, key: str, doc: Mapping[str, Any]) -> int | None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self._name(key))
        with translated(f"create gs://{self._bucket.name}/{blob.name}"):
            try:
                blob.upload_from_string(
                    json.dumps(doc), content_type="application/json", if_generation_match=0
                )
            except PreconditionFailed:
                return None
        return int(blob.generation or 0)

    def read(self, key: str) -> Stored | None:
        from google.api_core.exceptions import NotFound

        blob = self._bucket.blob(self._name(key))
        with translated(f"read gs://{self._bucket.name}/{blob.name}"):
            try:
                data = blob.download_as_bytes()
            except NotFound:
                return None
        updated = blob.updated or datetime.now(UTC)
        return Stored(json.loads(data), int(blob.generation or 0), updated)

    def replace(self, key: str, doc: Mapping[str, Any], *, generation: int) -> int | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._bucket.blob(self._name(key))
        with translated(f"update gs://{self._bucket.name}/{blob.name}"):
            try:
                blob.upload_from_string(
                    json.dumps(doc),
                    content_type="application/json",
                    if_generation_match=generation,
                )
            except (PreconditionFailed, NotFound):
                return None
        return int(blob.generation or 0)

    def list(self, prefix: str) -> list[Listed]:
        full = self._name(prefix)
        with translated(f"list gs://{self._bucket.name}/{full}"):
            blobs = list(self._client.list_blobs(self._bucket, prefix=full))
        return [
            Listed(
                key=blob.name[len(self._prefix) :],
                generation=int(blob.generation or 0),
                updated=blob.updated or datetime.now(UTC),
            )
            for blob in blobs
        ]

    def delete(self, key: str, *, generation: int | None = None) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        with translated(f"delete gs://{self._bucket.name}/{self._name(key)}"):
            try:
                # A delete on a generation is not retried by the client: were the first
                # attempt applied, the retry could meet a newer object of the same name.
                self._bucket.blob(self._name(key)).delete(
                    if_generation_match=generation,
                    **({"retry": None} if generation is not None else {}),
                )
            except NotFound:
                return True  # already gone: deletes are idempotent
            except PreconditionFailed:
                return False  # rewritten since it was read: someone else's now
        return True

    def delete_many(self, keys: Sequence[str]) -> None:
        """Batch requests of up to BATCH_LIMIT deletes, a few at once: 100,000 records
        cost 1,000 round trips, not 100,000. A delete a batch could not do (its part
        answered 429 or 5xx, or the whole batch failed) is done on its own, with the
        client's retries; a server without batch requests gets single deletes from then on."""
        chunks = [list(keys[i : i + BATCH_LIMIT]) for i in range(0, len(keys), BATCH_LIMIT)]
        left: list[str] = []
        if chunks and self._batches is None:
            left += self._delete_batch(chunks.pop(0))  # the first alone: does it take them?
        if chunks:
            with ThreadPoolExecutor(max_workers=min(BATCHES_AT_ONCE, len(chunks))) as pool:
                left += [key for rest in pool.map(self._delete_batch, chunks) for key in rest]
        if left:
            with ThreadPoolExecutor(max_workers=min(SINGLE_DELETES_AT_ONCE, len(left))) as pool:
                list(pool.map(self.delete, left))

    def _delete_batch(self, keys: Sequence[str]) -> Sequence[str]:
        """Delete `keys` in one batch request; the keys it did not delete."""
        if self._batches is False or len(keys) == 1:
            return keys
        from google.api_core.exceptions import GoogleAPICallError

        try:
            with self._client.batch(raise_exception=False) as batch:
                for key in keys:
                    self._bucket.delete_blob(self._name(key))
        except ValueError:
            self._batches = False  # answered, but not as a batch: the server has none
            return keys
        except GoogleAPICallError as err:
            if err.code in (400, 404, 405, 501):
                self._batches = False
            return keys
        except Exception as err:  # a transport failure: the single deletes retry
            if not is_transient(err):
                raise
            return keys
        self._batches = True
        answers = getattr(batch, "_responses", None)
        if not isinstance(answers, list) or len(answers) != len(keys):
            return keys
        return [
            key
            for key, answer in zip(keys, answers, strict=True)
            if not (200 <= answer.status_code < 300 or answer.status_code == 404)
        ]


class GcsBlobs:
    """Whole objects by URI: `gs://` through the client, anything else from local disk."""

    def __init__(self, client_factory: Any):
        self._client_factory = client_factory

    def read_text(self, uri: str) -> tuple[str, int]:
        if not uri.startswith("gs://"):
            return Path(uri).read_text(encoding="utf-8"), 0
        bucket, name = split_gs_uri(uri)
        blob = self._client_factory().bucket(bucket).blob(name)
        with translated(f"read {uri}"):
            text = blob.download_as_text()
        return text, int(blob.generation or 0)

    def generation(self, uri: str) -> int | None:
        if not uri.startswith("gs://"):
            path = Path(uri)
            return path.stat().st_mtime_ns if path.exists() else None
        bucket, name = split_gs_uri(uri)
        with translated(f"stat {uri}"):
            blob = self._client_factory().bucket(bucket).get_blob(name)
        return int(blob.generation) if blob is not None else None


class GcsDataObjects:
    """Data objects with their generations (GCS keeps a noncurrent generation in a bucket
    with object versioning), and create-only text writes for input manifests."""

    def __init__(self, client_factory: Any):
        self._client_factory = client_factory

    def list(self, bucket: str, prefix: str) -> list[ObjectVersion]:
        with translated(f"list gs://{bucket}/{prefix}"):
            blobs = list(self._client_factory().list_blobs(bucket, prefix=prefix))
        return [_version(bucket, blob) for blob in blobs]

    def stat(self, bucket: str, name: str, generation: int) -> ObjectVersion | None:
        with translated(f"stat gs://{bucket}/{name}#{generation}"):
            blob = self._client_factory().bucket(bucket).get_blob(name, generation=generation)
        # An emulator may answer with the live generation: only the asked one counts.
        if blob is None or int(blob.generation or 0) != generation:
            return None
        return _version(bucket, blob)

    def read_text(self, uri: str) -> str | None:
        from google.api_core.exceptions import NotFound

        bucket, name = split_gs_uri(uri)
        with translated(f"read {uri}"):
            try:
                return str(self._client_factory().bucket(bucket).blob(name).download_as_text())
            except NotFound:
                return None

    def create_text(self, uri: str, text: str) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        bucket, name = split_gs_uri(uri)
        blob = self._client_factory().bucket(bucket).blob(name)
        with translated(f"create {uri}"):
            try:
                blob.upload_from_string(
                    text, content_type="application/x-ndjson", if_generation_match=0
                )
            except PreconditionFailed:
                return False
        return True


def _version(bucket: str, blob: Any) -> ObjectVersion:
    return ObjectVersion(
        bucket=bucket,
        name=blob.name,
        generation=int(blob.generation or 0),
        size=int(blob.size or 0),
        created=blob.time_created,
    )
