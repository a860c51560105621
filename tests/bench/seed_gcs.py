"""Objects put straight into fake-gcs-server's filesystem backend, for scale runs that need
100,000 of them in place before the measured part starts.

fake-gcs-server takes ~3 ms of its own time per object it stores (its `-data` loading is
no faster than uploads through the API: ~350 objects/s here), so recording 100,000
pending objects beforehand took longer than flushing them. Its filesystem backend keeps
an object as a file under `<root>/<bucket>/<name>` with the object's metadata as JSON in
the file's `user.metadata` extended attribute, and reads both on every request (no index
in memory). This writes objects in that format, with the metadata of an object the server
itself stored as the template: checksums, generation and times set per object. The caller
checks afterwards, through the official client, that the server lists every one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google_crc32c
from google.cloud import storage

ATTRIBUTE = "user.metadata"


class Seeder:
    """Writes objects into one bucket of a running fake-gcs-server (filesystem backend)."""

    def __init__(self, client: storage.Client, root: Path, bucket: str):
        self._dir = root / bucket
        # The template: an object stored through the API, in this server's own format.
        probe = client.bucket(bucket).blob("seed-template")
        probe.upload_from_string(b"{}", content_type="application/json")
        self._template: dict[str, Any] = json.loads(os.getxattr(self._dir / probe.name, ATTRIBUTE))
        probe.delete()
        # Generations are microsecond timestamps, as the server's own; one apart each.
        self._next = time.time_ns() // 1000

    def write(self, objects: Iterable[tuple[str, bytes, str]]) -> list[int]:
        """Write (name, content, content type) objects; their generations, in order."""
        generations = []
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for name, content, content_type in objects:
            self._next += 1
            md5 = base64.b64encode(hashlib.md5(content).digest()).decode()
            crc = base64.b64encode(google_crc32c.Checksum(content).digest()).decode()
            meta = {**self._template, "ContentType": content_type, "Md5Hash": md5,
                    "Etag": md5, "Crc32c": crc, "Generation": self._next,
                    "Created": now, "Updated": now}  # fmt: skip
            path = self._dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.setxattr(path, ATTRIBUTE, json.dumps(meta).encode())
            generations.append(self._next)
        return generations
