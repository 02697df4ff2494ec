"""Supernet training on several processes: ``torchrun --nproc_per_node N exitnas train STUDY``.

Data parallel, as DDP: every rank builds the same global batch (same rows, same seeded
augmentation) and runs its slice ``rank::world`` through the same sandwich sub-networks; after
the sandwich's backward passes the gradients are averaged over ranks in one all-reduce, each
rank's weighted by its share of the batch, so every rank applies the gradient of the whole
batch and the weights stay identical. The sandwich runs several forward/backward passes over
different sub-networks of one module per optimiser step, which ``DistributedDataParallel``'s
reducer (one forward per backward, a fixed set of used parameters) does not fit; one explicit
all-reduce of the flattened gradients does the same job. gloo on CPU, NCCL on GPUs (each rank
on ``cuda:LOCAL_RANK``). Rank 0 alone writes checkpoints and the finished run; stopping (a
signal on any rank, or ``stop_at_step``) is agreed by all ranks after the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Ranks", "average_gradients", "init_distributed"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (``Ranks()``: training alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def init_distributed(device: str) -> tuple[Ranks, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1).

    Args:
        device: the study's training device; a CUDA device becomes ``cuda:LOCAL_RANK``.

    Returns:
        This process's :class:`Ranks` and the device it trains on.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def average_gradients(model: torch.nn.Module, share: float) -> None:
    """Sum ``share`` x each rank's gradients over ranks, in place (one all-reduce).

    Every rank has gradients for the same parameters (the same sub-networks ran everywhere);
    ``share`` is this rank's fraction of the global batch, so the sum is the global mean.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * share
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
