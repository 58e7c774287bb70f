"""Train an eps-prediction U-Net (Ho et al. 2020, simple loss) on one process or under torchrun.

Read :func:`train` top to bottom. Each optimiser step ``s`` (counted from 1):

1. draws the global batch of step ``s`` (:mod:`ddim.train.batches`: every draw is a
   function of the step);
2. keeps this process's contiguous share of it and splits that into ``grad_accum``
   micro-batches; dropout is seeded by ``(seed, s, rank, micro-batch)``;
3. takes an Adam step on the loss of :mod:`ddim.train.loss` with linear warm-up and
   grad-norm clipping, then updates the EMA (:class:`torch.optim.swa_utils.AveragedModel`).

So a run resumed from any checkpoint ends with bit-identical weights (on CPU with the same
number of threads; GPU kernels such as cuDNN's convolution backward are not bitwise
deterministic), and the batch, ``t`` and noise of a step do not depend on the number of
processes. Dropout masks do (they are drawn inside the model); with ``dropout = 0`` a
K-process run matches a one-process run up to float rounding.

Checkpoints are written by rank 0 every ``ckpt_every`` steps, at the end, and when
SIGINT or SIGTERM arrives (the run then stops at the end of the current step; see
:mod:`ddim.train.state` for the folder layout). A non-finite loss or gradient norm raises
:class:`NonFiniteLossError` before the step is applied, leaving the checkpoints intact.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ddim.formats.checkpoint import save_weights
from ddim.formats.datasets import decode_workers, open_image_set
from ddim.formats.image_sets import ImageSet
from ddim.formats.images import save_png
from ddim.models.unet import UNet
from ddim.noise import seeded_latents
from ddim.precision import autocast, choose
from ddim.sampling import sample
from ddim.train import batches
from ddim.train.config import TrainConfig
from ddim.train.init import load_teacher, param_groups, start_from
from ddim.train.loader import Share, StepShares, own_part, step_loader
from ddim.train.loss import diffusion_loss, loss_weights
from ddim.train.runtime import Distributed, StopRequest, TrainLog, say
from ddim.train.state import (
    checkpoint_paths,
    prepare_out_dir,
    prune,
    read_latest,
    restore,
    rng_state,
    write_latest,
    write_state,
)

StepHook = Callable[[int, float], None]


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the step was not applied."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: the last step, the signal that stopped it early (``"SIGINT"``,
    ``"SIGTERM"``) or ``None`` if it completed, and its latest weights file."""

    step: int
    stopped_by: str | None
    weights: Path | None


@dataclass(frozen=True)
class _Run:
    """What one training run works on, built once by :func:`_setup`."""

    config: TrainConfig
    ctx: Distributed
    data: ImageSet
    workers: int
    order: batches.DataOrder
    alpha_bar: Tensor
    model: UNet
    ddp: nn.Module
    forward: nn.Module
    precision: str
    ema: AveragedModel
    opt: torch.optim.Optimizer
    describe: dict[str, Any]
    teacher: nn.Module | None

    @functools.cached_property
    def data_record(self) -> dict[str, Any]:
        """What the run trains on, kept with each checkpoint to check a resume against."""
        return {"source": self.data.source, "count": len(self.data),
                "fingerprint": self.data.fingerprint()}  # fmt: skip

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.config.out_dir) / "checkpoints"


def learning_rate(
    step: int, lr: float, warmup_steps: int, cooldown_steps: int = 0, total_steps: int = 0
) -> float:
    """The learning rate of update ``step`` (from 1): warm-up, stable, decay.

    ``lr`` is ramped linearly over the first ``warmup_steps`` updates, then held; over the
    last ``cooldown_steps`` updates of ``total_steps`` it falls linearly, by
    ``lr / (cooldown_steps + 1)`` a step, to ``lr / (cooldown_steps + 1)`` at the last one.
    """
    factor = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    if cooldown_steps:
        factor = min(factor, (total_steps - step + 1) / (cooldown_steps + 1))
    return lr * factor


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepHook | None = None,
    accept_data_change: bool = False,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run that ``config`` describes.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 writes all files.
    ``on_step(step, loss)`` runs after each step and its checkpoint. A resumed run
    refuses data that differ from those it started on, unless ``accept_data_change``.
    Raises :class:`NonFiniteLossError` on a non-finite loss, ``ValueError`` on a bad setup.
    """
    ctx = Distributed.start(config.training.device)
    try:
        return _run(config, ctx, resume=resume, progress=progress, on_step=on_step,
                    accept_data_change=accept_data_change)  # fmt: skip
    finally:
        ctx.close()


def _run(
    config: TrainConfig,
    ctx: Distributed,
    *,
    resume: bool,
    progress: bool,
    on_step: StepHook | None,
    accept_data_change: bool,
) -> TrainResult:
    tc, out = config.training, Path(config.out_dir)
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
    run = _setup(config, ctx)
    if latest is None and tc.init is not None:
        start_from(tc.init, run.model, run.ema, config.diffusion.build())
    step, moved = 0, []
    if latest:
        step, moved = restore(latest, config, run.model, run.ema, run.opt, run.data_record,
                              accept_data_change)  # fmt: skip
    if ctx.is_main:
        prepare_out_dir(config, step, fresh=latest is None)
        note = f"no checkpoint in {ckpt_dir} yet; " if resume else ""
        changed = f" ({'; '.join(moved)})" if moved else ""
        start = f" (weights from {tc.init})" if tc.init and not latest else ""
        say(
            f"resuming {out} from step {step}{changed}"
            if latest
            else f"{note}training into {out} from step 0{start}"
        )

    sched = config.diffusion.build()
    x_T = _grid_noise(config).to(ctx.device) if tc.sample_every and ctx.is_main else None
    stop, log = StopRequest(), TrainLog(out / "log.jsonl", tc, enabled=ctx.is_main)
    weights, stopped_by = latest.weights if latest else None, None
    labelled = bool(config.model.num_classes)
    part = own_part(tc.batch_size, ctx.rank, ctx.world)
    shares = step_loader(
        StepShares(run.data, run.order, tc.batch_size, part, labelled),
        step + 1, tc.total_steps, run.workers, ctx.device.type == "cuda",
    )  # fmt: skip
    bar = tqdm(total=tc.total_steps, initial=step, disable=not (progress and ctx.is_main),
               desc="training", dynamic_ncols=True)  # fmt: skip
    with stop.installed(), bar:
        while step < tc.total_steps:
            step += 1
            started = time.perf_counter()
            loss, grad_norm, lr, stopping = _train_step(run, next(shares), stop.requested)
            run.ema.update_parameters(run.model)
            log.add(step, loss, lr, grad_norm, time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{log.images_per_s:.0f}", refresh=False)
            if step % tc.ckpt_every == 0 or step == tc.total_steps or stopping:
                weights = _save_checkpoint(run, step)
            if x_T is not None and step % tc.sample_every == 0:
                grid = sample(
                    run.ema.module, x_T, sched, steps=min(tc.sample_steps, sched.num_timesteps)
                )
                save_png(out / "samples" / f"step_{step:07d}.png", grid)
            if on_step is not None:
                on_step(step, loss)
            if stopping:
                stopped_by = stop.name
                say(f"{stopped_by}: stopped after step {step}; checkpoint {weights}")
                break
    if stopped_by is None and ctx.is_main:
        ema_state = run.ema.module.state_dict()
        save_weights(out / "ema.safetensors", None, ema_state, step=step, **run.describe)
    ctx.barrier()
    return TrainResult(step, stopped_by, weights)


def _setup(config: TrainConfig, ctx: Distributed) -> _Run:
    """The data, the model (initialised from the run's seed), its EMA and optimiser."""
    tc = config.training
    sched = config.diffusion.build()
    workers = decode_workers(config.data)
    data, scan = open_image_set(config.data, config.model.num_classes or None, workers=workers)
    if scan is not None and ctx.is_main:
        say(scan.summary())
    torch.manual_seed(batches.derive_seed(tc.seed, batches.INIT))
    model = UNet(config.model).to(ctx.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    ema.eval()
    opt = torch.optim.Adam(
        param_groups(model, tc.label_lr_scale),
        lr=tc.lr,
        betas=tc.adam_betas,
        eps=tc.adam_eps,
        weight_decay=tc.weight_decay,
    )
    ddp = model
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
    describe = {
        "model_config": config.model.to_dict(),
        "schedule": sched,
        "data_shape": tuple(data.shape),
        "extra_meta": {"train_config": config.to_dict()},
    }
    order = batches.DataOrder(len(data), tc.seed)
    alpha_bar = sched.alpha_bar.to(ctx.device)
    forward = torch.compile(ddp) if tc.compile else ddp
    precision = choose(tc.precision, ctx.device)[0]
    teacher = None
    if tc.null_teacher:
        teacher = load_teacher(tc.null_teacher, sched, tuple(data.shape)).to(ctx.device)
    return _Run(
        config,
        ctx,
        data,
        workers,
        order,
        alpha_bar,
        model,
        ddp,
        forward,
        precision,
        ema,
        opt,
        describe,
        teacher,
    )


def _train_step(run: _Run, share: Share, stop_requested: bool) -> tuple[float, float, float, bool]:
    """One optimiser step; returns (loss, grad norm, lr, whether any rank must stop).

    It waits for the device once, to read the loss, the gradient norm and the ranks' stop
    votes together before the step is applied.
    """
    tc, ctx = run.config.training, run.ctx
    step, images, labels = share
    micro = tc.batch_size // ctx.world // tc.grad_accum
    draws = batches.step_draws(step, run.config, tuple(run.data.shape), len(run.alpha_bar))
    own = own_part(tc.batch_size, ctx.rank, ctx.world)
    batch = batches.assemble(images, labels, draws, own, run.model.config.num_classes)
    x0, t, noise, y = (None if v is None else v.to(ctx.device, non_blocking=True) for v in batch)
    if tc.channels_last:
        x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))

    run.opt.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=ctx.device)
    for k in range(tc.grad_accum):
        part = slice(k * micro, (k + 1) * micro)
        torch.manual_seed(batches.derive_seed(tc.seed, batches.DROPOUT, step, ctx.rank, k))
        last = k == tc.grad_accum - 1
        sync = contextlib.nullcontext() if last or ctx.world == 1 else run.ddp.no_sync()
        with sync:
            weights = loss_weights(t[part], run.alpha_bar, tc.loss_weighting, tc.min_snr_gamma)
            with autocast(run.precision, ctx.device):
                loss = diffusion_loss(
                    run.forward,
                    x0[part],
                    t[part],
                    noise[part],
                    run.alpha_bar,
                    weights,
                    None if y is None else y[part],
                    run.teacher,
                    run.model.config.num_classes,
                )
            (loss / tc.grad_accum).backward()
        loss_sum += loss.detach()

    max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(run.ddp.parameters(), max_norm)
    votes = ctx.all_reduce_mean(
        torch.stack([loss_sum / tc.grad_accum, loss_sum.new_full((), float(stop_requested))])
    )
    loss_value, stop_votes, grad_norm = torch.cat([votes, norm.reshape(1).float()]).tolist()
    for name, value in (("loss", loss_value), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{name} is {value} at step {step}; the step was not applied")
    lr = learning_rate(step, tc.lr, tc.warmup_steps, tc.cooldown_steps, tc.total_steps)
    for group in run.opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    run.opt.step()
    return loss_value, grad_norm, lr, stop_votes > 0


def _save_checkpoint(run: _Run, step: int) -> Path:
    """Write step ``step``'s weights and training state (rank 0), then move the pointer."""
    weights, state = checkpoint_paths(run.ckpt_dir, step)
    if run.ctx.is_main:
        ema_state = run.ema.module.state_dict()
        save_weights(weights, run.model.state_dict(), ema_state, step=step, **run.describe)
        write_state(
            state,
            {
                "step": step,
                "optimizer": run.opt.state_dict(),
                "ema_updates": int(run.ema.n_averaged.item()),
                "rng": rng_state(run.ctx.device),
                "config": run.config.to_dict(),
                "world_size": run.ctx.world,
                "data": run.data_record,
            },
        )
        write_latest(run.ckpt_dir, step)
        prune(run.ckpt_dir, step, run.config.training.keep_last)
    run.ctx.barrier()
    return weights


def _grid_noise(config: TrainConfig) -> Tensor:
    """The fixed ``x_T`` of the sample grids, on the CPU: sample ``i`` uses ``seed + i``."""
    tc, shape = config.training, (config.model.in_channels,) + (config.model.image_size,) * 2
    return seeded_latents(range(tc.seed, tc.seed + tc.num_samples), shape)[0]
