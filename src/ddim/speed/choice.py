"""The fastest way to run a model for a job on this machine, chosen from measurements
(:func:`ddim.speed.fastest`, ``ddim sample`` without speed flags).

A :class:`~ddim.speed.prepared.Setting` trades one-off costs against per-call savings:

- eager, in the layout that measured faster here (channels-last wins on some CPUs and GPUs
  and loses badly on others: 2.3x slower in bf16 on an AVX512-BF16 EPYC);
- classifier-free guidance's ``2B`` rows in one forward pass, or in two of ``B`` rows,
  whichever measured faster (large activations can cost more per row);
- ``torch.compile`` (channels-last, pieces of ``B`` rows), chosen only when the job's calls
  save more than compiling costs: ``calls * (t_eager - t_compiled) > t_compile``, with
  ``t_compile`` a later process's start from the warm kernel cache once one compilation
  of this job's shape is on record. A first, cold compilation is also allowed to cost up to
  :data:`EXPLORE` of the eager job's time more than it saves: what it costs and saves here
  is then measured, for every later job.

Eager times are measured on the spot (a few forward passes) the first time a model, job
shape and precision meet on a machine; compiled times and compilation costs are learned from
the compiled runs themselves. Until then :data:`PRIOR_COMPILE_SECONDS` and
:data:`PRIOR_COMPILED_RATIO` stand in (both from ``benchmarks/sampling_vs_diffusers.py``).
All of it is stored by the caller (:mod:`ddim.speed.record`) under one :func:`key`.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ddim import precision as precisions
from ddim.checked_model import Model
from ddim.speed.prepared import Setting, for_inference

#: Seconds of a first torch.compile of the bundled U-Net on 2 EPYC cores: 25-36 s measured.
PRIOR_COMPILE_SECONDS = 30.0
#: Seconds of a later process's start from inductor's warm cache: 3.0 s measured there.
PRIOR_WARM_SECONDS = 5.0
#: A compiled call's time over an eager one's, each in its own process (compiled kernels slow
#: the eager calls of a process that ran them): 0.92-0.96 measured in bf16 on 2 EPYC cores.
PRIOR_COMPILED_RATIO = 0.92
#: The share of an eager job's time a first compilation may lose, to learn what it gains.
EXPLORE = 0.1
#: Fewer model calls than this never repay a compilation here, and are not worth measuring.
MIN_CALLS = 200
REPEATS = 3


@dataclass(frozen=True)
class Job:
    """The work to be done: ``calls`` model calls in all, each of ``rows`` rows (``2B`` under
    classifier-free guidance, else ``B = batch``)."""

    rows: int
    batch: int
    calls: int


@dataclass
class Measured:
    """Seconds per model call of ``Job.rows`` rows, as measured on this machine (``None``:
    not yet): eager in each layout, eager in pieces of ``batch`` rows, compiled, and the
    compilation's cost in the first process and in a later one (warm cache)."""

    eager: float | None = None
    eager_channels_last: float | None = None
    pieces: float | None = None
    compiled: float | None = None
    compile_first: float | None = None
    compile_again: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """The measurements as a dict for JSON (``None``: not measured)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Measured:
        """Read back a dict of :meth:`to_dict`; unknown keys and ``None`` values are
        ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names and v is not None})


def key(model: nn.Module, device: torch.device, precision: str, job: Job) -> str:
    """What a measurement depends on: CPU or GPU, torch, threads, the model's architecture,
    the precision and the shape of a call."""
    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_name()} {torch.backends.cpu.get_cpu_capability()}"
    config = getattr(model, "config", None)
    arch = json.dumps(config.to_dict(), sort_keys=True) if config is not None else "?"
    threads = torch.get_num_threads()
    return (
        f"{hardware}|{device.type}|torch {torch.__version__}|threads {threads}|{precision}|"
        f"{job.rows}/{job.batch} rows|{arch}"
    )


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choose(job: Job, measured: Measured) -> tuple[Setting, str]:
    """The setting that finishes ``job`` soonest by ``measured`` (priors where a figure is
    missing), and why, in one line."""
    whole = [t for t in (measured.eager, measured.eager_channels_last) if t is not None]
    eager, best = Setting(), min(whole, default=float("inf"))
    if measured.eager_channels_last is not None and measured.eager != best:
        eager = Setting(channels_last=True)  # strictly faster than the default layout
    if measured.pieces is not None and measured.pieces < best:
        eager, best = Setting(rows=job.batch), measured.pieces
    if job.calls < MIN_CALLS or not whole:
        return eager, f"{job.calls} model calls are too few to repay compiling"
    compiled = measured.compiled or PRIOR_COMPILED_RATIO * best
    first = measured.compile_first is None
    cost = PRIOR_COMPILE_SECONDS if first else measured.compile_again or PRIOR_WARM_SECONDS
    slack = EXPLORE * job.calls * best if first else 0.0
    saved = job.calls * (best - compiled)
    source = "measured here" if measured.compiled and not first else "partly prior"
    less = f" - {slack:.1f} s (a first one: 10 % of eager)" if first else ""
    sums = (f"{job.calls} calls x ({best:.3f} - {compiled:.3f}) s = {saved:.1f} s saved "
            f"{'>' if saved > cost - slack else '<='} {cost:.1f} s to compile{less} "
            f"({source})")  # fmt: skip
    if saved > cost - slack:
        return Setting(channels_last=True, compile=True, rows=job.batch), sums
    return eager, sums


def measure(
    model: nn.Module, job: Job, device: torch.device, precision: str, shape: tuple[int, ...]
) -> Measured:
    """Eager seconds per call of ``job.rows`` rows of ``shape`` in each layout (and, for
    ``2B``-row calls, in pieces of ``B``): the median of :data:`REPEATS` after a warm-up,
    the settings taking turns."""
    x = torch.randn(job.rows, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((job.rows,), 500, device=device)
    runs: dict[str, Model] = {
        "eager": model,
        "eager_channels_last": for_inference(model, channels_last=True),
    }
    if job.rows > job.batch:
        runs["pieces"] = for_inference(model, rows=job.batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for attempt in range(REPEATS + 1):
        for name, run in runs.items():
            seconds = _timed(lambda run=run: run(x, t), device, precision)
            if attempt:
                times[name].append(seconds)
    return Measured(**{name: statistics.median(ts) for name, ts in times.items()})


def _timed(call: Callable[[], torch.Tensor], device: torch.device, precision: str) -> float:
    start = time.perf_counter()
    with torch.no_grad(), precisions.autocast(precision, device):
        call()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def learn(
    measured: Measured, setting: Setting, compile_seconds: float | None, seconds: float, calls: int
) -> Measured:
    """``measured`` updated with a finished job's figures: ``seconds`` for ``calls`` model
    calls in ``setting``, of which ``compile_seconds`` went to compiling. The job's time per
    call replaces the quick measurement of its setting, so settings are compared on whole
    jobs once each has run one (a job of fewer than :data:`MIN_CALLS` calls teaches
    nothing: start-up costs dominate it)."""
    if calls < MIN_CALLS:
        return measured
    if not setting.compile:
        field = (
            "pieces"
            if setting.rows
            else "eager_channels_last"
            if setting.channels_last
            else "eager"
        )
        return dataclasses.replace(measured, **{field: seconds / calls})
    if compile_seconds is None:
        return measured
    per_call = max(seconds - compile_seconds, 0.0) / (calls - 1)
    again = measured.compile_first is not None
    return dataclasses.replace(
        measured,
        compiled=per_call,
        compile_first=measured.compile_first if again else compile_seconds,
        compile_again=compile_seconds if again else measured.compile_again,
    )
