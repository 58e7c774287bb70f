"""How a training process runs: its place in a torchrun job, stop signals, and the log."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ddim import distributed
from ddim.devices import device_problem
from ddim.train.config import TrainingConfig


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (or a single process) and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes the log, samples and
        checkpoints (the only one outside torchrun)."""
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> Distributed:
        """Join the torchrun job, if any, on ``device`` (``auto``: CUDA where available);
        under torchrun each process takes the GPU ``$LOCAL_RANK``."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"training.device {device!r} is not a torch device") from None
        problem = device_problem(dev)
        if problem is not None:
            raise ValueError(f"training.device {device!r} cannot be used: {problem}")
        dev = distributed.init_from_env(dev)
        return cls(*distributed.world(), dev)

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        """The mean of ``x`` over the job's processes (``x`` itself in a single
        process); the all-reduce first sums ``x`` in place."""
        if self.world > 1:
            dist.all_reduce(x)
            x = x / self.world
        return x

    def barrier(self) -> None:
        """Wait until every process of the job reaches this point (nothing to wait for
        in a single process)."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the torchrun job, destroying its process group if one was started."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked at the end of each step; a second signal
    interrupts at once (the atomic writes keep the last checkpoint intact)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The name of the signal that arrived (e.g. ``SIGTERM``), or ``"signal"``
        before one has."""
        return signal.Signals(self.signum).name if self.signum else "signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Catch SIGINT and SIGTERM while the block runs, restoring the previous
        handlers after it; off the main thread, where Python cannot install handlers, catch
        nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class TrainLog:
    """Per-window averages appended to ``log.jsonl`` every ``log_every`` steps."""

    def __init__(self, path: Path, tc: TrainingConfig, enabled: bool) -> None:
        self.path, self.every, self.batch, self.enabled = path, tc.log_every, tc.batch_size, enabled
        self.losses: list[float] = []
        self.seconds = 0.0
        self.images_per_s = 0.0

    def add(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
        """Count one step's loss and seconds; every ``log_every`` steps, append (where
        enabled) the window's mean loss, this step's learning rate and gradient norm and the
        window's images per second, then start a new window."""
        self.losses.append(loss)
        self.seconds += seconds
        self.images_per_s = self.batch * len(self.losses) / max(self.seconds, 1e-9)
        if step % self.every:
            return
        record = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            "lr": lr,
            "grad_norm": grad_norm,
            "images_per_s": self.images_per_s,
            "time": time.time(),
        }
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        self.losses, self.seconds = [], 0.0


def say(message: str) -> None:
    """A message on stderr that leaves the progress bar intact."""
    tqdm.write(message, file=sys.stderr)
