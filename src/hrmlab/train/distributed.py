"""torchrun / DDP plumbing shared by CPU (gloo) and GPU (NCCL) runs; a single process is world size 1.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init_distributed` reads them, picks the backend and the
device, and every helper below degrades to a no-op when the run is not distributed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hrmlab.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    """None when not distributed."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """'auto'/None → cuda:LOCAL_RANK when CUDA exists, else CPU; anything else is taken literally.

    More local processes than GPUs is one clear error: NCCL cannot put two ranks on one GPU, and rank
    LOCAL_RANK would otherwise fail deep inside CUDA with an invalid device ordinal."""
    if device in (None, "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(f"process {local_rank} of this node has no GPU: the node has {gpus}; start at most "
                            f"{gpus} processes per node (--gpus {gpus}) or set the device to cpu (gloo)")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


def init_distributed(device: str | None = "auto") -> DistInfo:
    """Join the torchrun process group if the environment describes one; otherwise a world of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(1)  # N workers on N cores: one thread each, no oversubscription
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    log.info("rank %d/%d joined (%s on %s)", rank, world_size, backend, dev)
    return DistInfo(rank, world_size, local_rank, dev, backend)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP-wrap when distributed (broadcasts rank 0's weights so every rank starts identical)."""
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[info.device.index])
    return DistributedDataParallel(model)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op when not distributed); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
