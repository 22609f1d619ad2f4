"""Processes and devices: one process without ``torchrun``, or N ranks under ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`read_world` reads them (a plain ``python -m attnlab train`` has none: one process, no process group).
:func:`plan_ranks` validates the configuration against the world size BEFORE ``init_process_group``, so a bad run
fails with the same one-line error on every rank and no rank waits for another in a collective.

Ranks are laid out as ``data_ranks x context_parallel``: ranks ``[d * cp, (d + 1) * cp)`` share data-parallel
slot ``d`` (the same rows of the global batch) and each holds ``1 / cp`` of every sequence's tokens. Gradients
are averaged over ALL ranks (DDP, or FSDP2's reduce-scatter), and each rank scales its loss so that the
average is the gradient of the global batch's mean loss (see :func:`.loop.train`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["Ranks", "all_sum", "join", "plan_ranks", "read_world", "shutdown", "wrap_model"]

TIMEOUT = timedelta(minutes=5)  # a collective that waits longer than this fails instead of hanging forever


@dataclass(frozen=True)
class Ranks:
    """Where this process sits: ``rank`` of ``world_size``; data-parallel slot ``data_rank`` of ``data_ranks``;
    context-parallel position ``cp_rank`` of ``cp_size`` within ``cp_group`` (None with one rank)."""

    rank: int
    world_size: int
    device: torch.device
    data_rank: int
    data_ranks: int
    cp_rank: int
    cp_size: int
    cp_group: dist.ProcessGroup | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files and shows the progress."""
        return self.rank == 0


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def read_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    world = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    if rank >= world:
        raise ValueError(f"RANK {rank} must be below WORLD_SIZE {world}")
    return rank, world, _env_int("LOCAL_RANK", rank, 0)


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} are visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def plan_ranks(config: TrainConfig) -> Ranks:
    """This process's place and device, with ``config`` checked against the world size. No process group yet:
    a refused run raises here, on every rank alike, before any rank waits for another."""
    rank, world, local_rank = read_world()
    config.check_world(world)
    device = _device(config, local_rank)
    cp = config.context_parallel
    return Ranks(rank, world, device, rank // cp, world // cp, rank % cp, cp)


def join(ranks: Ranks) -> Ranks:
    """Join the process group (gloo on CPU, nccl on CUDA) and, with context parallelism, this rank's
    context-parallel group; unchanged on one rank."""
    if ranks.device.type == "cuda":
        torch.cuda.set_device(ranks.device)
    if not ranks.distributed:
        return ranks
    backend = "nccl" if ranks.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size, timeout=TIMEOUT)
    cp_group = None
    if ranks.cp_size > 1:  # new_group is collective: every rank creates every group, and keeps its own
        for first in range(0, ranks.world_size, ranks.cp_size):
            group = dist.new_group(list(range(first, first + ranks.cp_size)))
            if first <= ranks.rank < first + ranks.cp_size:
                cp_group = group
    return replace(ranks, cp_group=cp_group)


def wrap_model(model: nn.Module, ranks: Ranks, fsdp: bool) -> nn.Module:
    """The model on its device, wrapped for data parallelism over all ranks: FSDP2 (``fully_shard`` on every
    block, then on the whole model) with ``fsdp``, else DDP; unchanged on one rank."""
    model = model.to(ranks.device)
    if not ranks.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks (its ``blocks`` or ``layers`` list), each sharded as one FSDP unit."""
    for name in ("blocks", "layers"):
        found = getattr(model, name, None)
        if isinstance(found, nn.ModuleList):
            return list(found)
    return []


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``values`` summed over every rank (a copy; unchanged on one rank)."""
    values = values.detach().clone()
    if ranks.distributed:
        dist.all_reduce(values)
    return values


def shutdown(ranks: Ranks) -> None:
    """Leave the process group, if this run joined one."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
