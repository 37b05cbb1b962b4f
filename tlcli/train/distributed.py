"""Data-parallel training on torchrun: one process per GPU (or per CPU slot with gloo).

`torchrun --nproc_per_node=N -m tlcli finetune ...` sets RANK / WORLD_SIZE / LOCAL_RANK; we
join the process group (NCCL on CUDA, gloo on CPU), wrap the model in DDP, give each rank its
slice of every global batch, sum the train metrics over ranks, and let only rank 0 write files
and print. A single process (no torchrun) is the world of one and changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tlcli.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 under torchrun (read before the process group exists), or a lone process."""
    return os.environ.get("RANK", "0") == "0"


def init_world(device_request: str) -> World:
    """Join the torchrun process group (NCCL for CUDA, gloo for CPU); a world of one otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    if device_request.startswith("cuda:"):
        raise ConfigError("under torchrun each rank picks its GPU: use --device cuda or auto")
    world = World(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if _wants_cuda(device_request) else "gloo")
    return world


def _wants_cuda(device_request: str) -> bool:
    return device_request in ("auto", "cuda") and torch.cuda.is_available()


def rank_device(world: World, device_request: str) -> str:
    """The device this rank trains on: its own GPU under torchrun, else what was asked."""
    if not world.distributed:
        return device_request
    if _wants_cuda(device_request):
        torch.cuda.set_device(world.local_rank)
        return f"cuda:{world.local_rank}"
    return "cpu"


def shard_batches(batches: list[np.ndarray], world: World) -> list[np.ndarray]:
    """This rank's part of each global batch; every rank gets the same number of steps.

    A global batch too small to give each rank two images is dropped (BatchNorm cannot train
    on one sample, and DDP needs every rank to take every step)."""
    if not world.distributed:
        return batches
    kept = [b for b in batches if len(b) >= 2 * world.size]
    return [np.array_split(b, world.size)[world.rank] for b in kept]


def wrap_model(model: nn.Module, world: World, device: torch.device, partial_phases: bool) -> Any:
    """DDP around the model; SyncBatchNorm on CUDA where BatchNorm trains.

    partial_phases: some trainable parameters get no gradient in some epochs (the two-phase
    head warmup), which DDP must be told about. On CPU (gloo) PyTorch has no SyncBatchNorm;
    DDP broadcasts rank 0's BatchNorm buffers at each forward instead."""
    if not world.distributed:
        return model
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=partial_phases,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def sum_over_ranks(values: list[float], world: World) -> list[float]:
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's value on every rank (a decision made once, e.g. the auto strategy)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
