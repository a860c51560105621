"""Object versioning for localcloud's Cloud Storage: an HTTP proxy in front of
fake-gcs-server's filesystem backend that keeps noncurrent generations, as GCS does in a
bucket with versioning, across overwrites, deletes and restarts.

fake-gcs-server does all the real work; the clients (the official google-cloud-storage
client, the functions, the trainer) speak the GCS JSON, upload and download wire to this
proxy. What it adds (the first three for buckets whose versioning it was asked to turn on):

* bucket insert/patch/update: `versioning` is taken out of the request (the filesystem
  backend refuses it), remembered on disk, and put back into every bucket resource;
* a write (upload, copyTo, rewriteTo, compose, metadata patch) is archived, bytes and
  metadata, under a per-bucket lock so that no other write replaces the object between
  the write and the archiving read;
* a read of `generation=G` that fake-gcs-server no longer has is served from the archive
  (metadata, or bytes with Range support), a listing with `versions=true` adds the
  noncurrent generations, and a delete of `generation=G` deletes that generation only;
* an object delete, in any bucket, keeps its preconditions (ifGenerationMatch and the
  like), which fake-gcs-server ignores, and answers 204 No Content as GCS does;
* batch requests (`POST /batch/storage/v1`, which fake-gcs-server lacks): each JSON API
  call in the batch is sent back through this proxy (localcloud.gcs_batch).

Everything else passes through unchanged (localcloud.gcs_relay): status, headers and
streamed bodies. Buckets without versioning behave as fake-gcs-server makes them behave,
like GCS: an overwrite drops the old generation."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any
from urllib.parse import quote, unquote

from localcloud import gcs_batch
from localcloud.gcs_archive import VersionArchive
from localcloud.gcs_relay import Answer, Exchange, RelayServer, Upstream

LOG = logging.getLogger(__name__)

# Paths as the clients send them: the object name one percent-encoded segment.
_BUCKETS = re.compile(r"^/storage/v1/b$")
_BUCKET = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)$")
_OBJECTS = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o$")
_OBJECT = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")
_DOWNLOAD = re.compile(r"^/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_COPY = re.compile(
    r"^/storage/v1/b/[^/]+/o/[^/]+/(?:copyTo|rewriteTo)/b/(?P<bucket>[^/]+)/o/[^/]+$"
)
_COMPOSE = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/[^/]+/compose$")
# A precondition parameter: the resource field it names, and whether it must match.
_PRECONDITIONS = {
    "ifGenerationMatch": ("generation", True),
    "ifGenerationNotMatch": ("generation", False),
    "ifMetagenerationMatch": ("metageneration", True),
    "ifMetagenerationNotMatch": ("metageneration", False),
}
_CONDITION_NOT_MET = "At least one of the pre-conditions you specified did not hold."


class VersioningProxy:
    """`VersioningProxy(archive, upstream_port).start()` serves on `url` from background
    threads until `stop()`; a later `start()` listens on the same port again. `upstream`
    may be pointed elsewhere meanwhile (fake-gcs-server restarted on another port)."""

    def __init__(
        self,
        archive: VersionArchive,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.archive = archive
        self.upstream = Upstream(upstream_host, upstream_port)
        self._server = RelayServer(self.handle, name="Cloud Storage proxy", host=host, port=port)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def requests(self) -> int:
        """Requests received so far, for measurements."""
        return self._server.requests

    def start(self) -> VersioningProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def bucket_lock(self, bucket: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(bucket, threading.Lock())

    # dispatch -----------------------------------------------------------------------
    def handle(self, ex: Exchange) -> None:
        method, path = ex.method, ex.path
        if method == "POST" and path == gcs_batch.BATCH_PATH:
            return gcs_batch.serve(ex, self._server.host, self.port, self.upstream.address)
        if _BUCKETS.match(path):
            if method == "POST":
                return self._bucket_config(ex, None)
            if method == "GET":
                return self._bucket_read(ex)
        if match := _BUCKET.match(path):
            bucket = unquote(match["bucket"])
            if method in ("PATCH", "PUT"):
                return self._bucket_config(ex, bucket)
            if method == "GET":
                return self._bucket_read(ex)
            if method == "DELETE":
                return self._bucket_delete(ex, bucket)
        if (match := _OBJECTS.match(path)) and method == "GET":
            return self._list(ex, unquote(match["bucket"]))
        if match := _OBJECT.match(path):
            bucket, name = unquote(match["bucket"]), unquote(match["name"])
            if method == "GET" and ex.param("generation"):
                return self._read(ex, bucket, name, media=ex.param("alt") == "media")
            if method == "DELETE":
                return self._delete(ex, bucket, name)
            if method in ("PATCH", "PUT"):
                return self._write(ex, bucket)
        if (match := _DOWNLOAD.match(path)) and method == "GET" and ex.param("generation"):
            return self._read(ex, unquote(match["bucket"]), unquote(match["name"]), media=True)
        if method in ("POST", "PUT") and (match := _UPLOAD.match(path)):
            return self._write(ex, unquote(match["bucket"]))
        if method == "POST" and (match := _COPY.match(path) or _COMPOSE.match(path)):
            return self._write(ex, unquote(match["bucket"]))
        self.upstream.relay(ex)

    # buckets ------------------------------------------------------------------------
    def _bucket_config(self, ex: Exchange, bucket: str | None) -> None:
        """Insert (bucket None) or patch/update: versioning is ours, the rest upstream's."""
        body = ex.read_body()
        try:
            resource = json.loads(body) if body else {}
        except ValueError:
            resource = None
        if not isinstance(resource, dict):
            return ex.relay(self.upstream.forward(ex, body=body))  # upstream answers the bad body
        versioning = resource.pop("versioning", None)
        if versioning is not None:
            body = json.dumps(resource).encode()
        enabled = bool(versioning.get("enabled")) if isinstance(versioning, dict) else None
        name = bucket if bucket is not None else str(resource.get("name", ""))
        if enabled is not None and not self.archive.valid_bucket(name):
            return ex.reply_error(400, f"Invalid bucket name: '{name}'", "invalid")
        # fake-gcs-server has no bucket update (PUT): a patch with every field is one.
        method = "PATCH" if ex.method == "PUT" else ex.method
        with self.bucket_lock(name):
            answer = self.upstream.forward(ex, method=method, body=body)
            if answer.status == 200 and enabled is not None:
                if enabled != self.archive.versioned(name):
                    self._reconcile(ex, name, enabled)
                self.archive.set_versioning(name, enabled)
        self._relay_buckets(ex, answer)

    def _reconcile(self, ex: Exchange, bucket: str, enabled: bool) -> None:
        """The archive holds a copy of each live generation, so that it is there when the
        object is overwritten. Versioning turned on: copy what is live now (GCS keeps it
        once it is overwritten, whenever it was written). Suspended: drop those copies (GCS
        drops a live generation overwritten while suspended; what is noncurrent stays)."""
        for name, generation in self._live_objects(ex, bucket):
            if enabled and not self.archive.has(bucket, name, generation):
                self._archive(ex, bucket, {"name": name, "generation": generation})
            elif not enabled:
                self.archive.delete(bucket, name, generation)

    def _live_objects(self, ex: Exchange, bucket: str) -> Iterator[tuple[str, str]]:
        token = ""
        while True:
            target = f"/storage/v1/b/{quote(bucket, safe='')}/o?pageToken={quote(token)}"
            document = self.upstream.fetch(ex, "GET", target).json()
            if not isinstance(document, dict):
                return
            for item in document.get("items", []):
                yield str(item["name"]), str(item["generation"])
            token = str(document.get("nextPageToken") or "")
            if not token:
                return

    def _bucket_read(self, ex: Exchange) -> None:
        self._relay_buckets(ex, self.upstream.forward(ex))

    def _relay_buckets(self, ex: Exchange, answer: Answer) -> None:
        document = answer.json() if answer.status == 200 else None
        if not isinstance(document, dict):
            return ex.relay(answer)
        for resource in document.get("items", [document]):
            if isinstance(resource, dict) and self.archive.versioned(str(resource.get("name"))):
                resource["versioning"] = {"enabled": True}
        ex.relay(answer.with_json(document))

    def _bucket_delete(self, ex: Exchange, bucket: str) -> None:
        with self.bucket_lock(bucket):
            answer = self.upstream.forward(ex)
            if 200 <= answer.status < 300:
                self.archive.drop_bucket(bucket)
        ex.relay(answer)

    # objects ------------------------------------------------------------------------
    def _write(self, ex: Exchange, bucket: str) -> None:
        if not self.archive.versioned(bucket):
            return self.upstream.relay(ex)
        with ex.spooled_body() as body, self.bucket_lock(bucket):
            answer = self.upstream.forward(ex, body=body)
            document = answer.json() if answer.status in (200, 201) else None
            if isinstance(document, dict):
                # rewriteTo answers a rewrite response with the object inside when done.
                resource = document.get("resource", document)
                if isinstance(resource, dict) and resource.get("bucket") == bucket:
                    self._archive(ex, bucket, resource)
        ex.relay(answer)

    def _archive(self, ex: Exchange, bucket: str, resource: dict[str, Any]) -> None:
        """Keep the generation a write made (bytes read back while the lock is held)."""
        name, generation = str(resource.get("name", "")), str(resource.get("generation", ""))
        if not name or not generation.isdigit():
            return
        target = f"{_object_path(bucket, name)}?generation={generation}"
        # The whole resource, whatever `fields` the writer asked for.
        meta = self.upstream.fetch(ex, "GET", target).json()
        if not isinstance(meta, dict) or str(meta.get("generation")) != generation:
            LOG.warning("could not keep %s/%s#%s: it is gone already", bucket, name, generation)
            return
        if self.archive.has(bucket, name, generation):
            self.archive.put_metadata(meta)  # a metadata patch: the bytes are kept
            return
        download = f"/download{_object_path(bucket, name)}?alt=media&generation={generation}"
        with self.upstream.open(ex, "GET", download) as response:
            if response.status != 200:
                LOG.warning("could not keep %s/%s#%s: %s", bucket, name, generation,
                            response.status)  # fmt: skip
                return
            self.archive.put(meta, response)

    def _read(self, ex: Exchange, bucket: str, name: str, *, media: bool) -> None:
        with self.upstream.open(ex, ex.method, ex.target) as response:
            if response.status != 404:
                return ex.stream(response)
            answer = Answer.read(response)
        generation = ex.param("generation") or ""
        meta = self.archive.metadata(bucket, name, generation)
        if meta is None:
            return ex.relay(answer)  # never kept, or deleted: GCS answers 404 too
        if not media:
            return ex.reply_json(200, self._presented(ex, meta))
        path = self.archive.data_path(bucket, name, generation)
        try:
            data = path.open("rb") if path is not None else None
        except FileNotFoundError:  # deleted since its metadata was read
            data = None
        if data is None:
            return ex.relay(answer)
        with data:
            _send_media(ex, meta, data, os.fstat(data.fileno()).st_size)

    def _list(self, ex: Exchange, bucket: str) -> None:
        answer = self.upstream.forward(ex)
        document = answer.json() if answer.status == 200 else None
        if (
            not isinstance(document, dict)
            or (ex.param("versions") or "").lower() != "true"
            or document.get("nextPageToken")  # the noncurrent ones come on the last page
        ):
            return ex.relay(answer)
        prefix, delimiter = ex.param("prefix") or "", ex.param("delimiter") or ""
        items = list(document.get("items", []))
        prefixes = set(document.get("prefixes", []))
        live: dict[str, str | None] = {}
        for meta in self.archive.generations(bucket, prefix):
            name = str(meta["name"])
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest[: rest.index(delimiter) + len(delimiter)])
                continue
            if name not in live:
                live[name] = self._live_generation(ex, bucket, name)
            if str(meta["generation"]) != live[name]:
                items.append(self._presented(ex, meta))
        items.sort(key=lambda item: (str(item.get("name")), int(item.get("generation") or 0)))
        if items:
            document["items"] = items
        if prefixes:
            document["prefixes"] = sorted(prefixes)
        ex.relay(answer.with_json(document))

    def _delete(self, ex: Exchange, bucket: str, name: str) -> None:
        generation = ex.param("generation")
        conditions = _conditions(ex)
        if generation is None and not conditions:
            # The live one goes; kept already if the bucket keeps any.
            return ex.relay(gcs_batch.deleted(self.upstream.forward(ex)))
        with self.bucket_lock(bucket):
            meta = self._live_metadata(ex, bucket, name)
            # fake-gcs-server ignores a delete's preconditions: they are checked here,
            # against the live object as GCS checks them. (A write to a bucket without
            # versioning takes no lock, so it may still slip in between.)
            if meta is not None and not all(_holds(c, v, meta) for c, v in conditions):
                return ex.reply_error(412, _CONDITION_NOT_MET, "conditionNotMet")
            if generation is None:
                return ex.relay(gcs_batch.deleted(self.upstream.forward(ex)))
            live = str(meta["generation"]) if meta is not None else None
            # fake-gcs-server deletes the live object whatever generation is named: only
            # the live generation goes upstream, a noncurrent one is the archive's alone.
            kept = self.archive.delete(bucket, name, generation)
            if generation == live:
                return ex.relay(gcs_batch.deleted(self.upstream.forward(ex)))
        if kept:
            return ex.reply(204, [], b"")
        ex.reply_error(404, f"No such object: {bucket}/{name}", "notFound")

    def _live_generation(self, ex: Exchange, bucket: str, name: str) -> str | None:
        meta = self._live_metadata(ex, bucket, name)
        return str(meta["generation"]) if meta is not None else None

    def _live_metadata(self, ex: Exchange, bucket: str, name: str) -> dict[str, Any] | None:
        meta = self.upstream.fetch(ex, "GET", _object_path(bucket, name)).json()
        return meta if isinstance(meta, dict) and "generation" in meta else None

    def _presented(self, ex: Exchange, meta: dict[str, Any]) -> dict[str, Any]:
        """A kept generation's resource with links to this proxy that name the generation
        (the client downloads a loaded blob from its mediaLink)."""
        base = f"http://{ex.headers.get('Host') or self.url.removeprefix('http://')}"
        path = _object_path(str(meta["bucket"]), str(meta["name"]))
        generation = meta["generation"]
        return meta | {
            "selfLink": f"{base}{path}",
            "mediaLink": f"{base}/download{path}?generation={generation}&alt=media",
        }


def _object_path(bucket: str, name: str) -> str:
    return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def _conditions(ex: Exchange) -> list[tuple[str, str]]:
    return [(c, v) for c in _PRECONDITIONS if (v := ex.param(c)) is not None]


def _holds(condition: str, value: str, meta: dict[str, Any]) -> bool:
    field, match = _PRECONDITIONS[condition]
    return (str(meta.get(field, "")) == value.strip()) == match


def _send_media(ex: Exchange, meta: dict[str, Any], data: IO[bytes], size: int) -> None:
    """A kept generation's bytes, with the headers GCS sends and the client reads (the
    python client downloads in ranges when asked for part of an object)."""
    headers = _media_headers(meta, size)
    try:
        window = byte_range(ex.headers.get("Range"), size)
    except ValueError:
        return ex.reply_error(
            416, "The requested range cannot be satisfied.", "requestedRangeNotSatisfiable",
            [("Content-Range", f"bytes */{size}")],
        )  # fmt: skip
    if window is None:
        return ex.send_file(200, headers, data, 0, size)
    start, end = window
    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    ex.send_file(206, headers, data, start, end - start + 1)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks of `size` bytes; None for the whole
    object (no header, or one this server does not take, as several ranges); raises
    ValueError when the range is unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last N bytes
        last = int(match[2])
        if last == 0 or size == 0:
            raise ValueError("unsatisfiable")
        return max(0, size - last), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if start >= size or end < start:
        raise ValueError("unsatisfiable")
    return start, min(end, size - 1)


def _media_headers(meta: dict[str, Any], size: int) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", str(meta.get("contentType") or "application/octet-stream")),
        ("Accept-Ranges", "bytes"),
        ("X-Goog-Generation", str(meta["generation"])),
        ("X-Goog-Metageneration", str(meta.get("metageneration", "1"))),
        ("X-Goog-Stored-Content-Length", str(size)),
        ("X-Goog-Stored-Content-Encoding", str(meta.get("contentEncoding") or "identity")),
    ]
    hashes = [f"crc32c={meta['crc32c']}"] if meta.get("crc32c") else []
    hashes += [f"md5={meta['md5Hash']}"] if meta.get("md5Hash") else []
    if hashes:
        headers.append(("X-Goog-Hash", ",".join(hashes)))
    if meta.get("etag"):
        headers.append(("ETag", f'"{meta["etag"]}"'))
    for field, header in (("contentEncoding", "Content-Encoding"),
                          ("contentDisposition", "Content-Disposition"),
                          ("contentLanguage", "Content-Language"),
                          ("cacheControl", "Cache-Control")):  # fmt: skip
        if meta.get(field):
            headers.append((header, str(meta[field])))
    with contextlib.suppress(KeyError, ValueError):
        updated = datetime.fromisoformat(str(meta["updated"]).replace("Z", "+00:00"))
        headers.append(("Last-Modified", email.utils.format_datetime(updated, usegmt=True)))
    return headers
