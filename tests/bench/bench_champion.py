"""What judging the new model fairly costs the job: the time the trainer spends scoring the
champion on the new model's validation rows, as a share of the training job's time.

The trainer (`python -m trainer.task`, the CPU) trains on the demo data in fake-gcs-server
with and without `--champion-model-dir`, in alternating rounds, each a fresh process as a
job is. The job-time difference is noisy on a shared machine, so the champion step is
also timed alone, cold, as the job runs it: in a fresh process, loading the champion from
storage (onnxruntime imported, session built) and scoring it on the same rows.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
BUCKET = "bench-champion"
DATA = f"gs://{BUCKET}/digits/"
CHAMPION = f"gs://{BUCKET}/champion/model/"
# The demo pipeline's training (infra/localcloud/demo/pipelines.toml).
DEMO_ARGS = ["--label=digit", "--epochs=30", "--lr=0.003", "--batch-size=64"]
TARGET_SHARE = 0.05


def run() -> str:
    from localcloud.storage import StorageServer

    with tempfile.TemporaryDirectory() as tmp:
        server = StorageServer(root=Path(tmp) / "gcs").start()
        try:
            env = {**os.environ, "STORAGE_EMULATOR_HOST": server.url}
            rows = _upload_demo_data(env, Path(tmp))
            _train(env, CHAMPION, seed=1)  # another model of the same data, as a champion is
            without: list[float] = []
            with_champion: list[float] = []
            alone: list[float] = []
            for round_ in range(ROUNDS):
                # Alternate the order, so a busy spell on the shared machine hits both alike.
                for judged in (round_ % 2 == 0, round_ % 2 == 1):
                    model_dir = f"gs://{BUCKET}/runs/{round_}-{int(judged)}/model/"
                    seconds = _train(env, model_dir, champion=CHAMPION if judged else None)
                    (with_champion if judged else without).append(seconds)
                    if judged:
                        _check_scored(env, model_dir)
                alone.append(_champion_step(env))
        finally:
            server.stop()
    return _section(rows, without, with_champion, alone)


def _upload_demo_data(env: Mapping[str, str], tmp: Path) -> int:
    """The demo's training rows as its three CSV parts; the number of rows."""
    from localcloud.demo.run import make_data, split

    train, _ = make_data()
    bucket = _client(env).create_bucket(BUCKET)
    for index, part in enumerate(split(train, 3)):
        path = tmp / f"part-{index}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(part[0]))
            writer.writeheader()
            writer.writerows(part)
        bucket.blob(f"digits/part-{index}.csv").upload_from_filename(str(path))
    return len(train)


def _client(env: Mapping[str, str]) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage  # type: ignore[attr-defined]

    return storage.Client(
        project="bench",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
    )


def _train(
    env: Mapping[str, str], model_dir: str, champion: str | None = None, seed: int = 0
) -> float:
    """Wall seconds of one training job: a fresh trainer process, start to exit."""
    args = [sys.executable, "-m", "trainer.task", f"--data-uri={DATA}", *DEMO_ARGS,
            f"--seed={seed}", f"--model-dir={model_dir}"]  # fmt: skip
    if champion:
        args.append(f"--champion-model-dir={champion}")
    started = time.perf_counter()
    done = subprocess.run(
        args, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the trainer failed: {done.stderr[-2000:]}")
    return seconds


def _check_scored(env: Mapping[str, str], model_dir: str) -> None:
    # A run whose champion could not be scored would time nothing worth reporting.
    bucket, _, name = model_dir.removeprefix("gs://").partition("/")
    blob = _client(env).bucket(bucket).blob(name + "metrics.json")
    block = json.loads(blob.download_as_bytes()).get("champion", {})
    if "val_accuracy" not in block:
        raise RuntimeError(f"the champion was not scored: {block}")


def _champion_step(env: Mapping[str, str]) -> float:
    """Seconds of the champion step alone, cold, in a fresh process (see `_score_cold`)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_champion", DATA, CHAMPION],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the champion step failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _score_cold(data_uri: str, champion_dir: str) -> float:
    """The trainer's champion step on the rows the trainer validates on, timed from a
    process that has loaded the data but not onnxruntime: what the job adds."""
    import torch

    from trainer.compare import score_champion
    from trainer.data import data_files, load_shard
    from trainer.distributed import Collective
    from trainer.features import infer_schema
    from trainer.replicas import Replica
    from trainer.task import Hyperparameters, split_rows

    shard = load_shard(data_files(data_uri), "digit")
    schema = infer_schema(shard.header, shard.summaries, "digit", None, where=data_uri)
    _, val_rows = split_rows(shard.rows, Hyperparameters(), 0)
    collective = Collective(Replica(), torch.device("cpu"))
    started = time.perf_counter()
    champion = score_champion(champion_dir, schema, shard.columns, val_rows, collective)
    seconds = time.perf_counter() - started
    if "val_accuracy" not in champion.block:
        raise RuntimeError(f"the champion was not scored: {champion.block}")
    return seconds


def _section(
    rows: int, without: list[float], with_champion: list[float], alone: list[float]
) -> str:
    base = statistics.median(without)
    judged = statistics.median(with_champion)
    paired = statistics.median(w - b for w, b in zip(with_champion, without, strict=True))
    step = statistics.median(alone)
    best = min(with_champion) - min(without)  # the runs least disturbed by other load
    return (
        "## Trainer: scoring the champion on the same rows\n\n"
        f"The demo data ({rows:,} rows, 3 CSV parts in fake-gcs-server), the demo pipeline's "
        f"training ({' '.join(DEMO_ARGS[1:])}) on the CPU; each job a fresh `python -m "
        f"trainer.task` process, timed start to exit; {ROUNDS} alternating rounds, medians. "
        "The champion is another model of the same data, loaded from storage. The job-time "
        "difference is at the mercy of other load on the machine, so the champion step is "
        "also timed alone, cold (a fresh process: onnxruntime imported, the champion read "
        "from storage, its session built, the validation rows scored).\n\n"
        "| job | median s | best s |\n|---|---:|---:|\n"
        f"| training job (baseline) | {base:.2f} | {min(without):.2f} |\n"
        f"| training job with `--champion-model-dir` | {judged:.2f} | {min(with_champion):.2f} |\n"
        f"| difference (median per round; of the bests) | {paired:+.2f} | {best:+.2f} |\n"
        f"| champion step alone, cold | {step:.3f} | {min(alone):.3f} |\n\n"
        "Champion scoring as a share of the training job, the step's median over the "
        f"least disturbed training job (the larger share): **{step / min(without):.1%}** "
        f"(target <= {TARGET_SHARE:.0%}); from the job times {paired / base:+.1%} on "
        f"medians, {best / min(without):+.1%} on the best runs.\n"
    )


if __name__ == "__main__":
    # `python -m tests.bench.bench_champion DATA_URI CHAMPION_DIR`: the cold champion step.
    print(f"{_score_cold(sys.argv[1], sys.argv[2]):.6f}")
