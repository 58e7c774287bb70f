"""Resuming a long FD run: the feature statistics of each finished batch, kept on disk.

One Table 1 cell at S = 1000 costs hours of CPU, longer than a working session. A
:class:`BatchStore` keeps the :class:`~ddim.eval.metrics.FeatureStats` of every finished
batch of samples in a folder, one ``.npz`` per batch named by its range of sample indices
and tagged with a key that names what was sampled (the model's weights, the sampler
options, the seed, the precision, the features). A rerun loads those batches instead of
sampling them again; since :func:`ddim.eval.experiments.sample_stats` merges the batches
in the same order either way, the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.eval.metrics import FeatureStats
from ddim.speed.prepared import Compiled


def weights_digest(model: torch.nn.Module | Compiled) -> str:
    """SHA-256 of ``model``'s tensors in order (dtype, shape, values), the same whatever
    their memory layout or a ``torch.compile`` wrapper."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass(frozen=True)
class BatchStore:
    """Statistics of finished batches under ``folder``, each tagged with ``key``."""

    folder: Path
    key: str

    def cell(self, name: str, options: object) -> BatchStore:
        """The store of one grid cell: subfolder ``name``, ``options`` added to the key."""
        return BatchStore(self.folder / name, f"{self.key}|{options!r}")

    def stats(self, start: int, count: int, compute: Callable[[], FeatureStats]) -> FeatureStats:
        """The statistics of samples ``start .. start + count - 1``: loaded if an earlier run
        finished that batch, else ``compute()``-d and written (atomically) for a later one."""
        path = self.folder / f"{start:07d}+{count}.npz"
        if path.is_file():
            try:
                return FeatureStats.load(path, self.key)
            except ValueError:
                raise ValueError(
                    f"{path} was written by a different run (another model, sampler setting, "
                    f"seed, precision or features); delete {self.folder} to start it afresh"
                ) from None
        stats = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        stats.save(path, self.key)
        return stats
