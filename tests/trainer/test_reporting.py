"""TensorBoard event files and the hyperparameter-tuning metric file."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.trainer.conftest import digits_csv
from trainer.reporting import HypertuneReporter, TensorBoardWriter, epoch_line
from trainer.task import Hyperparameters, Outputs, run


def _event_class() -> Any:
    """tensorflow.Event's fields that scalars use, declared independently of the writer."""
    f = descriptor_pb2.FileDescriptorProto(name="event_subset.proto", package="tfsubset")
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=9, label=1)
    value.field.add(name="simple_value", number=2, type=2, label=1)
    summary = f.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=11, label=3, type_name=".tfsubset.Value")
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=1, label=1)
    event.field.add(name="step", number=2, type=3, label=1)
    event.field.add(name="file_version", number=3, type=9, label=1)
    event.field.add(name="summary", number=5, type=11, label=1, type_name=".tfsubset.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tfsubset.Event"))


def _records(data: bytes) -> list[bytes]:
    """TFRecord framing: length, masked crc of length, payload, masked crc of payload."""

    def masked(chunk: bytes) -> int:
        crc = google_crc32c.value(chunk)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    out, at = [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == masked(header)
        payload = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == masked(payload)
        out.append(payload)
        at += 16 + length
    return out


def test_tensorboard_scalars_are_valid_event_records(tmp_path: Path) -> None:
    writer = TensorBoardWriter(str(tmp_path))
    writer.scalars(1, {"train/loss": 0.5, "val_accuracy": 0.75})
    writer.scalars(2, {"train/loss": 0.25})

    (path,) = tmp_path.glob("events.out.tfevents.*")
    event = _event_class()
    events = [event.FromString(r) for r in _records(path.read_bytes())]

    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(1, "train/loss", 0.5), (1, "val_accuracy", 0.75), (2, "train/loss", 0.25)]


def test_hypertune_metric_file_in_cloudml_hypertune_format(tmp_path: Path) -> None:
    path = tmp_path / "hypertune" / "output.metrics"
    reporter = HypertuneReporter.from_env(
        {"CLOUD_ML_TRIAL_ID": "7", "CLOUD_ML_HP_METRIC_FILE": str(path)}
    )
    assert reporter is not None
    reporter.report({"val_accuracy": 0.5}, step=1)
    reporter.report({"val_accuracy": 0.75}, step=2)

    lines = [json.loads(line) for line in path.read_text().splitlines()]

    assert [(e["trial"], e["val_accuracy"], e["global_step"]) for e in lines] == [
        ("7", "0.5", "1"),
        ("7", "0.75", "2"),
    ]
    assert HypertuneReporter.from_env({}) is None  # not a tuning trial: no file


def test_a_tuning_trial_reports_its_metric_every_epoch(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(digits_csv(slice(0, 300)))
    path = tmp_path / "hypertune" / "output.metrics"
    env = {"CLOUD_ML_TRIAL_ID": "4", "CLOUD_ML_HP_METRIC_FILE": str(path)}

    result = run(str(tmp_path / "d.csv"), "digit", Outputs(str(tmp_path / "m")),
                 Hyperparameters(epochs=3), env=env, out=io.StringIO())  # fmt: skip

    entries = [json.loads(line) for line in path.read_text().splitlines()]
    accuracy = [e for e in entries if "val_accuracy" in e]
    assert [(e["trial"], e["global_step"]) for e in accuracy] == [
        ("4", "1"),
        ("4", "2"),
        ("4", "3"),
    ]
    assert float(accuracy[-1]["val_accuracy"]) == result.metrics["val_accuracy"]
    assert all(isinstance(e["timestamp"], float) for e in entries)


def test_epoch_line_shape() -> None:
    assert epoch_line(3, 20, 0.12344, "val_accuracy", 0.95, 12345.4) == (
        "epoch 3/20 loss=0.1234 val_accuracy=0.9500 samples_per_s=12345"
    )
