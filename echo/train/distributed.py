"""Data-parallel setup from torchrun's environment: one code path from one CPU to many GPUs.

``torchrun --nproc_per_node=K ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; without them the run is a single process and nothing is initialised.
The backend is NCCL on CUDA and gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from echo.errors import ConfigError

__all__ = ["DistContext", "setup", "teardown", "all_reduce_mean", "barrier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank, world_size, local_rank: from torchrun's environment (0, 1, 0 when absent).
        device: the torch device this process trains on.
        owns_group: True if :func:`setup` created the process group (and :func:`teardown` ends it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "cpu") -> DistContext:
    """Read torchrun's variables, pick the device and initialise the process group if needed.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (each rank then uses ``cuda:LOCAL_RANK``); ``"cuda:N"``
            is accepted for single-process runs.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the variables are inconsistent.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not 0 <= rank < world:
        raise ConfigError(f"distributed: expected 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("pretrain device: 'cuda' asked for but torch sees no CUDA device")
        index = torch.device(device).index
        if world > 1:
            index = local
        elif index is None:
            index = torch.cuda.current_device()
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    elif kind == "cpu":
        dev = torch.device("cpu")
    else:
        raise ConfigError(f"pretrain device: expected 'cpu' or 'cuda', got {device!r}")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if kind == "cuda" else None)
        owns = True
        log.info("initialised process group: rank %d of %d on %s", rank, world, dev)
    return DistContext(rank, world, local, dev, owns)


def teardown(ctx: DistContext) -> None:
    """End the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``t`` over ranks (identity in a single process)."""
    if ctx.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
