"""The training job: `python -m trainer.task --data-uri=... --label=... [--name=value ...]`.

Reads CSV rows (listed under --data-uri, or exactly the generations --data-manifest pins),
trains an MLP with PyTorch (CUDA with bf16 autocast when there is a GPU, several replicas
through torch.distributed), and writes a servable ONNX model with its metadata to
AIP_MODEL_DIR, `metrics.json` last: its presence means the directory is complete. With
--champion-model-dir the champion is scored on the same validation rows, with --eval-uri
both models on a fixed evaluation set (comparison blocks in metrics.json). Exit codes: 0
done, 1 bad data or a failed run (the last stderr line starts with `error: `), 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer import blobs, checkpoints
from trainer.compare import Champion, score_champion, score_eval_set
from trainer.data import Shard, data_files, load_shard, manifest_files
from trainer.distributed import Collective
from trainer.errors import DataError, TrainerError
from trainer.features import (
    Schema,
    Task,
    encode_features,
    encode_labels,
    infer_schema,
    instances_from_columns,
    merge_all,
)
from trainer.manifest import DataFile
from trainer.model import build_mlp, predict, to_onnx
from trainer.replicas import Replica, replica_from_env
from trainer.reporting import HypertuneReporter, TensorBoardWriter, epoch_line, print_line
from trainer.serving import Model

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
SMOKE_FILE = "smoke.json"
METRICS_FILE = "metrics.json"  # written last: the directory is complete once it exists
SMOKE_ROWS = 5
EVAL_BATCH = 8192
DEVICE_DATA_SHARE = 0.25  # keep the data on the GPU when it takes at most this much memory


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    hidden_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive"
            for name, value in (
                ("epochs", self.epochs),
                ("lr", self.lr),
                ("batch_size", self.batch_size),
            )
            if value <= 0
        ]
        if not 0 < self.val_fraction < 1:
            problems.append("val_fraction must lie between 0 and 1")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must lie in [0, 1)")
        if any(u <= 0 for u in self.hidden_units):
            problems.append("hidden_units must be positive")
        if problems:
            raise TrainerError("; ".join(problems))


@dataclass(frozen=True)
class Outputs:
    model_dir: str
    checkpoint_dir: str | None = None
    tensorboard_dir: str | None = None


@dataclass(frozen=True)
class Inputs:
    """Where the rows come from, and what the new model is compared with."""

    data_manifest: str | None = None  # read these pinned generations instead of listing
    champion_model_dir: str | None = None  # score this servable model on the same rows
    eval_uri: str | None = None  # score both models on this fixed evaluation set


@dataclass(frozen=True)
class TrainingResult:
    metrics: dict[str, float]
    schema: Schema
    model: nn.Module = field(repr=False)  # the trained network, on the CPU
    first_epoch: int  # 1, or the epoch after the checkpoint it resumed from
    epochs: int
    comparisons: dict[str, Any] = field(default_factory=dict)  # metrics.json's blocks


def run(
    data_uri: str,
    label: str,
    outputs: Outputs,
    hp: Hyperparameters = Hyperparameters(),
    *,
    task: Task | None = None,
    categorical: Sequence[str] = (),
    inputs: Inputs = Inputs(),
    replica: Replica | None = None,
    env: Mapping[str, str] = os.environ,
    out: TextIO | None = None,
) -> TrainingResult:
    replica = replica or Replica()
    out = out or sys.stdout
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    collective = Collective(replica, device)
    collective.start()
    try:
        return _train(data_uri, label, outputs, hp, task, categorical, inputs, collective, env, out)
    finally:
        collective.close()


def _train(
    data_uri: str,
    label: str,
    outputs: Outputs,
    hp: Hyperparameters,
    task: Task | None,
    categorical: Sequence[str],
    inputs: Inputs,
    collective: Collective,
    env: Mapping[str, str],
    out: TextIO,
) -> TrainingResult:
    replica, device = collective.replica, collective.device
    chief = replica.chief
    torch.manual_seed(hp.seed)
    shard = _load(data_uri, inputs.data_manifest, label, frozenset(categorical), collective)
    schema = infer_schema(
        shard.header, shard.summaries, label, task, where=data_uri
    )  # the same on every replica: the summaries were merged across them
    features = encode_features(schema, shard.columns)
    targets = encode_labels(schema, shard.columns[label])
    classification = schema.label.task == "classification"
    if not classification:
        targets = targets.reshape(-1, 1)  # the network's output shape: one value per row
    train_rows, val_rows = split_rows(shard.rows, hp, replica.rank)
    steps = _steps_per_epoch(len(train_rows), hp.batch_size, collective)
    metric = "val_accuracy" if classification else "val_rmse"
    if chief:
        source = (
            f"{data_uri} (pinned by {inputs.data_manifest})" if inputs.data_manifest else data_uri
        )
        _describe(source, shard, schema, replica, device, out)

    x_train, y_train = _to_device(features[train_rows], targets[train_rows], device)
    x_val, y_val = _to_device(features[val_rows], targets[val_rows], device)
    network = build_mlp(schema.width, hp.hidden_units, schema.outputs, hp.dropout).to(device)
    model: nn.Module = (
        DistributedDataParallel(network, device_ids=[device.index] if device.index else None)
        if collective.active
        else network
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    fingerprint = json.dumps({"schema": schema.to_json(), "hidden": hp.hidden_units})
    first_epoch = 1 + _resume(outputs.checkpoint_dir, fingerprint, network, optimizer)

    tensorboard = TensorBoardWriter(outputs.tensorboard_dir) if outputs.tensorboard_dir else None
    hypertune = HypertuneReporter.from_env(env) if chief else None
    metrics: dict[str, float] = {}
    for epoch in range(first_epoch, hp.epochs + 1):
        started = time.perf_counter()
        train_loss = _train_epoch(
            model, optimizer, loss_fn, x_train, y_train, steps, hp, epoch, replica.rank
        )
        elapsed = time.perf_counter() - started
        loss = collective.sum([train_loss])[0] / replica.world
        rate = min(len(train_rows), steps * hp.batch_size) * replica.world / elapsed
        metrics = _evaluate(
            network, loss_fn, x_val, y_val, classification, schema.label.std, collective
        )
        metrics["train_loss"] = loss
        if chief:
            print_line(epoch_line(epoch, hp.epochs, loss, metric, metrics[metric], rate), out)
            if tensorboard:
                tensorboard.scalars(epoch, {"train/loss": loss, "samples_per_s": rate} | metrics)
            if hypertune:
                hypertune.report({metric: metrics[metric], "val_loss": metrics["val_loss"]}, epoch)
            if outputs.checkpoint_dir:
                checkpoints.save(
                    outputs.checkpoint_dir,
                    epoch,
                    {
                        "epoch": epoch,
                        "fingerprint": fingerprint,
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                    },
                )
    if not metrics:  # resumed after the last epoch: evaluate what the checkpoint holds
        metrics = _evaluate(
            network, loss_fn, x_val, y_val, classification, schema.label.std, collective
        )
        # A restarted tuning trial still owes Vertex its metric: without a line in the
        # metric file the trial would count as infeasible.
        if hypertune:
            hypertune.report({metric: metrics[metric], "val_loss": metrics["val_loss"]}, hp.epochs)
    trained = network.to("cpu").eval()
    champion = (
        score_champion(inputs.champion_model_dir, schema, shard.columns, val_rows, collective)
        if inputs.champion_model_dir
        else None
    )
    comparisons: dict[str, Any] = {}
    if chief:
        smoke = instances_from_columns(schema, shard.columns, val_rows[:SMOKE_ROWS].tolist())
        provenance = {"data_uri": data_uri, "data_manifest": inputs.data_manifest}
        comparisons = _write_outputs(
            outputs.model_dir, trained, schema, metrics, smoke, hp, provenance, replica,
            champion, inputs.eval_uri, frozenset(categorical),
        )  # fmt: skip
        _describe_comparisons(metric, metrics[metric], comparisons, out)
    collective.barrier()
    return TrainingResult(metrics, schema, trained, first_epoch, hp.epochs, comparisons)


def _load(
    data_uri: str,
    manifest: str | None,
    label: str,
    categorical: frozenset[str],
    collective: Collective,
) -> Shard:
    """This replica's shard; every replica fails together, with the same message, when any
    replica finds bad data (so none waits forever in a collective)."""
    replica = collective.replica
    shard: Shard | None = None
    problem: str | None = None
    try:
        files: list[str] | list[DataFile] = (
            manifest_files(manifest) if manifest else data_files(data_uri)
        )
        shard = load_shard(files, label, categorical, rank=replica.rank, world=replica.world)
        unknown = sorted(categorical - set(shard.header))
        if unknown:
            raise DataError(f"--categorical names {unknown[0]!r}, which is not a column")
    except DataError as err:
        problem = str(err)
    reports = collective.gather(
        (problem, shard.header if shard else None, shard.summaries if shard else None)
    )
    for reported, _, _ in reports:
        if reported:
            raise DataError(reported)
    assert shard is not None
    headers = {tuple(sorted(h)) for _, h, _ in reports}
    if len(headers) > 1:
        raise DataError(f"the data files under {data_uri} do not all have the same columns")
    summaries = merge_all(shard.header, [s for _, _, s in reports])
    return Shard(shard.header, shard.columns, shard.rows, summaries)


def split_rows(rows: int, hp: Hyperparameters, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a replica's shard: the same on every attempt."""
    order = np.random.default_rng([hp.seed, rank]).permutation(rows)
    val = max(1, round(rows * hp.val_fraction)) if rows >= 2 else 0
    return np.sort(order[val:]), np.sort(order[:val])


def _steps_per_epoch(train_rows: int, batch_size: int, collective: Collective) -> int:
    # Every replica must take the same number of steps, or DDP's all-reduce would hang.
    fewest = collective.min(train_rows)
    if fewest < 1:
        raise DataError("too few rows to train: a replica has no training rows")
    return math.ceil(fewest / batch_size)


def _to_device(
    features: np.ndarray, targets: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.from_numpy(features), torch.from_numpy(targets)
    if device.type != "cuda":
        return x, y
    free, _ = torch.cuda.mem_get_info(device)
    if x.nbytes + y.nbytes <= DEVICE_DATA_SHARE * free:
        return x.to(device), y.to(device)
    return x.pin_memory(), y.pin_memory()  # copied batch by batch, asynchronously


def _resume(
    directory: str | None, fingerprint: str, network: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Load the newest checkpoint; the number of epochs it had completed (0 if none)."""
    if not directory:
        return 0
    found = checkpoints.latest(directory)
    if found is None:
        return 0
    if found.state.get("fingerprint") != fingerprint:
        print(
            f"warning: checkpoint epoch {found.epoch} in {directory} is for other data or "
            "another network; starting from scratch",
            file=sys.stderr,
            flush=True,
        )
        return 0
    network.load_state_dict(found.state["model"])
    optimizer.load_state_dict(found.state["optimizer"])
    print(f"resumed from checkpoint epoch {found.epoch} in {directory}", flush=True)
    return found.epoch


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    hp: Hyperparameters,
    epoch: int,
    rank: int,
) -> float:
    model.train()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(hp.seed * 1_000_003 + epoch * 1009 + rank)
    order = torch.randperm(len(x), generator=generator)
    total = torch.zeros((), device=device)
    seen = 0
    autocast = device.type == "cuda"
    for step in range(steps):
        index = order[step * hp.batch_size : (step + 1) * hp.batch_size]
        xb = x[index.to(x.device)].to(device, non_blocking=True)
        yb = y[index.to(y.device)].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)  # no .item(): it would sync the GPU every step
        seen += len(index)
    return float(total) / max(seen, 1)


def _evaluate(
    network: nn.Module,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    classification: bool,
    label_std: float,
    collective: Collective,
) -> dict[str, float]:
    network.eval()
    device = next(network.parameters()).device
    loss_sum = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH].to(device, non_blocking=True)
            yb = y[start : start + EVAL_BATCH].to(device, non_blocking=True)
            logits = network(xb).float()
            loss_sum += float(loss_fn(logits, yb)) * len(xb)
            if classification:
                correct += float((logits.argmax(dim=1) == yb).sum())
    loss_sum, correct, count = collective.sum([loss_sum, correct, float(len(x))])
    count = max(count, 1.0)
    if classification:
        return {"val_accuracy": correct / count, "val_loss": loss_sum / count}
    # The loss is on standardised labels; RMSE is reported in the label's own units.
    return {
        "val_rmse": math.sqrt(loss_sum / count) * label_std,
        "val_loss": loss_sum / count,
    }


def _describe(
    data_uri: str,
    shard: Shard,
    schema: Schema,
    replica: Replica,
    device: torch.device,
    out: TextIO,
) -> None:
    label = schema.label
    what = (
        f"classification into {len(label.classes)} classes"
        if label.task == "classification"
        else "regression"
    )
    rows = shard.summaries[label.name].count
    print_line(
        f"data {data_uri}: {rows} rows, {len(schema.features)} features, {what}; "
        f"{replica.world} replica(s) on {device.type}",
        out,
    )
    if device.type == "cpu":
        print("warning: no GPU visible, training on the CPU", file=sys.stderr, flush=True)


def _write_outputs(
    model_dir: str,
    network: nn.Module,
    schema: Schema,
    metrics: Mapping[str, float],
    smoke: list[dict[str, Any]],
    hp: Hyperparameters,
    provenance: Mapping[str, str | None],
    replica: Replica,
    champion: Champion | None,
    eval_uri: str | None,
    categorical: frozenset[str],
) -> dict[str, Any]:
    """Write the model directory; the comparison blocks that went into metrics.json."""
    assert isinstance(network, nn.Sequential)
    classification = schema.label.task == "classification"
    # A previous attempt's metrics.json would make a half-rewritten directory look complete.
    blobs.delete(blobs.join(model_dir, METRICS_FILE))
    onnx_bytes = to_onnx(network, schema.width, classification)
    blobs.write_bytes(blobs.join(model_dir, MODEL_FILE), onnx_bytes)
    metadata = {
        "format": "retrain-mlp-onnx/1",
        "model_file": MODEL_FILE,
        "input": "features",
        "output": "probabilities" if classification else "value",
        "schema": schema.to_json(),
        "hyperparameters": asdict(hp),
        **{key: value for key, value in provenance.items() if value},
        "replicas": replica.world,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(blobs.join(model_dir, METADATA_FILE), metadata)
    _write_json(blobs.join(model_dir, SMOKE_FILE), {"instances": smoke})
    comparisons: dict[str, Any] = {}
    if champion is not None:
        comparisons["champion"] = champion.block
    if eval_uri:
        # The new model is scored as it will be served: its ONNX graph, not the network.
        candidate = Model(onnx_bytes, metadata)
        comparisons["eval_set"] = score_eval_set(eval_uri, candidate, champion, categorical)
    _write_json(blobs.join(model_dir, METRICS_FILE), dict(metrics) | comparisons)
    return comparisons


def _describe_comparisons(
    metric: str, value: float, comparisons: Mapping[str, Any], out: TextIO
) -> None:
    """One line per comparison, next to the epoch lines in the job's log."""
    champion = comparisons.get("champion")
    if champion is not None:
        if "error" in champion:
            print_line(f"champion {champion['model_dir']}: {champion['error']}", out)
        else:
            print_line(
                f"champion {champion['model_dir']} on the same {champion['rows']} rows: "
                f"{metric}={champion[metric]:.4f} (new model {value:.4f})",
                out,
            )
    evaluation = comparisons.get("eval_set")
    if evaluation is not None:
        if "error" in evaluation:
            print_line(f"eval set {evaluation['uri']}: {evaluation['error']}", out)
            return
        figures = [
            f"{who} {evaluation[who][metric]:.4f}"
            if metric in evaluation[who]
            else f"{who}: {evaluation[who].get('error')}"
            for who in ("candidate", "champion")
            if who in evaluation
        ]
        print_line(
            f"eval set {evaluation['uri']} ({evaluation['rows']} rows) {metric}: "
            + ", ".join(figures),
            out,
        )


def _write_json(uri: str, value: Any) -> None:
    blobs.write_bytes(uri, (json.dumps(value, indent=2) + "\n").encode(), "application/json")


def predict_rows(result: TrainingResult, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The trained network's outputs for table columns (what serving must reproduce)."""
    features = encode_features(result.schema, columns)
    return predict(result.model, features, result.schema.label.task == "classification")


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.task",
        description="Train a tabular model on CSV data and write a servable ONNX model.",
        allow_abbrev=False,
    )

    def flag(name: str, **kwargs: Any) -> None:
        spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
        parser.add_argument(*sorted(spellings), dest=name, **kwargs)

    defaults = Hyperparameters()
    flag("data_uri", required=True, help="gs://bucket/prefix/, gs://bucket/file.csv or a path")
    flag("label", required=True, help="the column to predict")
    flag("task", choices=["classification", "regression"], help="default: inferred")
    flag("categorical", default="", help="comma-separated columns to treat as categories")
    flag(
        "data_manifest",
        help="inputs.jsonl naming the objects and generations to read instead of listing",
    )
    flag("champion_model_dir", help="the champion's model directory, scored on the same rows")
    flag("eval_uri", help="a fixed evaluation set (CSV or prefix) scored with both models")
    flag("model_dir", help="default: AIP_MODEL_DIR")
    flag("checkpoint_dir", help="default: AIP_CHECKPOINT_DIR")
    flag("tensorboard_dir", help="default: AIP_TENSORBOARD_LOG_DIR")
    flag("epochs", type=int, default=defaults.epochs)
    flag("lr", type=float, default=defaults.lr)
    flag("batch_size", type=int, default=defaults.batch_size)
    flag("hidden_units", type=_units, default=defaults.hidden_units, help="e.g. 128,64")
    flag("dropout", type=float, default=defaults.dropout)
    flag("weight_decay", type=float, default=defaults.weight_decay)
    flag("val_fraction", type=float, default=defaults.val_fraction)
    flag("seed", type=int, default=defaults.seed)
    return parser


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    env = os.environ
    model_dir = args.model_dir or env.get("AIP_MODEL_DIR")
    if not model_dir:
        parser.error("no model directory: set AIP_MODEL_DIR or pass --model-dir")
    try:
        hp = Hyperparameters(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            hidden_units=args.hidden_units,
            dropout=args.dropout,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
    except TrainerError as err:
        parser.error(str(err))
    outputs = Outputs(
        model_dir=model_dir,
        checkpoint_dir=args.checkpoint_dir or env.get("AIP_CHECKPOINT_DIR") or None,
        tensorboard_dir=args.tensorboard_dir or env.get("AIP_TENSORBOARD_LOG_DIR") or None,
    )
    categorical = [c.strip() for c in args.categorical.split(",") if c.strip()]
    try:
        run(
            args.data_uri,
            args.label,
            outputs,
            hp,
            task=args.task,
            categorical=categorical,
            inputs=Inputs(
                data_manifest=args.data_manifest or None,
                champion_model_dir=args.champion_model_dir or None,
                eval_uri=args.eval_uri or None,
            ),
            replica=replica_from_env(env),
        )
    except TrainerError as err:
        _fail(str(err))
        return 1
    except Exception as err:  # unexpected: keep the traceback, still end with one clear line
        traceback.print_exc()
        _fail(f"{type(err).__name__}: {err}")
        return 1
    return 0


def _fail(message: str) -> None:
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
