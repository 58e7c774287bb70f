"""A model prepared for one sampling job: the fastest measured way (:func:`fastest`) or as
its caller prepared it (:func:`as_given`), with what the job teaches the next choice.

The caller runs the job with :attr:`Fastest.model` (:func:`ddim.workflows.generate`, a
sample folder) and hands its seconds to :meth:`Fastest.learn`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddim import precision
from ddim.checked_model import Model
from ddim.guidance import num_classes
from ddim.sampler_options import DEFAULTS
from ddim.sampling import SamplerOptions, model_calls
from ddim.schedule import NoiseSchedule
from ddim.speed import choice, record
from ddim.speed.prepared import Setting, compile_cache_dir, prepare


@dataclass
class Fastest:
    """A model prepared for a job by :func:`fastest` (``picked``) or by its caller
    (:func:`as_given`): its ``setting``, ``why``, and what to measure; :meth:`learn` stores
    the finished job's figures for the next choice."""

    model: Model
    setting: Setting
    why: str
    key: str | None = None
    measured: choice.Measured | None = None
    calls: int = 0
    picked: bool = True

    def learn(self, seconds: float) -> None:
        """Record that the job's ``calls`` model calls took ``seconds`` in all."""
        if self.key is None or self.measured is None:
            return
        learned = choice.learn(
            self.measured, self.setting, getattr(self.model, "seconds", None), seconds, self.calls
        )
        if learned != self.measured:
            record.save(self.key, learned)


def _job(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    batch_size: int,
    device: torch.device | str,
    options: SamplerOptions,
) -> tuple[choice.Job, str, str, choice.Measured]:
    """The job of sampling ``n`` images with ``options``, the precision it runs in, its
    record key, and its record."""
    rows = min(n, batch_size)
    two_halves = num_classes(model) and options.guidance not in (None, 0.0, 1.0)
    o = options
    per_batch = model_calls(sched, o.steps, o.spacing, o.solver, o.final_step)
    job = choice.Job(rows=2 * rows if two_halves else rows, batch=rows,
                     calls=per_batch * -(-n // batch_size))  # fmt: skip
    chosen = precision.choose(options.precision, device)[0]
    key = choice.key(model, torch.device(device), chosen, job)
    measured = record.load(key)
    if measured.compile_first is not None and not compile_cache_dir().is_dir():
        measured = dataclasses.replace(measured, compile_first=None, compile_again=None)
    return job, chosen, key, measured


def fastest(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    shape: Sequence[int],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
) -> Fastest:
    """``model`` prepared the fastest measured way (:mod:`ddim.speed.choice`) to sample
    ``n`` images of ``shape`` in batches of ``batch_size`` with ``options`` (the same images
    to rounding). A model that is not a plain module with a ``config`` (already prepared,
    or a function) runs as given."""
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        return Fastest(model, Setting(), "the model is not a plain U-Net module; run as given")
    job, chosen, key, measured = _job(model, sched, n, batch_size, device, options)
    guided = job.rows > job.batch  # whether to split guidance's 2B rows pays at any size
    if (job.calls >= choice.MIN_CALLS or guided) and measured.eager is None:
        fresh = choice.measure(model, job, torch.device(device), chosen, tuple(shape))
        found = {k: v for k, v in fresh.to_dict().items() if v is not None}
        measured = dataclasses.replace(measured, **found)
        record.save(key, measured)
    setting, why = choice.choose(job, measured)
    return Fastest(prepare(model, setting), setting, why, key, measured, job.calls)


def as_given(
    model: Model,
    setting: Setting,
    sched: NoiseSchedule,
    n: int,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
) -> Fastest:
    """``model``, already prepared in ``setting`` by the caller, wrapped so that the job's
    figures go into the same record :func:`fastest` reads (a ``--compile`` run teaches
    ``ddim sample`` without speed flags what compiling costs and saves here)."""
    job, _, key, measured = _job(model, sched, n, batch_size, device, options)
    return Fastest(model, setting, "asked for", key, measured, job.calls, picked=False)
