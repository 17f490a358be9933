"""Spreading one run over processes with torch.distributed (issue 4).

Every process holds the same meta-parameters and draws the same random
numbers (one seeded generator each): the ES noise, the episodes and the
initial states of the whole population. Each evaluates only its slice of the
population; the slices' losses and gradient shares are summed over processes
(all-reduce), so every process takes the same Adam step. `Comm` is the
single-process case; `TorchComm` wraps an initialised process group (gloo on
CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def share(count: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s part of `count` items: an exact split, the first
    `count % world_size` ranks taking one more."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class Comm:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Element-wise sum over processes (in place where possible)."""
        return tensors

    def broadcast(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rank 0's values everywhere."""
        return tensors

    def decide(self, code: int) -> int:
        """Rank 0's integer everywhere (a stop decision, say)."""
        return code

    def share_object(self, value: object) -> object:
        """Rank 0's picklable value everywhere (a checkpoint that only rank
        0's host has on disk, say)."""
        return value

    def gather_strings(self, text: str) -> list[str]:
        """Every rank's string, in rank order (on every rank)."""
        return [text]

    def close(self) -> None:
        """Leave the process group."""


class TorchComm(Comm):
    """Collectives over the default torch.distributed process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # NCCL reduces GPU tensors; gloo reduces CPU ones.
        self.device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _each(self, tensors: dict[str, Tensor], op) -> dict[str, Tensor]:
        # Every rank builds its dicts in the same order, and that order matters
        # elsewhere (noise is drawn per parameter in it), so keep it.
        out = {}
        for name in tensors:
            value = tensors[name].detach().to(self.device).contiguous().clone()
            op(value)
            out[name] = value.to(tensors[name].device)
        return out

    def sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._each(tensors, lambda t: dist.all_reduce(t, dist.ReduceOp.SUM))

    def broadcast(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._each(tensors, lambda t: dist.broadcast(t, src=0))

    def decide(self, code: int) -> int:
        value = torch.tensor([code], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return int(value.item())

    def share_object(self, value: object) -> object:
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather_strings(self, text: str) -> list[str]:
        texts: list[str] = [""] * self.world_size
        dist.all_gather_object(texts, text)
        return texts

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: torch.device, timeout_s: float = 1800) -> Comm:
    """A TorchComm when launched by torchrun (WORLD_SIZE > 1), else Comm()."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Comm()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return TorchComm(device)
