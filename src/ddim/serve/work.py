"""What ``ddim serve`` runs for each request: the library calls the CLI makes, with the
CLI's defaults, so a request and the matching command give the same images.

Each function takes a parsed request and a ``tick`` called at every sampler step (for the
page's progress bar), and returns the JSON result: PNGs as base64 text, the model calls the
work cost and the seconds it took.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ddim import workflows
from ddim.edit import edit, sdedit_timesteps
from ddim.formats.images import png_bytes
from ddim.guidance import balanced_labels, num_classes
from ddim.inpaint import inpaint, inpaint_moves
from ddim.latent import CoupledLatent
from ddim.noise import seeded_latents
from ddim.sampling import Callback, SamplerOptions, Step, model_calls, own_plan
from ddim.schedule import NoiseSchedule
from ddim.serve.requests import (
    ClassRequest,
    EditRequest,
    InpaintRequest,
    InterpolateRequest,
    ReconstructRequest,
    SampleRequest,
)

#: Images per model call: the CLI's default.
BATCH_SIZE = 64


@dataclass(frozen=True)
class Served:
    """The one model a server holds (``name``: as ``--ckpt`` gave it), where it runs and at
    what precision."""

    name: str
    model: torch.nn.Module
    schedule: NoiseSchedule
    device: torch.device
    precision: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one image, ``(C, H, W)``, from the model's config."""
        config = self.model.config
        return (config.in_channels, config.image_size, config.image_size)

    def sampler(self, steps: int, guidance: float | None = None, **more: Any) -> SamplerOptions:
        """The run of ``steps`` steps; for a distilled student asked for its own number of
        steps, its own timesteps (as ``ddim sample`` runs it)."""
        plan = own_plan(self.model)
        run: int | tuple[int, ...] = plan if plan is not None and steps == len(plan) else steps
        return SamplerOptions(steps=run, precision=self.precision, guidance=guidance, **more)

    def labels(self, guide: ClassRequest, n: int) -> torch.Tensor | None:
        """``n`` copies of the class ``guide`` asks for, on the model's device, or
        ``None`` for an unconditional request."""
        return None if guide.label is None else torch.full((n,), guide.label, device=self.device)


Tick = Callable[[], None]
Job = Callable[[Tick], dict[str, Any]]


def _png(x: torch.Tensor, nrow: int | None = None) -> str:
    return base64.b64encode(png_bytes(x, nrow)).decode("ascii")


def _each(tick: Tick) -> Callback:
    return lambda _step: tick()


def sample_job(served: Served, req: SampleRequest) -> tuple[int, Job]:
    """``ddim sample -n N --steps S --eta E --solver X --seed K [--class C --guidance W]``:
    the grid PNG that command writes, byte for byte."""
    sampler = served.sampler(req.steps, req.guide.guidance, eta=req.eta, solver=req.solver)
    if req.guide.label == -1:  # --class all: n // K of each class, one row per class
        k = num_classes(served.model)
        labels = balanced_labels(k, req.n).to(served.device)
        n, nrow = len(labels), len(labels) // k
    else:
        n, nrow, labels = req.n, None, served.labels(req.guide, req.n)
    batches = -(-n // BATCH_SIZE)
    total = sampler.plan(served.schedule).steps * batches

    def run(tick: Tick) -> dict[str, Any]:
        x = workflows.generate(
            served.model, served.schedule, n, served.shape, seed=req.seed, batch_size=BATCH_SIZE,
            device=served.device, options=sampler, labels=labels, callback=_each(tick),
        )  # fmt: skip
        calls = model_calls(served.schedule, sampler.steps, sampler.spacing, sampler.solver,
                            sampler.final_step)  # fmt: skip
        return {"image": _png(x, nrow), "n": n, "model_calls": calls * batches}

    return total, run


def interpolate_job(served: Served, req: InterpolateRequest) -> tuple[int, Job]:
    """``ddim interpolate --seeds A B --frames F --steps S``: every frame as its own PNG,
    and the strip that command writes."""
    sampler = served.sampler(req.steps, req.guide.guidance)
    labels = served.labels(req.guide, req.frames)

    def run(tick: Tick) -> dict[str, Any]:
        corners, _ = seeded_latents(list(req.seeds), served.shape, device=served.device)
        latents = workflows.interpolation_latents(corners, req.frames)
        x = workflows.decode(
            served.model, served.schedule, latents, options=sampler, labels=labels,
            batch_size=BATCH_SIZE, callback=_each(tick),
        )  # fmt: skip
        frames = [_png(x[i : i + 1]) for i in range(req.frames)]
        calls = sampler.plan(served.schedule).steps
        return {"frames": frames, "strip": _png(x, req.frames), "model_calls": calls}

    return sampler.plan(served.schedule).steps, run


def edit_job(served: Served, req: EditRequest) -> tuple[int, Job]:
    """``ddim edit IN --strength P --steps S --seed K``: SDEdit of one image."""
    sampler = served.sampler(req.steps, req.guide.guidance)
    calls = len(sdedit_timesteps(served.schedule, sampler, req.strength))

    def run(tick: Tick) -> dict[str, Any]:
        x = edit(
            served.model, req.image.to(served.device), served.schedule, strength=req.strength,
            options=sampler, y=served.labels(req.guide, 1), seed=req.seed, callback=_each(tick),
        )  # fmt: skip
        return {"image": _png(x), "model_calls": calls}

    return calls, run


def inpaint_job(served: Served, req: InpaintRequest) -> tuple[int, Job]:
    """``ddim inpaint IN --mask M --method X --steps S --seed K``: known pixels kept."""
    plan = served.sampler(req.steps).plan(served.schedule)
    moves = inpaint_moves(plan, served.schedule.num_timesteps, req.method)
    total = sum(move == "down" for move, _ in moves)

    def run(tick: Tick) -> dict[str, Any]:
        result = inpaint(
            served.model, req.image.to(served.device), req.keep.to(served.device),
            served.schedule, steps=req.steps, method=req.method,
            y=served.labels(req.guide, 1), guidance=req.guide.guidance,
            precision=served.precision, seed=req.seed, callback=_each(tick),
        )  # fmt: skip
        return {
            "image": _png(result.images),
            "model_calls": result.model_calls,
            "grad_passes": result.grad_passes,
        }

    return total, run


def reconstruct_job(served: Served, req: ReconstructRequest) -> tuple[int, Job]:
    """``ddim reconstruct IN --steps S --solver X [--fixed-point K]``: encoding, then
    decoding, DDIM's or an exact solver's; the latent (an exact solver's first half) is
    shown as an image (clamped to [-1, 1] like any output). A fixed-point encoding also
    reports the largest residual of its steps' equations."""
    sampler = served.sampler(req.steps, req.guide.guidance, solver=req.solver,
                             fixed_point=req.fixed_point)  # fmt: skip
    steps = sampler.plan(served.schedule).steps
    # Encoding and decoding each cost a sampling run's calls, but BDIA decodes from its two
    # top points, so its first step (one call) is taken by the encoding instead; a
    # fixed-point encoding adds K calls a step. DDIM ticks each encoding and decoding step,
    # an exact encoding ticks nothing
    calls = 2 * model_calls(served.schedule, sampler.steps, sampler.spacing, sampler.solver)
    calls += req.fixed_point * steps - (req.solver == "bdia")
    ticks = {"ddim": 2 * steps, "edict": steps, "bdia": steps - 1}[req.solver]

    def run(tick: Tick) -> dict[str, Any]:
        residuals: list[float] = []

        def each(step: Step) -> None:
            if step.residual is not None:
                residuals.append(step.residual)
            tick()

        result = workflows.reconstruct(
            served.model, served.schedule, req.image.to(served.device), options=sampler,
            labels=served.labels(req.guide, 1), callback=each,
        )  # fmt: skip
        latent = result.latents
        first = latent.first if isinstance(latent, CoupledLatent) else latent
        return {
            "latent": _png(first / 3),
            "image": _png(result.images),
            "mse": float(result.mse[0]),
            "model_calls": calls,
            "residual": max(residuals) if residuals else None,
        }

    return ticks, run


def timed(job: Job) -> Job:
    """``job`` with the seconds it ran added to its result."""

    def run(tick: Tick) -> dict[str, Any]:
        start = time.perf_counter()
        result = job(tick)
        return {**result, "seconds": round(time.perf_counter() - start, 3)}

    return run
