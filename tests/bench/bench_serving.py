"""Serving latency and throughput over HTTP (waitress, `python -m trainer.serving`) against
calling onnxruntime directly in-process, for 1 and 64 instances per request."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from localcloud.procs import free_port, stop_process, wait_until
from trainer.features import columns_from_instances, encode_features
from trainer.serving import Model
from trainer.task import Hyperparameters, Outputs
from trainer.task import run as train

REQUESTS = 1000
WARMUP = 50


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        data = Path(tmp) / "digits.csv"
        digits = load_digits()
        header = ",".join(f"p{i}" for i in range(64)) + ",digit"
        table = np.column_stack([digits.data, digits.target])
        np.savetxt(data, table, delimiter=",", header=header, comments="", fmt="%d")
        train(
            str(data),
            "digit",
            Outputs(str(model_dir)),
            Hyperparameters(epochs=3),
            out=io.StringIO(),
        )
        instances = [[int(v) for v in row] for row in digits.data[:64]]
        model = Model.load(str(model_dir))
        rows = [_direct_and_served(model, model_dir, instances[:n]) for n in (1, 64)]
    lines = [
        "## Serving: latency and throughput",
        "",
        "The digits model (64 features, 10 classes) behind `python -m trainer.serving` "
        "(waitress), one client on a keep-alive connection, "
        f"{REQUESTS} sequential requests after {WARMUP} warm-up ones. Baseline: "
        "`InferenceSession.run` in-process on already-encoded features; also shown: the "
        "in-process `Model.predict` (JSON instances -> encode -> run -> decode).",
        "",
        "| instances | path | p50 ms | p99 ms | requests/s |",
        "|---:|---|---:|---:|---:|",
    ]
    overheads = []
    for n, results in zip((1, 64), rows, strict=True):
        for path, times in results:
            lines.append(
                f"| {n} | {path} | {_ms(times, 50)} | {_ms(times, 99)} | {len(times) / sum(times):,.0f} |"
            )
        overheads.append(
            float(np.percentile(results[2][1], 50) - np.percentile(results[0][1], 50)) * 1000
        )
    lines += [
        "",
        f"p50 overhead of HTTP serving over onnxruntime: **{overheads[0]:.2f} ms** for one "
        f"instance (target <= 2 ms), {overheads[1]:.2f} ms for 64.",
        "",
    ]
    return "\n".join(lines)


def _ms(times: list[float], percentile: int) -> str:
    return f"{np.percentile(times, percentile) * 1000:.3f}"


def _timed(call: Callable[[], object]) -> list[float]:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _direct_and_served(
    model: Model, model_dir: Path, instances: list[list[int]]
) -> list[tuple[str, list[float]]]:
    features = encode_features(model.schema, columns_from_instances(model.schema, instances))
    direct = _timed(lambda: model.session.run(None, {model.input_name: features}))
    in_process = _timed(lambda: model.predict(instances))
    body = json.dumps({"instances": instances}).encode()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.serving"],
        env={"AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": str(model_dir), "PATH": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        wait_until(lambda: _healthy(port), what="serving", timeout=60, process=process)

        def post() -> None:
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200

        served = _timed(post)
        connection.close()
    finally:
        stop_process(process)
    return [
        ("onnxruntime in-process (baseline)", direct),
        ("Model.predict in-process", in_process),
        ("HTTP via waitress", served),
    ]


def _healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/health")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False
