"""Per-epoch checkpoints under AIP_CHECKPOINT_DIR, so a restarted job (Spot preemption)
resumes where it stopped instead of starting over."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import torch

from trainer import blobs
from trainer.errors import StorageError

KEEP = 2  # the newest checkpoints kept; older ones are deleted
_NAME = re.compile(r"checkpoint-(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    epoch: int  # epochs completed
    state: dict[str, Any]  # model, optimizer, schema, fingerprint


def name(epoch: int) -> str:
    return f"checkpoint-{epoch:05d}.pt"


def latest(directory: str) -> Checkpoint | None:
    found = _epochs(directory)
    if not found:
        return None
    epoch, uri = found[-1]
    data = blobs.read_bytes(uri)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or foreign file: say which
        raise StorageError(f"checkpoint {uri} is unreadable: {err}") from err
    return Checkpoint(epoch=epoch, state=state)


def save(directory: str, epoch: int, state: dict[str, Any]) -> str:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    uri = blobs.join(directory, name(epoch))
    blobs.write_bytes(uri, buffer.getvalue())
    for _, old in _epochs(directory)[:-KEEP]:
        blobs.delete(old)
    return uri


def _epochs(directory: str) -> list[tuple[int, str]]:
    found = []
    for uri in blobs.list_files(directory, "checkpoint-*.pt"):
        match = _NAME.search(uri)
        if match:
            found.append((int(match.group(1)), uri))
    return sorted(found)
