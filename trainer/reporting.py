"""What a training run tells the outside world each epoch: one stdout line (what Cloud
Logging and the live view show), TensorBoard scalars, and the hyperparameter-tuning metric.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import google_crc32c

from trainer import blobs

# cloudml-hypertune's file: where Vertex reads a tuning trial's metric from.
HYPERTUNE_DEFAULT_FILE = "/tmp/hypertune/output.metrics"
HYPERTUNE_MAX_ENTRIES = 100


def epoch_line(epoch: int, epochs: int, loss: float, metric: str, value: float, rate: float) -> str:
    """`epoch 3/20 loss=0.1234 val_accuracy=0.9500 samples_per_s=12345`"""
    return f"epoch {epoch}/{epochs} loss={loss:.4f} {metric}={value:.4f} samples_per_s={rate:.0f}"


def print_line(line: str, out: TextIO) -> None:
    out.write(line + "\n")
    out.flush()


class TensorBoardWriter:
    """Scalars as a TensorBoard event file (TFRecord framing around `Event` protos, encoded
    here so the training image needs no TensorFlow). The whole file is rewritten after each
    flush, which suits a gs:// log dir and a few hundred scalars."""

    def __init__(self, log_dir: str) -> None:
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.uri = blobs.join(log_dir, name)
        self._records = bytearray()
        self._append(_event(time.time(), 0, file_version="brain.Event:2"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        now = time.time()
        for tag, value in values.items():
            self._append(_event(now, step, scalar=(tag, value)))
        blobs.write_bytes(self.uri, bytes(self._records))

    def _append(self, event: bytes) -> None:
        length = struct.pack("<Q", len(event))
        self._records += length + struct.pack("<I", _masked_crc(length))
        self._records += event + struct.pack("<I", _masked_crc(event))


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float,
    step: int,
    *,
    file_version: str | None = None,
    scalar: tuple[str, float] | None = None,
) -> bytes:
    # tensorflow.Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5;
    # Summary.value=1; Summary.Value: tag=1, simple_value=2 (float).
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalar is not None:
        tag, value = scalar
        summary_value = _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        out += _field(5, _field(1, summary_value))
    return out


class HypertuneReporter:
    """Writes the metric a Vertex hyperparameter-tuning trial is judged by, in
    cloudml-hypertune's format: the file holds the latest entries, one JSON object a line."""

    def __init__(self, path: str, trial_id: str) -> None:
        self.path = Path(path)
        self.trial_id = trial_id
        self._entries: list[str] = []

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HypertuneReporter | None:
        """Only a tuning trial (CLOUD_ML_TRIAL_ID set by Vertex) reports."""
        if "CLOUD_ML_TRIAL_ID" not in env and "CLOUD_ML_HP_METRIC_FILE" not in env:
            return None
        path = env.get("CLOUD_ML_HP_METRIC_FILE", HYPERTUNE_DEFAULT_FILE)
        return cls(path, env.get("CLOUD_ML_TRIAL_ID", "0"))

    def report(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            entry = {
                "timestamp": time.time(),
                "trial": self.trial_id,
                tag: str(float(value)),
                "global_step": str(step),
                "checkpoint_path": "",
            }
            self._entries.append(json.dumps(entry, sort_keys=True))
        self._entries = self._entries[-HYPERTUNE_MAX_ENTRIES:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(e + "\n" for e in self._entries))
