"""Per-sample randomness: sample ``i`` draws ``x_T`` and all its step noise from its own seed.

So image ``i`` is bit-identical whatever the batch it is part of, the device split or the
number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: ``z(i, x)``: the standard normal noise of step ``i``, shaped and typed like ``x``.
StepNoise = Callable[[int, torch.Tensor], torch.Tensor]


def seeded_generators(
    seed: int, n: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per sample, sample ``i`` seeded with ``seed + i``."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


def per_sample_randn(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """A standard normal batch whose row ``i`` is drawn from ``generators[i]`` alone."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, dtype=dtype, device=device) for g in generators]
    )


def seeded_latents(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """``x_T`` of shape ``(len(seeds), *shape)``, row ``i`` the first draw of a generator
    seeded ``seeds[i]``, and those generators, which go on to give the step noise.

    ``seeded_latents(range(s, s + n), ...)`` is the ``x_T`` of ``generate(n, seed=s)``.
    """
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    return per_sample_randn(gens, shape, dtype=dtype, device=device), gens


def step_noise(
    x_T: torch.Tensor,
    n_steps: int,
    seed: int | None,
    generators: Sequence[torch.Generator] | None,
    noise: torch.Tensor | None,
    stochastic: bool,
) -> StepNoise:
    """The step noise of a sampler from its one noise source (a ValueError if several).

    ``noise`` holds the ``z`` of every step that draws one (shape ``(n_steps, *x_T.shape)``,
    :attr:`ddim.plan.StepPlan.stochastic_steps` rows); ``generators``
    has one generator per sample; ``seed`` makes them (``seed + i``) when ``stochastic``;
    with none of them, ``z`` comes from the global RNG.
    """
    given = [name for name, v in (("seed", seed), ("generators", generators), ("noise", noise))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give at most one noise source; got {' and '.join(given)}")
    if noise is not None:
        expected = (n_steps, *x_T.shape)
        if tuple(noise.shape) != expected:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; expected {expected}: one row per step "
                f"that draws noise (every step but a last one to alpha_bar = 1)"
            )
        return lambda i, x: noise[i].to(device=x.device, dtype=x.dtype)
    if generators is not None and len(generators) != x_T.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {x_T.shape[0]}")
    if seed is not None and stochastic:
        generators = seeded_generators(seed, x_T.shape[0], x_T.device)
    if generators is not None:
        gens = generators
        return lambda i, x: per_sample_randn(gens, x.shape[1:], dtype=x.dtype, device=x.device)
    return lambda i, x: torch.randn_like(x)
