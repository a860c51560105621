"""The emulator's resources, held in memory and persisted as one JSON document under
the state dir after every change, so a restarted server sees everything."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import json_format

from localcloud.errors import LocalCloudError

# The raw protobuf classes behind the proto-plus types: json_format works on these.
CustomJobPb: Any = aiplatform_v1.CustomJob.pb()
ModelPb: Any = aiplatform_v1.Model.pb()
EndpointPb: Any = aiplatform_v1.Endpoint.pb()

STATE_FILE = "vertex-state.json"


@dataclass
class State:
    """All resources, keyed by numeric id (models: id -> version id -> version;
    model_labels: id -> the labels set on the model rather than on one version).

    `lock` guards every read-modify-write; call `save()` while holding it."""

    path: Path
    jobs: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, operations_pb2.Operation] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def load(cls, state_dir: Path) -> State:
        state_dir.mkdir(parents=True, exist_ok=True)
        state = cls(path=state_dir / STATE_FILE)
        if not state.path.exists():
            return state
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
            state.jobs = {k: _parse(v, CustomJobPb()) for k, v in data["customJobs"].items()}
            state.models = {
                model_id: {v: _parse(d, ModelPb()) for v, d in versions.items()}
                for model_id, versions in data["models"].items()
            }
            # Absent from states written before model-level labels existed.
            state.model_labels = {k: dict(v) for k, v in data.get("modelLabels", {}).items()}
            state.endpoints = {k: _parse(v, EndpointPb()) for k, v in data["endpoints"].items()}
            state.operations = {
                k: _parse(v, operations_pb2.Operation()) for k, v in data["operations"].items()
            }
        except (OSError, ValueError, KeyError, json_format.ParseError) as err:
            raise LocalCloudError(
                f"cannot read the Vertex emulator state {state.path}: {err}; "
                "move it away to start empty"
            ) from err
        return state

    def save(self) -> None:
        document = {
            "customJobs": {k: _dump(v) for k, v in self.jobs.items()},
            "models": {
                model_id: {v: _dump(m) for v, m in versions.items()}
                for model_id, versions in self.models.items()
            },
            "modelLabels": self.model_labels,
            "endpoints": {k: _dump(v) for k, v in self.endpoints.items()},
            "operations": {k: _dump(v) for k, v in self.operations.items()},
        }
        _write_atomically(self.path, json.dumps(document, indent=1, sort_keys=True))


def _parse(data: dict[str, Any], message: Any) -> Any:
    json_format.ParseDict(data, message)
    return message


def _dump(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(message)
    return data


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or a crash) must never see half a document: write aside, then rename.
    fd, temp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
