"""Progressive distillation (Salimans & Ho, ICLR 2022): rounds that halve a DDIM plan.

Read :func:`distill` top to bottom. The first teacher is a ddim checkpoint sampled by DDIM
(or ``distill.teacher_solver``) over ``distill.teacher_steps`` steps from the top timestep;
each round trains a student, started from its teacher's weights (the first from
``distill.init`` if given), whose one DDIM step lands where ``distill.hops`` (two) of the
teacher's do (:mod:`ddim.train.progressive`), and the round's EMA student is the next
round's teacher.
Each optimiser step ``s`` of round ``r``:

1. draws its batch of images, student points ``k`` and noise from generators seeded by
   ``(seed, r, s)``, so any step's batch can be made again from the step alone;
2. noises the images to ``z_t`` at the student's ``t = plan[k]``, runs the teacher's
   ``distill.hops`` DDIM steps in fp32 (two: Salimans & Ho; one, in a run that only
   re-parameterizes: ``teacher_steps == student_steps``; in round 1, the steps of
   ``distill.teacher_solver``) and solves eq. (1) there for the target ``x~``;
3. takes an Adam step on ``w(t) |x^ - x~|^2`` (the student's data prediction read through
   its parameterization; ``w`` is ``distill.weighting``), with warm-up, clipping and the
   EMA update of training.

Dropout is off in the student: the teacher's target is deterministic. A round's folder
(``<out_dir>/round-<r>-<N>steps/``) holds checkpoints as training's do
(:mod:`ddim.train.state`; resumed bit-identically after SIGKILL on the same machine), its
``log.jsonl``, and at its end ``student.safetensors``: the EMA student, whose config records
its prediction and its plan, so :func:`ddim.sample` and ``ddim sample`` use that plan.
A resume goes on after the latest round with a student; earlier rounds' folders may be
deleted by then.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ddim.formats.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_weights,
)
from ddim.formats.datasets import open_image_set, random_flip
from ddim.formats.image_sets import ImageSet, to_model_range
from ddim.models.unet import UNet, UNetConfig
from ddim.precision import autocast, choose
from ddim.sampler_options import SamplerOptions
from ddim.schedule import NoiseSchedule
from ddim.train.batches import LABELS, STEP, DataOrder, derive_seed
from ddim.train.distill_config import DistillConfig
from ddim.train.loop import NonFiniteLossError, learning_rate
from ddim.train.progressive import (
    distillation_loss,
    distillation_plans,
    solver_landing,
    student_points,
)
from ddim.train.runtime import Distributed, StopRequest, TrainLog, say
from ddim.train.state import (
    checkpoint_paths,
    flatten,
    prune,
    read_latest,
    read_state,
    rng_state,
    write_latest,
    write_state,
)

#: The file a finished round leaves in its folder.
STUDENT = "student.safetensors"
#: Seed tag of a round's data order, apart from training's tags.
ROUND = 11
#: Config keys that may change when a round is resumed (where and how it computes, and
#: bookkeeping), as in training.
RESUMABLE = frozenset({"out_dir", "data.path", "distill.teacher"}) | {
    f"training.{k}"
    for k in ("device", "precision", "channels_last", "ckpt_every", "keep_last", "log_every")
}


@dataclass(frozen=True)
class DistillResult:
    """How a run ended: the students it finished (paths, first round first), the signal
    that stopped it early or ``None``, and the round and step it stopped at."""

    students: list[Path]
    stopped_by: str | None
    round: int
    step: int


@dataclass
class _Round:
    """What one round works on."""

    index: int
    folder: Path
    teacher: torch.nn.Module
    teacher_prediction: str
    teacher_digest: str
    student: UNet
    ema: AveragedModel
    opt: torch.optim.Optimizer
    student_plan: tuple[int, ...]
    teacher_plan: tuple[int, ...]
    teacher_run: SamplerOptions | None = None
    """How the teacher walks its plan when not by DDIM's per-row steps (round 1's solver)."""


def round_folder(out_dir: str | Path, index: int, steps: int) -> Path:
    """``<out_dir>/round-<index>-<steps>steps``."""
    return Path(out_dir) / f"round-{index}-{steps}steps"


def distill(
    config: DistillConfig, *, resume: bool = False, progress: bool = True, on_step: Any = None
) -> DistillResult:
    """Run (or, with ``resume``, continue) every round of ``config``.

    ``on_step(round, step, loss)`` runs after each step and its checkpoint. Raises
    :class:`~ddim.train.loop.NonFiniteLossError` naming the round and step on a non-finite
    loss, and a ValueError (:class:`CheckpointError`) on a teacher that does not fit.
    """
    ctx = Distributed.start(config.training.device)
    try:
        if ctx.world > 1:
            raise ValueError("ddim distill runs in one process; start it without torchrun")
        return _rounds(config, ctx.device, resume, progress, on_step)
    finally:
        ctx.close()


def _rounds(
    config: DistillConfig, device: torch.device, resume: bool, progress: bool, on_step: Any
) -> DistillResult:
    tc = config.training
    first = load_checkpoint(config.distill.teacher)
    sched = _check_teacher(config, first)
    ds = config.distill
    plans = distillation_plans(sched, ds.teacher_steps, ds.student_steps, ds.hops,
                               ds.teacher_spacing)  # fmt: skip
    if plans[0] == plans[-1] and first.model_config.prediction == config.distill.prediction:
        raise ValueError(
            f"distill.teacher_steps == distill.student_steps only re-parameterizes, but the "
            f"teacher already predicts {config.distill.prediction}"
        )
    started = [p for p in Path(config.out_dir).glob("round-*") if p.is_dir()]
    if started and not resume:
        raise ValueError(
            f"{config.out_dir} already holds distillation rounds; pass --resume to continue "
            f"or pick another out_dir"
        )
    data, scan = open_image_set(config.data, first.model_config.num_classes or None)
    if scan is not None:
        say(scan.summary())
    labels = data.labels
    teacher_path = first.path or Path(config.distill.teacher)
    students: list[Path] = []
    done = [r for r in range(1, len(plans))
            if (round_folder(config.out_dir, r, len(plans[r])) / STUDENT).is_file()]  # fmt: skip
    for r in range(1, len(plans)):
        folder = round_folder(config.out_dir, r, len(plans[r]))
        if r <= max(done, default=0):  # only the latest student is needed to go on
            if (folder / STUDENT).is_file():
                teacher_path = folder / STUDENT
                students.append(teacher_path)
            continue
        rnd = _start_round(config, r, folder, teacher_path, plans[r - 1], plans[r], device)
        step, stopped_by = _train_round(config, rnd, sched, data, labels, device, progress, on_step)
        if stopped_by is not None:
            return DistillResult(students, stopped_by, r, step)
        teacher_path = folder / STUDENT
        save_weights(teacher_path, None, rnd.ema.module.state_dict(), step=step,
                     **_describe(config, rnd, sched))  # fmt: skip
        say(f"round {r}: {len(plans[r])}-step student written to {teacher_path}")
        students.append(teacher_path)
    return DistillResult(students, None, len(plans) - 1, tc.total_steps)


def _check_teacher(config: DistillConfig, ckpt: Checkpoint) -> NoiseSchedule:
    """The teacher's schedule, after checking it against the config's data and schedule."""
    name = config.distill.teacher
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    if tuple(ckpt.data_shape) != shape:
        raise CheckpointError(
            f"distill.teacher {name} takes {tuple(ckpt.data_shape)} images, but data gives {shape}"
        )
    if config.diffusion is not None and not torch.equal(
        config.diffusion.build().betas, ckpt.schedule.betas
    ):
        raise CheckpointError(
            f"distill.teacher {name} was trained on another noise schedule than the config's "
            f"diffusion section"
        )
    return ckpt.schedule


def _start_round(
    config: DistillConfig,
    r: int,
    folder: Path,
    teacher_path: Path,
    teacher_plan: tuple[int, ...],
    student_plan: tuple[int, ...],
    device: torch.device,
) -> _Round:
    """Round ``r``'s frozen fp32 teacher and its student, started from the teacher's
    weights (or restored from the round's latest checkpoint)."""
    tc = config.training
    ckpt = load_checkpoint(teacher_path)
    digest = read_metadata(teacher_path)["sha256"]
    teacher = ckpt.unet("ema").to(device).eval().requires_grad_(False)
    student_config = replace(
        ckpt.model_config, prediction=config.distill.prediction, sampling_plan=student_plan
    )
    student = UNet(student_config)
    student.load_state_dict(ckpt.ema_state if r > 1 or config.distill.init is None
                            else _init_weights(config.distill.init, ckpt))  # fmt: skip
    student = student.to(device).eval()  # dropout off: the target is deterministic
    if tc.channels_last:
        student = student.to(memory_format=torch.channels_last)
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    opt = torch.optim.Adam(student.parameters(), lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                           weight_decay=tc.weight_decay)  # fmt: skip
    rnd = _Round(r, folder, teacher, ckpt.model_config.prediction, digest, student, ema, opt,
                 student_plan, teacher_plan)  # fmt: skip
    if r == 1 and config.distill.teacher_solver != "ddim":
        rnd.teacher_run = SamplerOptions(steps=teacher_plan, solver=config.distill.teacher_solver)
    folder.mkdir(parents=True, exist_ok=True)
    latest = read_latest(folder / "checkpoints") if (folder / "checkpoints").is_dir() else None
    if latest is not None:
        _restore(config, rnd, latest)
    return rnd


def _init_weights(init: str, teacher: Checkpoint) -> dict[str, Tensor]:
    """The EMA weights of checkpoint ``init``, after checking that its network is the
    teacher's (apart from what it predicts and its plan)."""
    ckpt = load_checkpoint(init)
    mine = replace(ckpt.model_config, prediction="eps", sampling_plan=None).to_dict()
    theirs = replace(teacher.model_config, prediction="eps", sampling_plan=None).to_dict()
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise CheckpointError(
            f"distill.init {init} has another network than the teacher ({differ[0]}: "
            f"{mine.get(differ[0])!r}, the teacher's {theirs.get(differ[0])!r})"
        )
    if not torch.equal(ckpt.schedule.betas, teacher.schedule.betas):
        raise CheckpointError(f"distill.init {init} was trained on another noise schedule")
    return ckpt.ema_state


def _restore(config: DistillConfig, rnd: _Round, latest: Any) -> None:
    """Load the round's latest checkpoint; refuse another teacher or another plan."""
    state = read_state(latest.state)
    if state["teacher_sha256"] != rnd.teacher_digest:
        raise ValueError(
            f"round {rnd.index} was started with another teacher (sha256 "
            f"{state['teacher_sha256'][:12]}..., now {rnd.teacher_digest[:12]}...); it cannot "
            f"be resumed with this one"
        )
    old, new = flatten(state["config"]), flatten(config.to_dict())
    keys = (set(old) | set(new)) - RESUMABLE
    changed = sorted(k for k in keys if old.get(k) != new.get(k))
    if changed:
        raise ValueError(
            f"the config differs from the one round {rnd.index} was started with in "
            f"{', '.join(changed)}"
        )
    ckpt = load_checkpoint(latest.weights)
    if ckpt.model_state is None or ckpt.step != state["step"]:
        raise CheckpointError(f"{latest.weights} does not match {latest.state}")
    rnd.student.load_state_dict(ckpt.model_state)
    rnd.ema.module.load_state_dict(ckpt.ema_state)
    rnd.ema.n_averaged.fill_(state["ema_updates"])
    rnd.opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])


def _train_round(
    config: DistillConfig,
    rnd: _Round,
    sched: NoiseSchedule,
    data: ImageSet,
    labels: Tensor | None,
    device: torch.device,
    progress: bool,
    on_step: Any,
) -> tuple[int, str | None]:
    """Train round ``rnd`` to ``training.total_steps``; (last step, stopping signal)."""
    tc = config.training
    ckpt_dir = rnd.folder / "checkpoints"
    latest = read_latest(ckpt_dir) if ckpt_dir.is_dir() else None
    step = latest.step if latest else 0
    halving = f"{len(rnd.teacher_plan)} -> {len(rnd.student_plan)} steps"
    say(f"round {rnd.index}: {halving}, from step {step}")
    order = DataOrder(len(data), derive_seed(tc.seed, ROUND, rnd.index))
    precision = choose(tc.precision, device)[0]
    stop, log = StopRequest(), TrainLog(rnd.folder / "log.jsonl", tc, enabled=True)
    bar = tqdm(total=tc.total_steps, initial=step, disable=not progress,
               desc=f"round {rnd.index}", dynamic_ncols=True)  # fmt: skip
    stopped_by = None
    with stop.installed(), bar:
        while step < tc.total_steps:
            step += 1
            began = time.perf_counter()
            batch = round_batch(config, rnd, step, data, labels, order)
            loss, norm = _step(config, rnd, sched, batch, step, device, precision)
            lr = learning_rate(step, tc.lr, tc.warmup_steps, tc.cooldown_steps, tc.total_steps)
            log.add(step, loss, lr, norm, time.perf_counter() - began)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            if step % tc.ckpt_every == 0 or step == tc.total_steps or stop.requested:
                _save(config, rnd, sched, step)
            if on_step is not None:
                on_step(rnd.index, step, loss)
            if stop.requested:
                stopped_by = stop.name
                say(f"{stopped_by}: stopped after round {rnd.index}, step {step}")
                break
    return step, stopped_by


def round_batch(
    config: DistillConfig,
    rnd: _Round,
    step: int,
    data: ImageSet,
    labels: Tensor | None,
    order: DataOrder,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Step ``step``'s images, student point indices ``k``, noise and labels (null with
    probability ``training.label_dropout``), all drawn from ``(seed, round, step)``."""
    tc = config.training
    g = torch.Generator().manual_seed(derive_seed(tc.seed, STEP, rnd.index, step))
    index = order.indices((step - 1) * tc.batch_size, tc.batch_size)
    x0 = to_model_range(data.batch(index))
    k = torch.randint(0, len(rnd.student_plan), (tc.batch_size,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    if config.data.random_flip:
        x0 = random_flip(x0, g)
    if labels is None:
        return x0, k, noise, None
    g_labels = torch.Generator().manual_seed(derive_seed(tc.seed, LABELS, rnd.index, step))
    dropped = torch.rand(tc.batch_size, generator=g_labels) < tc.label_dropout
    null = rnd.student.config.num_classes
    return x0, k, noise, torch.where(dropped, null, labels[index])


def _step(
    config: DistillConfig,
    rnd: _Round,
    sched: NoiseSchedule,
    batch: tuple[Tensor, Tensor, Tensor, Tensor | None],
    step: int,
    device: torch.device,
    precision: str,
) -> tuple[float, float]:
    """One optimiser step on Salimans & Ho's loss; (loss, gradient norm)."""
    tc = config.training
    x0, k, noise, y = (None if v is None else v.to(device) for v in batch)

    def student(z: Tensor, t: Tensor, *y: Tensor) -> Tensor:
        z = z.contiguous(memory_format=torch.channels_last) if tc.channels_last else z
        with autocast(precision, device):
            return rnd.student(z, t, *y).float()

    predictions = (rnd.teacher_prediction, rnd.student.config.prediction)
    ts = student_points(rnd.teacher_plan, rnd.student_plan, k)
    landing = None
    if rnd.teacher_run is not None:  # z_t -> where round 1's solver lands from it
        landing = functools.partial(solver_landing, rnd.teacher, sched, rnd.teacher_run,
                                    k=k, hops=config.distill.hops, y=y)  # fmt: skip
    loss = distillation_loss(student, rnd.teacher, sched, x0, noise, ts, predictions, y,
                             config.distill.loss_weighting, landing)  # fmt: skip
    rnd.opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(rnd.student.parameters(), tc.grad_clip or float("inf"))
    loss_value, norm_value = torch.stack([loss.detach(), norm.float()]).tolist()
    if not (torch.isfinite(torch.tensor([loss_value, norm_value])).all()):
        raise NonFiniteLossError(
            f"round {rnd.index}: loss {loss_value}, gradient norm {norm_value} at step {step}; "
            f"the step was not applied"
        )
    lr = learning_rate(step, tc.lr, tc.warmup_steps, tc.cooldown_steps, tc.total_steps)
    for group in rnd.opt.param_groups:
        group["lr"] = lr
    rnd.opt.step()
    rnd.ema.update_parameters(rnd.student)
    return loss_value, norm_value


def _describe(config: DistillConfig, rnd: _Round, sched: NoiseSchedule) -> dict[str, Any]:
    """The self-description of the round's checkpoints (the student's config and plan)."""
    student_config: UNetConfig = rnd.student.config
    shape = (student_config.in_channels,) + (student_config.image_size,) * 2
    record = {
        "round": rnd.index,
        "teacher_sha256": rnd.teacher_digest,
        "teacher_plan": list(rnd.teacher_plan),
        "student_plan": list(rnd.student_plan),
    }
    return {
        "model_config": student_config.to_dict(),
        "schedule": sched,
        "data_shape": shape,
        "extra_meta": {"distill": record, "distill_config": config.to_dict()},
    }


def _save(config: DistillConfig, rnd: _Round, sched: NoiseSchedule, step: int) -> None:
    """Write step ``step``'s weights and state in the round's folder, then the pointer."""
    ckpt_dir = rnd.folder / "checkpoints"
    weights, state = checkpoint_paths(ckpt_dir, step)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_weights(weights, rnd.student.state_dict(), rnd.ema.module.state_dict(), step=step,
                 **_describe(config, rnd, sched))  # fmt: skip
    write_state(state, {
        "step": step,
        "optimizer": rnd.opt.state_dict(),
        "ema_updates": int(rnd.ema.n_averaged.item()),
        "rng": rng_state(torch.device("cpu")),
        "config": config.to_dict(),
        "teacher_sha256": rnd.teacher_digest,
    })  # fmt: skip
    write_latest(ckpt_dir, step)
    prune(ckpt_dir, step, config.training.keep_last)
