"""torchrun / DistributedDataParallel helpers.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and starts a process group (``nccl`` on CUDA,
``gloo`` on CPU). Without those variables everything runs as a single process and every collective below
is a no-op, so the same training code serves one CPU, one GPU and many nodes.

Uneven inputs: each rank holds its own share of the utterances, so ranks can end up with different batch
counts. Instead of upstream's per-batch monitored barrier with a private timeout attribute (which breaks
on newer PyTorch), every epoch starts with one ``all_reduce(MIN)`` of the batch counts and all ranks run
exactly that many batches (:func:`equal_batch_count`). The few batches a larger rank drops differ from
epoch to epoch because the batch plan is reshuffled every epoch.

Rank-0-only work (logging, checkpoint files, audio samples) runs inside :func:`main_only`. A collective
reached there would be entered by rank 0 alone while the other ranks wait at the next one (gloo then fails
with "Received data size doesn't match expected size", nccl hangs), so every collective below refuses to
run inside that block, in a single process too: the mistake fails in the first unit test, not on a cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from cosyml.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group from torchrun's environment (or describe a single process).

    ``device``: "auto" (the local CUDA device when present, else CPU), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda" and dev.index is None:  # "cuda" under torchrun: this rank's GPU
        dev = torch.device("cuda", local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def current(device: torch.device | None = None) -> DistInfo:
    """The :class:`DistInfo` of an already initialised process group (single process when none)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    else:
        rank, world, local = 0, 1, 0
    if device is None:
        device = resolve_device("auto", local)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


_main_only_depth = 0


class CollectiveInMainOnlyBlock(RuntimeError):
    """A collective was called inside a rank-0-only block (a programming error, not a user one)."""


@contextlib.contextmanager
def main_only() -> Iterator[None]:
    """Mark a block that only rank 0 runs: collectives inside it raise instead of desynchronising ranks."""
    global _main_only_depth
    _main_only_depth += 1
    try:
        yield
    finally:
        _main_only_depth -= 1


def _collective(name: str) -> None:
    if _main_only_depth:
        raise CollectiveInMainOnlyBlock(
            f"ddp.{name} called inside a rank-0-only block: the other ranks would wait at another collective; "
            "compute it on every rank before the block"
        )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    _collective("barrier")
    if info.distributed:
        dist.barrier()


def _reduce(values: list[float], info: DistInfo, op: str) -> list[float]:
    _collective(f"all_reduce({op})")
    if not info.distributed:
        return values
    # nccl only reduces CUDA tensors; gloo only CPU ones
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return [float(v) for v in tensor.tolist()]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    return _reduce(values, info, "SUM")


def equal_batch_count(num_batches: int, info: DistInfo) -> int:
    """The smallest batch count over ranks: every rank runs that many batches this epoch."""
    _collective("equal_batch_count")
    if not info.distributed:
        return num_batches
    return int(_reduce([float(num_batches)], info, "MIN")[0])


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    _collective("gather_objects")
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    _collective("broadcast_object")
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module, info: DistInfo, find_unused_parameters: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there are several ranks, else ``model`` itself."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (the one whose state dict has the official keys)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
