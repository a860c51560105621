"""Trainer benchmarks: CPU training throughput against a hand-written PyTorch loop, CSV
loading from fake-gcs-server against local disk, and GPU throughput when there is a GPU."""

from __future__ import annotations

import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from localcloud.storage import StorageServer
from trainer import task
from trainer.data import data_files, load_shard
from trainer.model import build_mlp
from trainer.task import Hyperparameters, Outputs

TRAIN_ROWS, TRAIN_FEATURES = 60_000, 32
HP = Hyperparameters(epochs=3, batch_size=256, hidden_units=(128, 64), dropout=0.1, lr=1e-3)
CSV_TARGET_BYTES = 100_000_000
LOAD_REPEATS = 3
ROUNDS = 3


def run() -> str:
    return "\n".join([_training_throughput(), _csv_loading(), _gpu()])


def _synthetic(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=features)
    y = (x @ w + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    return x, y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join(f"f{i}" for i in range(x.shape[1])) + ",label"
    table = np.column_stack([x, y])
    fmt = ["%.5f"] * x.shape[1] + ["%d"]
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=fmt)


def _hand_written_rates(x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    """The baseline: the same network, optimizer and batches, nothing else."""
    torch.manual_seed(0)
    model = build_mlp(x.shape[1], HP.hidden_units, 2, HP.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=HP.lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rates = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), HP.batch_size):
            index = order[start : start + HP.batch_size]
            loss = loss_fn(model(xt[index]), yt[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(len(xt) / (time.perf_counter() - started))
    return rates


def _training_throughput() -> str:
    x, y = _synthetic(TRAIN_ROWS, TRAIN_FEATURES)
    train_rows = round(TRAIN_ROWS * (1 - HP.val_fraction))
    trainer_rates: list[float] = []
    baseline_rates: list[float] = []
    run_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.csv"
        _write_csv(data, x, y)
        # Alternate the two, so a busy spell on the shared machine hits both alike.
        for _ in range(ROUNDS):
            out = io.StringIO()
            started = time.perf_counter()
            task.run(str(data), "label", Outputs(str(Path(tmp) / "model")), HP, out=out)
            run_seconds.append(time.perf_counter() - started)
            rates = [float(r) for r in re.findall(r"samples_per_s=(\d+)", out.getvalue())]
            trainer_rates += rates[1:]
            baseline_rates += _hand_written_rates(x[:train_rows], y[:train_rows], HP.epochs)[1:]
    trainer, baseline = statistics.median(trainer_rates), statistics.median(baseline_rates)
    best_ratio = max(trainer_rates) / max(baseline_rates)  # least disturbed by other load
    ratio = trainer / baseline
    return (
        "## Trainer: CPU training throughput\n\n"
        f"Samples/s of the training loop (median over {ROUNDS} alternating rounds of epochs "
        f"2-{HP.epochs}; the first epoch warms up) "
        f"on {train_rows} rows x {TRAIN_FEATURES} numeric features, binary labels, MLP "
        f"{list(HP.hidden_units)}, batch {HP.batch_size}, AdamW, {torch.get_num_threads()} "
        "torch threads. Trainer: `trainer.task.run` on a CSV of the data (its own per-epoch "
        "figure, which covers the training steps; validation is timed apart). Baseline: a "
        "minimal hand-written loop over the same network and in-memory tensors.\n\n"
        "| loop | median samples/s | best samples/s |\n|---|---:|---:|\n"
        f"| hand-written baseline | {baseline:,.0f} | {max(baseline_rates):,.0f} |\n"
        f"| trainer | {trainer:,.0f} | {max(trainer_rates):,.0f} |\n\n"
        f"Ratio trainer/baseline: **{ratio:.2f}x** on medians, {best_ratio:.2f}x on best "
        "epochs (target >= 0.9x). The whole `run` (CSV "
        f"parse, {HP.epochs} epochs with validation, ONNX export, outputs) took "
        f"{statistics.median(run_seconds):.1f} s (median).\n"
    )


def _csv_loading() -> str:
    rows = CSV_TARGET_BYTES // 164  # 20 columns, about 164 bytes a row
    x, y = _synthetic(rows, 19, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "big.csv"
        _write_csv(local, x, y)
        size = local.stat().st_size
        server = StorageServer(root=Path(tmp) / "gcs").start()
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        try:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(project="bench", credentials=AnonymousCredentials())
            client.create_bucket("bench").blob("big/big.csv").upload_from_filename(str(local))
            local_times = _load_times(str(local))
            gcs_times = _load_times("gs://bench/big/")
        finally:
            server.stop()
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
    local_s, gcs_s = statistics.median(local_times), statistics.median(gcs_times)
    return (
        "## Trainer: loading a ~100 MB CSV\n\n"
        f"`trainer.data.load_shard` (list, read, parse, summarise) on one {size / 1e6:.0f} MB "
        f"CSV of {rows:,} rows x 20 numeric columns; median of {LOAD_REPEATS} loads each. "
        "Baseline: the file on local disk. Compared: the same object in fake-gcs-server, read "
        "through google-cloud-storage.\n\n"
        "| source | seconds | MB/s |\n|---|---:|---:|\n"
        f"| local disk (baseline) | {local_s:.2f} | {size / 1e6 / local_s:.0f} |\n"
        f"| fake-gcs-server | {gcs_s:.2f} | {size / 1e6 / gcs_s:.0f} |\n\n"
        f"Ratio gcs/local: **{gcs_s / local_s:.2f}x** (target <= 1.5x).\n"
    )


def _load_times(uri: str) -> list[float]:
    times = []
    for _ in range(LOAD_REPEATS):
        started = time.perf_counter()
        shard = load_shard(data_files(uri), "label")
        times.append(time.perf_counter() - started)
        assert shard.rows > 0
    return times


def _gpu() -> str:
    title = "## Trainer: GPU throughput\n\n"
    if not torch.cuda.is_available():
        return title + "Not measured: no GPU on this machine.\n"
    return title + _gpu_measure()


def _gpu_measure() -> str:
    """Large MLP on synthetic data: data resident on the GPU against data fed from host
    memory as a CSV-loaded table would be (pinned, copied per batch)."""
    device = torch.device("cuda")
    rows, features, batch = 1_000_000, 256, 8192
    hidden = (4096, 4096, 4096)
    x, y = _synthetic(rows, features)
    model = build_mlp(features, hidden, 2, 0.0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    flops_per_sample = 6 * sum(p.numel() for p in model.parameters())

    def rate(xs: torch.Tensor, ys: torch.Tensor, steps: int = 60) -> float:
        for phase in ("warm", "timed"):
            torch.cuda.synchronize()
            started = time.perf_counter()
            for step in range(steps if phase == "timed" else 5):
                s = (step * batch) % (rows - batch)
                xb = xs[s : s + batch].to(device, non_blocking=True)
                yb = ys[s : s + batch].to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - started)

    on_device = rate(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    from_host = rate(torch.from_numpy(x).pin_memory(), torch.from_numpy(y).pin_memory())
    name = torch.cuda.get_device_name(device)
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
    card_peak = next((v for k, v in peak.items() if k in name), None)
    share = f"{on_device * flops_per_sample / card_peak:.0%}" if card_peak else "unknown peak"
    return (
        f"Device: {name}. MLP {list(hidden)} on {features} features, batch {batch}, bf16 "
        "autocast, AdamW.\n\n| input | samples/s |\n|---|---:|\n"
        f"| data resident on the GPU (baseline) | {on_device:,.0f} |\n"
        f"| data fed from pinned host memory | {from_host:,.0f} |\n\n"
        f"Input pipeline cost: **{1 - from_host / on_device:.1%}** (target <= 10%). "
        f"Fraction of the card's dense bf16 peak: {share}.\n"
    )
