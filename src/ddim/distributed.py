"""Several processes (torchrun): join the process group, find this rank, split the work.

Rank ``r`` of ``W`` takes the contiguous block ``[n r / W, n (r + 1) / W)`` of sample indices
and draws sample ``i`` from seed ``seed + i``, so together the ranks make exactly the samples
one process would (:func:`ddim.eval.metrics.merge_across_ranks` joins their statistics).
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int, world_size: int) -> range:
    """The sample indices that ``rank`` of ``world_size`` evaluates (contiguous, balanced)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if n < world_size:
        raise ValueError(f"cannot split {n} samples over {world_size} processes")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def init_from_env(device: torch.device | str) -> torch.device:
    """Join the torchrun process group named by ``$WORLD_SIZE`` (if > 1) and pick a device.

    The backend is NCCL for CUDA and gloo otherwise; with CUDA each process takes the GPU
    ``$LOCAL_RANK``. Without torchrun this just returns ``torch.device(device)``. A group
    joined here is destroyed at interpreter exit if the caller has not done so: a gloo group
    left alive aborts the process on shutdown ("terminate called without an active
    exception"), which torchrun reports as a failed rank.
    """
    dev = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_leave)
    return dev


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
