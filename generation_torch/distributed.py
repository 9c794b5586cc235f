"""DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU); a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_flag: str) -> Dist:
    """Join the process group when torchrun started us (WORLD_SIZE > 1); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, device)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """Average a scalar over processes (so every rank sees the same loss, e.g. for the NaN guard)."""
    if not d.enabled:
        return value
    # on the rank's device: nccl (GPU) reduces no CPU tensor, and the loss arrives on the CPU
    reduced = value.detach().to(d.device, copy=True)
    dist.all_reduce(reduced)
    return (reduced / d.world).to(value.device)


def any_across(d: Dist, flag: bool) -> bool:
    """True on every rank when it is true on any (so all ranks leave a loop at the same step)."""
    if not d.enabled:
        return flag
    value = torch.tensor(float(flag), device=d.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
