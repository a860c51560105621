"""The few collective operations training needs, over torch.distributed (nccl on GPU,
gloo on CPU), and their trivial single-replica form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from trainer.replicas import Replica

TIMEOUT = timedelta(minutes=10)


class Collective:
    def __init__(self, replica: Replica, device: torch.device) -> None:
        self.replica = replica
        self.device = device
        self.active = replica.world > 1

    def start(self) -> None:
        if not self.active:
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{self.replica.master_addr}:{self.replica.master_port}",
            rank=self.replica.rank,
            world_size=self.replica.world,
            timeout=TIMEOUT,
        )

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def gather(self, value: Any) -> list[Any]:
        """Every replica's `value`, in rank order (picklable objects)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.replica.world
        dist.all_gather_object(out, value)
        return out

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def min(self, value: int) -> int:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")
