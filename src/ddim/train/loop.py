"""Train an eps-prediction U-Net (Ho et al. 2020, simple loss) on one process or under torchrun.

Read :func:`train` top to bottom. Each optimiser step ``s`` (counted from 1):

1. draws the global batch: samples ``(s-1)*B .. s*B-1`` of an endless stream in which
   epoch ``e`` is a permutation of the data set seeded by ``(seed, e)``; its timesteps,
   noise and flips come from one generator seeded by ``(seed, s)``;
2. keeps this process's contiguous share of it and splits that into ``grad_accum``
   micro-batches; dropout is seeded by ``(seed, s, rank, micro-batch)``;
3. takes an Adam step with linear warm-up and grad-norm clipping, then updates the EMA
   (:class:`torch.optim.swa_utils.AveragedModel`).

So every random draw is a function of the step: a run resumed from any checkpoint ends
with bit-identical weights (on CPU with the same number of threads; GPU kernels such as
cuDNN's convolution backward are not bitwise deterministic), and the batch, ``t`` and
noise of a step do not depend on the number of processes. Dropout masks do (they are
drawn inside the model); with ``dropout = 0`` a K-process run matches a one-process run
up to float rounding.

Checkpoints are written by rank 0 every ``ckpt_every`` steps, at the end, and when
SIGINT or SIGTERM arrives (the run then stops at the end of the current step; see
:mod:`ddim.train.state` for the folder layout). A non-finite loss or gradient norm raises
:class:`NonFiniteLossError` before the step is applied, leaving the checkpoints intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ddim import distributed
from ddim.formats.atomic import atomic_write_text, remove_stale_temps
from ddim.formats.checkpoint import CheckpointError, load_checkpoint, save_weights
from ddim.formats.datasets import load_dataset, random_flip
from ddim.formats.images import save_png
from ddim.models.unet import UNet
from ddim.noise import seeded_latents
from ddim.sampling import sample
from ddim.schedule import NoiseSchedule
from ddim.train.config import TrainConfig, TrainingConfig
from ddim.train.state import (
    Latest,
    checkpoint_paths,
    prune,
    read_latest,
    read_state,
    write_latest,
    write_state,
)

StepHook = Callable[[int, float], None]

# Stream tags that keep the seeds of different kinds of draws apart.
_INIT, _EPOCH, _STEP, _DROPOUT = 1, 2, 3, 4
# Config keys that may change when a run is resumed without changing its results.
RESUMABLE_KEYS = frozenset(
    {"out_dir", "data.path"}
    | {
        f"training.{k}"
        for k in (
            "total_steps",
            "ckpt_every",
            "keep_last",
            "sample_every",
            "num_samples",
            "sample_steps",
            "log_every",
            "device",
        )
    }
)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the step was not applied."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: the last step, the signal that stopped it early (``"SIGINT"``,
    ``"SIGTERM"``) or ``None`` if it completed, and its latest weights file."""

    step: int
    stopped_by: str | None
    weights: Path | None


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a hash of ``seed`` and ``keys`` (independent streams)."""
    data = struct.pack(f"<{1 + len(keys)}q", seed, *keys)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class DataOrder:
    """Maps positions of an endless sample stream to data-set indices.

    Position ``p`` is in epoch ``p // n``; each epoch is ``randperm(n)`` seeded by
    ``(seed, epoch)``, so any batch can be found from its position alone.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the training data set is empty")
        self.n, self.seed = n, seed
        self._perms: dict[int, Tensor] = {}

    def indices(self, start: int, count: int) -> Tensor:
        """Data-set indices of stream positions ``start .. start + count - 1``."""
        pos = torch.arange(start, start + count)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(count, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._perm(epoch)[offsets[mask]]
        return out

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.seed, _EPOCH, epoch))
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]


def sample_timesteps(n: int, T: int, generator: torch.Generator, antithetic: bool) -> Tensor:
    """``n`` timesteps uniform on ``0..T-1``; ``antithetic`` pairs the first half with
    ``T - 1 - t`` in the second (the official code's variance reduction)."""
    if not antithetic:
        return torch.randint(0, T, (n,), generator=generator)
    t = torch.randint(0, T, (n // 2 + 1,), generator=generator)
    return torch.cat([t, T - 1 - t])[:n]


def step_batch(
    data: Tensor, order: DataOrder, step: int, config: TrainConfig, T: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The global batch of ``step`` (from 1): ``x0``, ``t`` and ``noise``, all on the CPU."""
    tc = config.training
    g = torch.Generator().manual_seed(derive_seed(tc.seed, _STEP, step))
    x0 = data[order.indices((step - 1) * tc.batch_size, tc.batch_size)]
    t = sample_timesteps(tc.batch_size, T, g, tc.antithetic)
    noise = torch.randn(x0.shape, generator=g)
    if config.data.random_flip:
        x0 = random_flip(x0, g)
    return x0, t, noise


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``; ``alpha_bar`` is the
    schedule's float64 table on ``x0``'s device (the coefficients are computed in float64)."""
    a = alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt().to(x0.dtype) * x0 + (1 - a).sqrt().to(x0.dtype) * noise


def diffusion_loss(
    model: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor
) -> Tensor:
    """Ho et al.'s simple loss (eq. 14): the mean squared error of the predicted noise."""
    return F.mse_loss(model(q_sample(x0, t, noise, alpha_bar), t).float(), noise)


def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """``lr`` ramped linearly over the first ``warmup_steps`` steps (from 1)."""
    return lr * min(1.0, step / warmup_steps) if warmup_steps else lr


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run that ``config`` describes.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 writes all files.
    ``on_step(step, loss)`` runs after each step and its checkpoint. Raises
    :class:`NonFiniteLossError` on a non-finite loss, ``ValueError`` on a bad setup.
    """
    ctx = _Distributed.start(config.training.device)
    try:
        return _run(config, ctx, resume=resume, progress=progress, on_step=on_step)
    finally:
        ctx.close()


def _run(
    config: TrainConfig,
    ctx: _Distributed,
    *,
    resume: bool,
    progress: bool,
    on_step: StepHook | None,
) -> TrainResult:
    tc = config.training
    out = Path(config.out_dir)
    ckpt_dir = out / "checkpoints"
    if tc.batch_size % (ctx.world * tc.grad_accum):
        raise ValueError(
            f"training.batch_size={tc.batch_size} must be divisible by processes x grad_accum"
            f" = {ctx.world} x {tc.grad_accum}"
        )
    latest = read_latest(ckpt_dir) if ckpt_dir.is_dir() else None
    if latest is not None and not resume:
        raise ValueError(
            f"{ckpt_dir} already holds a checkpoint (step {latest.step}); "
            f"pass --resume to continue it or pick another out_dir"
        )

    sched = config.diffusion.build()
    alpha_bar = sched.alpha_bar.to(ctx.device)
    data = load_dataset(config.data)
    order = DataOrder(len(data), tc.seed)
    torch.manual_seed(derive_seed(tc.seed, _INIT))
    model = UNet(config.model).to(ctx.device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    ema.eval()
    opt = torch.optim.Adam(
        model.parameters(),
        lr=tc.lr,
        betas=tc.adam_betas,
        eps=tc.eps,
        weight_decay=tc.weight_decay,
    )

    step = 0
    if latest is not None:
        step = _restore(latest, config, model, ema, opt)
    if ctx.is_main:
        _prepare_out_dir(config, step, fresh=latest is None)
        if latest is not None:
            _say(f"resuming {out} from step {step}")
        else:
            note = f"no checkpoint in {ckpt_dir} yet; " if resume else ""
            _say(f"{note}training into {out} from step 0")
    ddp = (
        model
        if ctx.world == 1
        else DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    )

    describe = {
        "model_config": config.model.to_dict(),
        "schedule": sched,
        "data_shape": tuple(data.shape[1:]),
        "extra_meta": {"train_config": config.to_dict()},
    }

    def save_checkpoint(step: int) -> Path:
        weights, state = checkpoint_paths(ckpt_dir, step)
        if ctx.is_main:
            save_weights(
                weights, model.state_dict(), ema.module.state_dict(), step=step, **describe
            )
            write_state(
                state,
                {
                    "step": step,
                    "optimizer": opt.state_dict(),
                    "ema_updates": int(ema.n_averaged.item()),
                    "rng": _rng_state(ctx.device),
                    "config": config.to_dict(),
                    "world_size": ctx.world,
                },
            )
            write_latest(ckpt_dir, step)
            prune(ckpt_dir, step, tc.keep_last)
        ctx.barrier()
        return weights

    x_T = _sample_noise(config).to(ctx.device) if tc.sample_every and ctx.is_main else None
    stop = _StopRequest()
    log = _Log(out / "log.jsonl", tc, enabled=ctx.is_main)
    weights = latest.weights if latest else None
    stopped_by = None
    bar = tqdm(
        total=tc.total_steps,
        initial=step,
        disable=not (progress and ctx.is_main),
        desc="training",
        dynamic_ncols=True,
    )
    with stop.installed(), bar:
        while step < tc.total_steps:
            step += 1
            started = time.perf_counter()
            loss, grad_norm, lr, stopping = _train_step(
                step, config, ctx, data, order, alpha_bar, ddp, opt, stop.requested
            )
            ema.update_parameters(model)
            log.add(step, loss, lr, grad_norm, time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{log.images_per_s:.0f}", refresh=False)
            if step % tc.ckpt_every == 0 or step == tc.total_steps or stopping:
                weights = save_checkpoint(step)
            if x_T is not None and step % tc.sample_every == 0:
                path = out / "samples" / f"step_{step:07d}.png"
                _save_samples(path, ema.module, sched, x_T, tc.sample_steps)
            if on_step is not None:
                on_step(step, loss)
            if stopping:
                stopped_by = signal.Signals(stop.signum).name if stop.signum else "signal"
                _say(f"{stopped_by}: stopped after step {step}; checkpoint {weights}")
                break
    if stopped_by is None and ctx.is_main:
        save_weights(out / "ema.safetensors", None, ema.module.state_dict(), step=step, **describe)
    ctx.barrier()
    return TrainResult(step, stopped_by, weights)


def _train_step(
    step: int,
    config: TrainConfig,
    ctx: _Distributed,
    data: Tensor,
    order: DataOrder,
    alpha_bar: Tensor,
    ddp: nn.Module,
    opt: torch.optim.Optimizer,
    stop_requested: bool,
) -> tuple[float, float, float, bool]:
    """One optimiser step; returns (loss, grad norm, lr, whether any rank must stop).

    It waits for the device once, to read the loss, the gradient norm and the ranks' stop
    votes together before the step is applied.
    """
    tc = config.training
    share = tc.batch_size // ctx.world
    micro = share // tc.grad_accum
    x0, t, noise = step_batch(data, order, step, config, alpha_bar.numel())
    own = slice(ctx.rank * share, (ctx.rank + 1) * share)
    x0, t, noise = (v[own].to(ctx.device, non_blocking=True) for v in (x0, t, noise))

    opt.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=ctx.device)
    for k in range(tc.grad_accum):
        part = slice(k * micro, (k + 1) * micro)
        torch.manual_seed(derive_seed(tc.seed, _DROPOUT, step, ctx.rank, k))
        last = k == tc.grad_accum - 1
        sync = contextlib.nullcontext() if last or ctx.world == 1 else ddp.no_sync()
        with sync:
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                loss = diffusion_loss(ddp, x0[part], t[part], noise[part], alpha_bar)
            (loss / tc.grad_accum).backward()
        loss_sum += loss.detach()

    max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(ddp.parameters(), max_norm)
    votes = ctx.all_reduce_mean(
        torch.stack([loss_sum / tc.grad_accum, loss_sum.new_full((), float(stop_requested))])
    )
    loss_value, stop_votes, grad_norm = torch.cat([votes, norm.reshape(1).float()]).tolist()
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(f"loss is {loss_value} at step {step}; the step was not applied")
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(
            f"gradient norm is {grad_norm} at step {step}; the step was not applied"
        )
    lr = learning_rate(step, tc.lr, tc.warmup_steps)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss_value, grad_norm, lr, stop_votes > 0


def _restore(
    latest: Latest,
    config: TrainConfig,
    model: nn.Module,
    ema: AveragedModel,
    opt: torch.optim.Optimizer,
) -> int:
    """Load the checkpoint ``latest`` names into the model, EMA and optimiser; its step."""
    ckpt = load_checkpoint(latest.weights)
    state = read_state(latest.state)
    if not ckpt.step == state["step"] == latest.step:
        raise CheckpointError(
            f"{latest.weights} (step {ckpt.step}) and {latest.state} (step {state['step']}) "
            f"do not belong to step {latest.step}"
        )
    if ckpt.model_state is None:
        raise CheckpointError(f"{latest.weights} lacks the raw model weights needed to resume")
    changed = _config_changes(state["config"], config.to_dict())
    if changed:
        raise ValueError(
            f"the config differs from the one {latest.state} was trained with in "
            f"{', '.join(changed)}; only {', '.join(sorted(RESUMABLE_KEYS))} may change"
        )
    model.load_state_dict(ckpt.model_state)
    ema.module.load_state_dict(ckpt.ema_state)
    ema.n_averaged.fill_(state["ema_updates"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    cuda_states = state["rng"]["cuda"]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return latest.step


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, other than those in :data:`RESUMABLE_KEYS`."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(set(flat_old) | set(flat_new))
    return [k for k in keys if k not in RESUMABLE_KEYS and flat_old.get(k) != flat_new.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (saved for completeness: every draw is re-seeded per step)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _sample_noise(config: TrainConfig) -> Tensor:
    """The fixed ``x_T`` of the sample grids, on the CPU: sample ``i`` uses ``seed + i``."""
    tc, shape = config.training, (config.model.in_channels,) + (config.model.image_size,) * 2
    return seeded_latents(range(tc.seed, tc.seed + tc.num_samples), shape)[0]


@torch.no_grad()
def _save_samples(
    path: Path, model: nn.Module, sched: NoiseSchedule, x_T: Tensor, steps: int
) -> None:
    """A PNG grid of DDIM samples (eta = 0) from ``x_T``, with at most ``steps`` steps."""
    save_png(path, sample(model, x_T, sched, steps=min(steps, sched.num_timesteps)))


def _prepare_out_dir(config: TrainConfig, step: int, fresh: bool) -> None:
    """Create the run folder, clear debris a killed run left, and record the config."""
    out = Path(config.out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "checkpoints", out / "samples"):
        if folder.is_dir():
            remove_stale_temps(folder)
    _truncate_log(out / "log.jsonl", step)
    if fresh:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (written by a run that died before checkpointing)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class _Log:
    """Per-window averages appended to ``log.jsonl`` every ``log_every`` steps."""

    def __init__(self, path: Path, tc: TrainingConfig, enabled: bool) -> None:
        self.path, self.every, self.batch, self.enabled = path, tc.log_every, tc.batch_size, enabled
        self.losses: list[float] = []
        self.seconds = 0.0
        self.images_per_s = 0.0

    def add(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
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


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked at the end of each step; a second signal
    interrupts at once (the atomic writes keep the last checkpoint intact)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclass(frozen=True)
class _Distributed:
    """This process's place in a torchrun job (or a single process) and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> _Distributed:
        """Join the torchrun job, if any, on ``device`` (``auto``: CUDA where available);
        under torchrun each process takes the GPU ``$LOCAL_RANK``."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"training.device {device!r} is not a torch device") from None
        dev = distributed.init_from_env(dev)
        return cls(*distributed.world(), dev)

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(x)
            x = x / self.world
        return x

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
