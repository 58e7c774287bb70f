"""Evaluation over several processes (torchrun): split the sample indices, merge statistics.

Rank ``r`` of ``W`` takes the contiguous block ``[n r / W, n (r + 1) / W)`` of sample indices
and draws sample ``i`` from seed ``seed + i``, so together the ranks make exactly the samples
one process would. Each rank reduces its features to :class:`~ddim.metrics.FeatureStats`;
:func:`merge_across_ranks` all-gathers them and merges them in rank order, so every rank
ends with the statistics of all ``n`` samples.
"""

from __future__ import annotations

import atexit
import os

import numpy as np
import torch
import torch.distributed as dist

from ddim.metrics import FeatureStats


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


def merge_across_ranks(stats: FeatureStats) -> FeatureStats:
    """The merged statistics of every rank's ``stats`` (a no-op in one process).

    All ranks must hold statistics of the same dimension; the result is identical on all.
    """
    size = world()[1]
    if size == 1:
        return stats
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    packed = torch.from_numpy(np.concatenate([[stats.n], stats.mu, stats.sigma.ravel()])).to(dev)
    gathered = [torch.empty_like(packed) for _ in range(size)]
    dist.all_gather(gathered, packed)
    d = stats.mu.shape[0]
    merged = None
    for p in gathered:
        p = p.cpu().numpy()
        part = FeatureStats(p[1 : 1 + d].copy(), p[1 + d :].reshape(d, d).copy(), int(p[0]))
        merged = part if merged is None else merged.merge(part)
    return merged
