"""Resources of one kind kept as one JSON document under the state dir (id -> message),
rewritten atomically after every change, so a restarted server sees them all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from localcloud.errors import LocalCloudError


class Records:
    """`load()` the stored resources of `message_class`; `save(resources)` them."""

    def __init__(self, path: Path, message_class: Any, what: str) -> None:
        self._path, self._message_class, self._what = Path(path), message_class, what

    def load(self) -> dict[str, Any]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            return {k: json_format.ParseDict(v, self._message_class()) for k, v in data.items()}
        except (OSError, ValueError, json_format.ParseError) as err:
            raise LocalCloudError(
                f"cannot read the {self._what} {self._path}: {err}; move it away to start empty"
            ) from err

    def save(self, resources: dict[str, Any]) -> None:
        document = {k: json_format.MessageToDict(v) for k, v in resources.items()}
        text = json.dumps(document, indent=1, sort_keys=True)
        # A reader (or a crash) must never see half a document: write aside, then rename.
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=self._path.name, suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temp, self._path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
