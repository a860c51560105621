"""Who this process is among the job's replicas, from Vertex's environment.

PyTorch images get MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE; every image gets
CLUSTER_SPEC (JSON). Either is enough; neither means a single replica.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from trainer.errors import ReplicaError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Replica:
    rank: int = 0
    world: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT

    @property
    def chief(self) -> bool:
        return self.rank == 0


def replica_from_env(env: Mapping[str, str]) -> Replica:
    if "WORLD_SIZE" in env or "RANK" in env:
        return _from_torch_env(env)
    if env.get("CLUSTER_SPEC"):
        return _from_cluster_spec(env["CLUSTER_SPEC"])
    return Replica()


def _from_torch_env(env: Mapping[str, str]) -> Replica:
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        port = int(env.get("MASTER_PORT", str(DEFAULT_PORT)))
    except ValueError as err:
        raise ReplicaError(f"WORLD_SIZE, RANK and MASTER_PORT must be integers: {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise ReplicaError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if world > 1 and not env.get("MASTER_ADDR"):
        raise ReplicaError(f"WORLD_SIZE={world} but MASTER_ADDR is not set")
    return Replica(rank, world, env.get("MASTER_ADDR", "127.0.0.1"), port)


def _from_cluster_spec(text: str) -> Replica:
    """Vertex's CLUSTER_SPEC: {"cluster": {"workerpool0": ["host:port"], ...},
    "task": {"type": "workerpool1", "index": 0}}; ranks run through the pools in order."""
    try:
        spec = json.loads(text)
        pools: dict[str, list[str]] = spec["cluster"]
        task_type: str = spec["task"]["type"]
        index = int(spec["task"]["index"])
        ordered = sorted(pools, key=_pool_number)
        rank = sum(len(pools[p]) for p in ordered[: ordered.index(task_type)]) + index
        world = sum(len(pools[p]) for p in ordered)
        host, _, port = pools[ordered[0]][0].rpartition(":")
        return Replica(rank, world, host, int(port))
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ReplicaError(f"CLUSTER_SPEC is not a valid cluster description: {err!r}") from err


def _pool_number(name: str) -> int:
    digits = name.removeprefix("workerpool")
    return int(digits) if digits.isdigit() else 99
