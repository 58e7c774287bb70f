"""The paper's experiments for any eps-model or oracle: Table 1, Table 2, Figures 5 and 6.

- :func:`table1` — sample quality (Fréchet distance to reference statistics) for every
  number of steps ``S`` and every row ``eta in etas`` (+ sigma-hat), Section 5.1. Sampling
  is sharded over torchrun processes (:mod:`ddim.distributed`); sample ``i`` comes from seed
  ``seed + i``, so every cell sees the same ``x_T`` and the result does not depend on the
  number of processes.
- :func:`table2` — per-dimension MSE of DDIM encode -> decode on ``[0, 1]`` pixels, Sec. 5.4.
- :func:`consistency_figure` — the same ``x_T`` decoded at several ``S`` (Fig. 5), with the
  fraction of samples whose label at ``S`` matches the label at the reference ``S``.
- :func:`interpolation_figure` — slerp between four ``x_T`` decoded with DDIM (Fig. 6).

Each ``write_*`` helper writes Markdown, JSON and PNG files atomically; only rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ddim.distributed import shard, world
from ddim.eval.metrics import FeatureFn, FeatureStats, Tap, consistency, merge_across_ranks
from ddim.eval.progress import BatchStore
from ddim.eval.reports import Row, mse_markdown, run_grid, write_fd_grid, write_json
from ddim.formats.atomic import atomic_write_text
from ddim.formats.images import save_png
from ddim.noise import seeded_latents
from ddim.sampling import Model
from ddim.schedule import NoiseSchedule
from ddim.workflows import (
    DEFAULTS,
    SamplerOptions,
    decode,
    generate,
    interpolation_latents,
    per_dim_mse,
    reconstruct,
)

LabelFn = Callable[[torch.Tensor], torch.Tensor]


def sample_stats(
    model: Model,
    sched: NoiseSchedule,
    feature_fn: FeatureFn,
    *,
    shape: Sequence[int],
    n: int,
    batch_size: int,
    seed: int,
    options: SamplerOptions,
    device: torch.device | str = "cpu",
    store: BatchStore | None = None,
) -> FeatureStats:
    """Feature statistics of ``n`` samples, this rank's share sampled here, then merged.

    Sample ``i`` is drawn with seed ``seed + i`` (:func:`ddim.workflows.generate`). With a
    ``store``, batches finished by an earlier run are loaded from it and new ones kept in it.
    """
    rank, size = world()
    mine = shard(n, rank, size)

    def batch(start: int) -> FeatureStats:
        count = min(batch_size, mine.stop - start)

        def compute() -> FeatureStats:
            x0 = generate(
                model, sched, count, shape, seed=seed + start, batch_size=batch_size,
                device=device, options=options,
            )  # fmt: skip
            return FeatureStats.from_features(feature_fn(x0))

        return compute() if store is None else store.stats(start, count, compute)

    parts = (batch(start) for start in range(mine.start, mine.stop, batch_size))
    return merge_across_ranks(FeatureStats.merged(parts))


def table1(
    model: Model,
    sched: NoiseSchedule,
    steps_list: Sequence[int],
    etas: Sequence[float],
    sigma_hat: bool,
    n: int,
    batch_size: int,
    feature_fn: FeatureFn,
    ref_stats: FeatureStats,
    seed: int = 0,
    *,
    shape: Sequence[int],
    options: SamplerOptions = DEFAULTS,
    device: torch.device | str = "cpu",
    store: BatchStore | None = None,
    tap: Tap | None = None,
) -> list[Row]:
    """Table 1: FD between ``n`` samples and ``ref_stats`` for each ``(setting, S)``.

    Rows are ``eta in etas`` with eq. 16's sigma, then (``sigma_hat``) the official
    ``ddpm_noisy`` step, which clips x0_pred. ``shape`` is one sample's shape. With a
    ``store``, each cell keeps its finished batches in a subfolder of it (``S1000-eta0``,
    ``S1000-sigma-hat``), and a rerun resumes from them. ``tap(cell, feature_fn)`` (e.g.
    :meth:`ddim.eval.panel.Panel.tap`) wraps the feature function of each cell, named so.
    """

    def fd_of(steps: int, eta: float, variance: str) -> float:
        cell = replace(options, steps=steps, eta=eta, variance=variance)
        name = f"S{steps}-" + ("sigma-hat" if variance == "ddpm-large" else f"eta{eta:g}")
        kept = None if store is None else store.cell(name, cell)
        fn = feature_fn if tap is None else tap(name, feature_fn)
        stats = sample_stats(
            model, sched, fn, shape=shape, n=n, batch_size=batch_size, seed=seed,
            options=cell, device=device, store=kept,
        )  # fmt: skip
        return stats.frechet_distance(ref_stats)

    return run_grid(fd_of, steps_list, etas, sigma_hat)


def write_table1(
    rows: Sequence[Row], out_dir: str | os.PathLike[str], meta: Mapping[str, Any]
) -> list[Path]:
    """``table1.md``, ``table1.json`` and ``table1.png`` (on rank 0 only)."""
    if world()[0] != 0:
        return []
    return write_fd_grid(rows, out_dir, "table1", meta, title=str(meta.get("title", "")))


def table2(
    model: Model,
    sched: NoiseSchedule,
    images: torch.Tensor,
    steps_list: Sequence[int],
    *,
    options: SamplerOptions = DEFAULTS,
    solvers: Sequence[str] = ("ddim",),
    edict_p: float | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, dict[int, float]]:
    """Table 2: mean per-dimension MSE of encode -> decode, pixels scaled to ``[0, 1]``, for
    each encoding of ``solvers`` (DDIM's, or an exact one: ``edict``, ``bdia``), read on the
    decoder's output as it is (the paper's reading, row ``<solver>``) and clamped to
    ``[-1, 1]`` as a saved image is (row ``<solver>, clamped``). ``edict_p`` is EDICT's
    mixing weight (``None``: its default at each S)."""
    x0 = images.to(device)
    rows: dict[str, dict[int, float]] = {}
    for solver in solvers:
        for s in steps_list:
            coupling = {"edict_p": edict_p} if solver == "edict" else {}
            at_s = replace(options, steps=s, solver=solver, **coupling)
            rec = reconstruct(model, sched, x0, options=at_s, batch_size=batch_size)
            clamped = per_dim_mse(x0, rec.images.clamp(-1, 1))
            rows.setdefault(solver, {})[int(s)] = rec.mse.mean().item()
            rows.setdefault(f"{solver}, clamped", {})[int(s)] = clamped.mean().item()
    return rows


def write_table2(
    rows: Mapping[str, Mapping[int, float]],
    out_dir: str | os.PathLike[str],
    meta: Mapping[str, Any],
) -> list[Path]:
    """``table2.md`` and ``table2.json`` (``mse``: each row's MSE by ``S``)."""
    out = Path(out_dir)
    md, js = out / "table2.md", out / "table2.json"
    atomic_write_text(md, mse_markdown(rows))
    mse = {label: {str(s): v for s, v in row.items()} for label, row in rows.items()}
    write_json(js, {"meta": dict(meta), "mse": mse})
    return [md, js]


def consistency_figure(
    model: Model,
    sched: NoiseSchedule,
    steps_list: Sequence[int],
    label_fn: LabelFn,
    out_dir: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    n: int = 100,
    show: int = 8,
    ref_steps: int = 1000,
    seed: int = 0,
    options: SamplerOptions = DEFAULTS,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[int, float]:
    """Fig. 5: decode the same ``n`` latents at each ``S``; label agreement with ``ref_steps``.

    Writes ``consistency.png`` (one row per ``S``, ascending, then the reference; the first
    ``show`` samples) and ``consistency.json``. Returns ``{S: fraction of the n samples whose
    label_fn label equals the label at ref_steps}``.
    """
    latents, _ = seeded_latents(range(seed, seed + n), shape, device=device)
    options = replace(options, steps=ref_steps)
    kwargs = {"batch_size": batch_size}
    ref = decode(model, sched, latents, options=options, **kwargs)
    ref_labels = label_fn(ref)
    agreement, strips = {}, []
    for s in sorted(steps_list):
        at_s = replace(options, steps=s)
        x = ref if s == ref_steps else decode(model, sched, latents, options=at_s, **kwargs)
        agreement[int(s)] = consistency(label_fn(x), ref_labels)
        strips.append(x[:show])
    if ref_steps not in steps_list:
        strips.append(ref[:show])
    out = Path(out_dir)
    save_png(out / "consistency.png", torch.cat(strips).cpu(), nrow=min(show, n))
    write_json(
        out / "consistency.json",
        {"n": n, "seed": seed, "ref_steps": ref_steps, "spacing": options.spacing,
         "agreement": {str(s): v for s, v in agreement.items()}},
    )  # fmt: skip
    return agreement


def interpolation_figure(
    model: Model,
    sched: NoiseSchedule,
    out_path: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    frames: int = 8,
    seed: int = 0,
    options: SamplerOptions = DEFAULTS,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Fig. 6: a ``frames x frames`` grid slerped between the latents of seeds ``seed..seed+3``
    (:func:`ddim.slerp_grid`), decoded with ``options`` (DDIM, ``options.steps`` steps);
    written as one PNG. Returns the images."""
    corners, _ = seeded_latents(range(seed, seed + 4), shape, device=device)
    latents = interpolation_latents(corners, frames)
    images = decode(model, sched, latents, options=options, batch_size=batch_size)
    save_png(out_path, images.cpu(), nrow=frames)
    return images
