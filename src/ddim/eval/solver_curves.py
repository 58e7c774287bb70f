"""Error against model calls for every solver: on the exact Gaussian oracle, and FD on a model.

The x-axis is what a user pays, model evaluations (:func:`ddim.model_calls`): for each
budget, a solver runs the most steps that fit in it.

On the oracle ``N(0, diag(lambda))`` every solver is linear in its inputs, so its output law
is exact (:func:`ddim.eval.exact_gaussian.output_law`: the gain ``g`` of ``x_T`` and the
variance ``v``). Two errors follow with no Monte Carlo error:

- ``w2``: the squared 2-Wasserstein distance to the data, eq. (3) of ``exact_gaussian``;
- ``ode_error``: ``max_k |g_k / m_k - 1|`` against the exact probability-flow map
  ``m_k = s_k(t_end) / s_k(t_start)``, ``s_k(t)^2 = a_t lambda_k + 1 - a_t`` (``t_end = -1``,
  ``a = 1``, unless the run ends at its smallest timestep).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddim.eval.exact_gaussian import gaussian_w2, output_law
from ddim.eval.reports import line_plot_png, write_json
from ddim.formats.atomic import atomic_write_bytes, atomic_write_text
from ddim.sampling import SamplerOptions, model_calls
from ddim.schedule import NoiseSchedule


@dataclass(frozen=True)
class Point:
    """One solver at one budget: the steps it ran, the calls they cost, and its errors."""

    solver: str
    calls: int
    steps: int
    value: float
    ode_error: float | None = None
    seconds: float = 0.0


def steps_within(sched: NoiseSchedule, options: SamplerOptions, calls: int) -> int | None:
    """The most steps ``S`` whose run costs at most ``calls`` model calls (``None`` if even
    the solver's fewest steps cost more)."""
    best = None
    for steps in range(1, min(calls + 2, sched.num_timesteps) + 1):
        try:
            cost = model_calls(sched, steps, options.spacing, options.solver, options.final_step)
        except ValueError:
            continue
        if cost <= calls:
            best = steps
        elif best is not None:
            break
    return best


def oracle_point(
    lam: torch.Tensor, sched: NoiseSchedule, options: SamplerOptions
) -> tuple[float, float | None]:
    """``(w2, ode_error)`` of one run on ``N(0, diag(lam))``, both exact (module docstring)."""
    gain, variance = output_law(lam, sched, options)
    w2 = gaussian_w2(variance, lam)
    if options.stochastic:
        return w2, None

    def s(t: int) -> torch.Tensor:
        a = sched.alpha_bar_at(t)
        return (a * lam + 1 - a).sqrt()

    ts = options.plan(sched).ts
    return w2, float((gain / (s(ts[-1]) / s(ts[0])) - 1).abs().max())


def curves(
    value_of: Callable[[SamplerOptions], tuple[float, float | None]],
    sched: NoiseSchedule,
    solvers: Sequence[str],
    budgets: Sequence[int],
    base: SamplerOptions,
) -> list[Point]:
    """``value_of`` for each solver at each budget of model calls (duplicates skipped)."""
    points = []
    for solver in solvers:
        done = set()
        for calls in budgets:
            options = replace(base, solver=solver)
            steps = steps_within(sched, options, calls)
            if steps is None or steps in done:
                continue
            done.add(steps)
            options = replace(options, steps=steps)
            start = time.perf_counter()
            value, ode = value_of(options)
            spent = model_calls(sched, steps, base.spacing, solver, base.final_step)
            points.append(Point(solver, spent, steps, value, ode, time.perf_counter() - start))
    return points


def markdown(
    points: Sequence[Point], value_name: str, budgets: Sequence[int], field: str = "value"
) -> str:
    """A table of ``field``: one row per solver, one column per budget (the value at the
    most calls that fit, with those calls in parentheses where fewer)."""
    solvers = list(dict.fromkeys(p.solver for p in points))
    lines = [
        f"| solver ({value_name}) | " + " | ".join(f"{b} calls" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for solver in solvers:
        mine = [p for p in points if p.solver == solver]
        cells = []
        for budget in budgets:
            fit = [p for p in mine if p.calls <= budget]
            if not fit:
                cells.append("—")
                continue
            p = max(fit, key=lambda q: q.calls)
            value = getattr(p, field)
            text = "—" if value is None else f"{value:.4g}"
            cells.append(text + ("" if p.calls == budget else f" ({p.calls})"))
        lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_png(points: Sequence[Point], ylabel: str, title: str, reference: float | None) -> bytes:
    """``value`` against model calls, log-log, one line per solver."""
    lines = {
        solver: [(p.calls, p.value) for p in points if p.solver == solver]
        for solver in dict.fromkeys(p.solver for p in points)
    }
    hline = None if reference is None else (reference, "DDIM, 1000 steps")
    return line_plot_png(lines, "model calls", ylabel, title, hline)


def write_curves(
    points: Sequence[Point],
    out_dir: str | os.PathLike[str],
    name: str,
    meta: Mapping[str, Any],
    value_name: str,
    budgets: Sequence[int],
    reference: float | None = None,
) -> str:
    """``<name>.md``, ``.json`` and ``.png`` in ``out_dir``; returns the markdown table."""
    out = Path(out_dir)
    title = str(meta.get("title", ""))
    table = markdown(points, value_name, budgets)
    if reference is not None:
        table += f"\nDDIM at 1000 steps: {reference:.4g}\n"
    if any(p.ode_error is not None for p in points):
        table += "\n" + markdown(points, "error vs exact ODE map", budgets, "ode_error")
    atomic_write_text(out / f"{name}.md", f"# {title}\n\n{table}")
    doc = {
        "meta": dict(meta),
        "reference_ddim_1000": reference,
        "points": [asdict(p) for p in points],
    }
    write_json(out / f"{name}.json", doc)
    atomic_write_bytes(out / f"{name}.png", plot_png(points, value_name, title, reference))
    return table
