"""Editing a given image by sampling from a different start: SDEdit and class translation.

- **SDEdit** (Meng et al. 2022): noise the image ``x_0`` with the forward process to
  ``t_0 = strength * T`` (eq. 4 of the DDIM paper, ``x_t0 = sqrt(a_t0) x_0 + sqrt(1 - a_t0) z``),
  then sample down from ``t_0`` with any solver, η and guidance: the step plan keeps the
  timesteps of ``steps``/``spacing`` below ``t_0`` and starts at ``t_0``, so a run costs about
  ``strength x steps`` model calls. ``strength = 1`` ignores the image and is plain sampling
  from ``z``.
- **Class translation** (DDIB, Su et al. 2023): encode under the source class with the
  deterministic DDIM inversion (eq. 13), decode under the target class.

Noise is per sample: image ``i`` draws ``z`` (and any step noise after it) from a generator
seeded ``seed + i``, as :func:`ddim.workflows.generate` does, so ``edit(strength=1, seed=s)``
gives the images of ``generate(seed=s)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ddim.guidance import Classifier
from ddim.latent import CoupledLatent
from ddim.noise import per_sample_randn, seeded_generators
from ddim.sampling import Callback, Model, SamplerOptions, run_of
from ddim.schedule import NoiseSchedule


def sdedit_timesteps(sched: NoiseSchedule, options: SamplerOptions, strength: float) -> list[int]:
    """The timesteps of an SDEdit run: ``t_0 = round(strength * T) - 1`` and those of
    ``options.steps``/``options.spacing`` below it, largest first."""
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ValueError(f"strength must lie in (0, 1], got {strength!r}")
    T = sched.num_timesteps
    t0 = min(T - 1, max(0, round(strength * T) - 1))
    below = {int(t) for t in sched.timesteps(options.steps, options.spacing).tolist() if t < t0}
    return sorted(below | {t0}, reverse=True)


@torch.no_grad()
def edit(
    model: Model,
    x0: torch.Tensor,
    sched: NoiseSchedule,
    *,
    strength: float,
    options: SamplerOptions | None = None,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    seed: int = 0,
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
    **fields: Any,
) -> torch.Tensor:
    """SDEdit of the images ``x0`` ``(B, ...)`` in ``[-1, 1]`` at ``strength`` in (0, 1].

    ``options`` (or its fields as keywords: ``steps``, ``spacing``, ``eta``, ``solver``,
    ``guidance``, ...) say how to sample down from ``t_0``; ``y`` and ``classifier`` guide
    toward a class; ``seed`` or ``generators`` give the noise (module docstring).
    """
    options = run_of(options, fields)
    if generators is None:
        generators = seeded_generators(seed, x0.shape[0], x0.device)
    z = per_sample_randn(generators, x0.shape[1:], dtype=x0.dtype, device=x0.device)
    if strength == 1:
        return options.sample(model, z, sched, y=y, classifier=classifier, generators=generators,
                              callback=callback)  # fmt: skip
    timesteps = sdedit_timesteps(sched, options, strength)
    x_t0 = sched.q_sample(x0, timesteps[0], z)
    return replace(options, steps=timesteps).sample(
        model, x_t0, sched, y=y, classifier=classifier, generators=generators, callback=callback
    )


@torch.no_grad()
def translate(
    model: Model,
    x0: torch.Tensor | CoupledLatent,
    sched: NoiseSchedule,
    *,
    source: int | torch.Tensor,
    target: int | torch.Tensor,
    options: SamplerOptions | None = None,
    return_state: bool = False,
    **fields: Any,
) -> torch.Tensor | CoupledLatent:
    """DDIB: encode ``x0`` under class ``source`` and decode under class ``target`` (each an
    int or a LongTensor ``(B,)``) with a class-conditional ``model``; the encoding and the
    decoding are DDIM's at η = 0, or an exact solver's (``edict``, ``bdia``), under
    ``options.guidance`` if set.

    With an exact solver and ``return_state``, the result is the decoder's whole end state
    (:class:`~ddim.latent.CoupledLatent`, its ``first`` the image), and ``x0`` may be such a
    state: translating it back to ``source`` then returns the original image to rounding,
    where an image alone (half the state) would start the other half afresh."""
    options = run_of(options, fields)
    options.check_inverts_encoding("translation")
    b = x0.shape[0]
    latents = options.invert(model, x0, sched, y=_labels(source, b))
    return options.sample(model, latents, sched, y=_labels(target, b), return_state=return_state)


def _labels(label: int | torch.Tensor, batch: int) -> torch.Tensor:
    if isinstance(label, torch.Tensor):
        return label
    return torch.full((batch,), int(label), dtype=torch.long)
