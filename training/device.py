"""Where training runs: the device, bf16 or not, and the processes under torchrun.

    dd = Distributed(pick_device("auto"))        # rank/world from torchrun's environment
    bf16 = use_bf16(dd.device, "auto")           # CUDA, or a CPU with native bf16
    loss = dd.mean(loss)                         # averaged over the processes
    t = dd.first(budget.clock())                 # rank 0's value on every rank
    dd.close()

Kept apart from train.py's loop: none of it changes while a run trains.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from core.errors import UserError


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN runs bf16 matmuls natively on AVX512-BF16 / AMX CPUs; elsewhere it emulates (slow)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast (weights and optimizer stay fp32) or not, from --precision."""
    if precision == "bf16" and not has_bf16(device):
        raise UserError(f"--precision bf16 asked for, but this {device.type} has no native bf16; use --precision fp32")
    return precision == "bf16" or (precision == "auto" and has_bf16(device))


class Distributed:
    """Rank/world from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def first(self, value: float) -> float:
        """Rank 0's value on every rank: one clock decides when all stop and what lr all use."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.item()

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()
