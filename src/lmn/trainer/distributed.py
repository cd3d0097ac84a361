"""Data parallel setup: which process this is, and the few collectives the trainer uses.

Under ``torchrun --nproc_per_node N`` every rank draws the same global batch and keeps its
``batch_size / N`` rows, and DDP averages gradients, so a step equals the single-process
step on the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """Average a Python float over processes (identity when not distributed)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def sum_(self, t: Tensor) -> Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def share(self, batch_size: int) -> tuple[int, int]:
        """This process's rows ``lo:hi`` of a global batch."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {self.world_size} processes")
        per = batch_size // self.world_size
        return self.rank * per, (self.rank + 1) * per


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """``(Dist, device)`` from torchrun's environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device_pref}: CUDA is not available on this machine "
                         f"({'torch is built without CUDA' if torch.version.cuda is None else 'no GPU is visible'}); "
                         "use --device cpu (or auto)")
    if world <= 1:
        return Dist(), device
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, device
