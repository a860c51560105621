"""Several replicas (torch.distributed, gloo on CPU) and resuming from checkpoints."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from localcloud.procs import free_port
from tests.trainer.conftest import PYTHON, child_env, digits_csv
from trainer import checkpoints
from trainer.errors import ReplicaError
from trainer.replicas import Replica, replica_from_env
from trainer.task import Hyperparameters, Outputs, TrainingResult, run, split_rows


def test_two_replicas_on_cpu_train_one_valid_model(
    tmp_path: Path, digits_model: tuple[TrainingResult, Path, str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for part, rows in enumerate((slice(0, 600), slice(600, 1200), slice(1200, None))):
        (data / f"part-{part}.csv").write_text(digits_csv(rows))
    model_dir = tmp_path / "model"
    port = free_port()
    _, champion_dir, _ = digits_model
    args = [PYTHON, "-m", "trainer.task", f"--data-uri={data}", "--label=digit", "--epochs=15",
            "--lr=0.003", "--batch-size=64", f"--champion-model-dir={champion_dir}"]  # fmt: skip
    replicas = [
        subprocess.Popen(
            args,
            env=child_env(
                AIP_MODEL_DIR=str(model_dir),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                RANK=str(rank),
                WORLD_SIZE="2",
                OMP_NUM_THREADS="1",  # two replicas share two cores
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=180) for p in replicas]

    assert [p.returncode for p in replicas] == [0, 0], [err for _, err in outputs]
    chief_out, worker_out = outputs[0][0], outputs[1][0]
    assert "1797 rows, 64 features, classification into 10 classes; 2 replica(s)" in chief_out
    assert re.search(r"^epoch 15/15 ", chief_out, re.MULTILINE)
    assert "epoch" not in worker_out  # only the chief reports
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.9
    assert (model_dir / "model.onnx").is_file()
    # The champion is scored on both replicas' validation rows: parts 0 and 2 are rank 0's.
    hp = Hyperparameters(epochs=15, lr=0.003, batch_size=64)
    val_rows = len(split_rows(1197, hp, 0)[1]) + len(split_rows(600, hp, 1)[1])
    assert metrics["champion"]["rows"] == val_rows
    assert 0.9 <= metrics["champion"]["val_accuracy"] <= 1.0


def test_replicas_fail_together_with_the_data_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.csv").write_text(digits_csv(slice(0, 100)))
    (data / "part-1.csv").write_text(digits_csv(slice(100, 200)).replace(",3\n", ",three\n", 1))
    port = free_port()
    replicas = [
        subprocess.Popen(
            [PYTHON, "-m", "trainer.task", f"--data-uri={data}", "--label=digit"],
            env=child_env(
                AIP_MODEL_DIR=str(tmp_path / "m"),
                CLUSTER_SPEC=json.dumps(
                    {
                        "cluster": {
                            "workerpool0": [f"127.0.0.1:{port}"],
                            "workerpool1": ["127.0.0.1:2222"],
                        },
                        "task": {"type": f"workerpool{rank}", "index": 0},
                    }
                ),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [p.communicate(timeout=180)[1].strip().splitlines()[-1] for p in replicas]

    assert [p.returncode for p in replicas] == [1, 1]
    assert errors[0] == errors[1]
    # Replica 1 reads part-1.csv; the chief reports its problem too.
    assert errors[0] == (
        f"error: data file {data / 'part-1.csv'} column 'digit' row 4 holds 'three', not a number"
    )


def test_a_restarted_run_resumes_from_its_newest_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text(digits_csv(slice(0, 640)))
    outputs = Outputs(str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "ckpt"))
    hp = Hyperparameters(epochs=2, batch_size=64)
    steps_per_epoch = 8  # 512 training rows / 64

    run(str(data), "digit", outputs, hp, out=io.StringIO())
    out = io.StringIO()
    resumed = run(str(data), "digit", outputs, Hyperparameters(epochs=4, batch_size=64), out=out)

    epochs = re.findall(r"^epoch (\d+)/4 ", out.getvalue(), re.MULTILINE)
    assert epochs == ["3", "4"]
    assert resumed.first_epoch == 3
    newest = checkpoints.latest(str(tmp_path / "ckpt"))
    assert newest is not None and newest.epoch == 4
    adam_steps = {float(s["step"]) for s in newest.state["optimizer"]["state"].values()}
    assert adam_steps == {4.0 * steps_per_epoch}  # the optimizer state carried over
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "checkpoint-00003.pt",
        "checkpoint-00004.pt",
    ]


def test_a_checkpoint_of_another_network_is_not_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.csv"
    data.write_text(digits_csv(slice(0, 200)))
    outputs = Outputs(str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "ckpt"))
    run(str(data), "digit", outputs, Hyperparameters(epochs=1), out=io.StringIO())

    again = run(
        str(data),
        "digit",
        outputs,
        Hyperparameters(epochs=1, hidden_units=(16,)),
        out=io.StringIO(),
    )

    assert again.first_epoch == 1
    assert "is for other data or another network; starting from scratch" in capsys.readouterr().err


def test_replica_from_torch_variables() -> None:
    env = {"MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "3333", "RANK": "2", "WORLD_SIZE": "4"}

    assert replica_from_env(env) == Replica(2, 4, "10.0.0.2", 3333)
    assert replica_from_env({}) == Replica()


def test_replica_from_vertex_cluster_spec() -> None:
    spec = {
        "cluster": {
            "workerpool0": ["chief-0:2222"],
            "workerpool1": ["worker-0:2222", "worker-1:2222"],
        },
        "environment": "cloud",
        "task": {"type": "workerpool1", "index": 1},
    }

    replica = replica_from_env({"CLUSTER_SPEC": json.dumps(spec)})

    assert replica == Replica(rank=2, world=3, master_addr="chief-0", master_port=2222)
    assert not replica.chief


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK=2 is outside WORLD_SIZE=2"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set"),
        ({"RANK": "one"}, "must be integers"),
        ({"CLUSTER_SPEC": "{}"}, "CLUSTER_SPEC is not a valid cluster description"),
    ],
)
def test_inconsistent_replica_environments_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ReplicaError, match=message):
        replica_from_env(env)


def test_checkpoints_round_trip(tmp_path: Path) -> None:
    checkpoints.save(str(tmp_path), 7, {"epoch": 7, "weights": torch.ones(3)})

    found = checkpoints.latest(str(tmp_path))

    assert found is not None and found.epoch == 7
    assert torch.equal(found.state["weights"], torch.ones(3))
