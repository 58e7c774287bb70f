"""``ddim eval solvers``: error against model calls for every solver, on the exact Gaussian
oracle and (with ``--ref-data`` or ``--ref-stats``) as FD of a model's samples."""

from __future__ import annotations

from typing import Any

import click

from ddim.cli.eval_options import (
    Judging,
    NumberList,
    Run,
    judge_options,
    reference_options,
    reference_stats,
    run_options,
)  # fmt: skip
from ddim.cli.options import option
from ddim.cli.run_options import final_step_option
from ddim.names import DEFAULT_FINAL_STEP, SOLVERS, SPACINGS


class SolverList(click.ParamType):
    """Comma-separated solver names."""

    name = "solvers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``ddim,dpmpp-2m`` into a list of names of :data:`ddim.names.SOLVERS`, or
        fail with click's one-line usage error."""
        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        unknown = [v for v in names if v not in SOLVERS]
        if unknown or not names:
            self.fail(f"{value!r}: solvers are {', '.join(SOLVERS)}", param, ctx)
        return names


@click.command("solvers")
@run_options(n=1000)
@option("--solvers", type=SolverList(), default=",".join(SOLVERS), help="which solvers")
@option("--calls", type=NumberList(int, 1), default="5,10,20,50,100", help="oracle budgets")
@option(
    "--solver-spacing", type=click.Choice(SPACINGS), default="logsnr",
    help="the timestep layout of the solvers other than ddim (ddim uses --spacing)",
)  # fmt: skip
@final_step_option
@option("--dim", type=click.IntRange(min=1), default=3072, help="oracle dimension D")
@option("--alpha", type=click.FloatRange(min=0.0), default=1.0, help="lambda_k = k^-alpha")
@option("--fd-calls", type=NumberList(int, 1), default="10,20", help="FD budgets, solvers")
@option("--ddim-calls", type=NumberList(int, 1), default="10,20,50,100", help="FD budgets, ddim")
@reference_options
@judge_options
def solvers_command(
    run: Run,
    solvers: list[str],
    calls: list[int],
    solver_spacing: str,
    final_step: str | None,
    dim: int,
    alpha: float,
    fd_calls: list[int],
    ddim_calls: list[int],
    features: str,
    ref_data: str | None,
    ref_slice: slice,
    ref_stats: str | None,
    judging: Judging,
) -> None:
    """Error against model calls for every solver.

    (a) The exact Gaussian oracle N(0, diag(k^-alpha)), linear schedule, T = 1000: the exact
    W2^2 to the data and the error against the exact ODE map, with DDIM at 1000 steps as
    the line to beat. (b) With --ref-data or --ref-stats (which turn it on): FD of -n
    samples of --ckpt at --fd-calls (--ddim-calls for ddim). Writes solvers-oracle.* and
    solvers-fd.* (and, with --judges, solvers-judges.*: each run scored by those judges).
    """
    from ddim.eval import metrics, solver_curves
    from ddim.eval.exact_gaussian import gaussian_w2, output_variance, power_law_spectrum
    from ddim.sampling import SamplerOptions, model_calls
    from ddim.schedule import NoiseSchedule

    if ref_data is not None and ref_stats is not None:
        raise click.UsageError("give at most one of --ref-data and --ref-stats")

    def options_for(solver: str) -> SamplerOptions:
        if solver == "ddim":
            return run.sampler(50)
        return SamplerOptions(
            spacing=solver_spacing, precision=run.precision, solver=solver, final_step=final_step
        )

    schedule = NoiseSchedule.linear()
    lam = power_law_spectrum(dim, alpha)
    oracle_points = []
    for solver in solvers:
        oracle_points += solver_curves.curves(
            lambda o: solver_curves.oracle_point(lam, schedule, o),
            schedule, [solver], calls, options_for(solver),
        )  # fmt: skip
    reference = gaussian_w2(output_variance(lam, schedule, 1000), lam)
    meta = {
        "title": f"Exact W2² to the data, Gaussian oracle (D = {dim}, alpha = {alpha:g}); "
        f"solvers on {solver_spacing}, ddim on {run.spacing}",
        "dim": dim, "alpha": alpha, "solver_spacing": solver_spacing, "ddim_spacing": run.spacing,
        "final_step": final_step or DEFAULT_FINAL_STEP,
    }  # fmt: skip
    table = solver_curves.write_curves(
        oracle_points, run.out_dir, "solvers-oracle", meta, "W2²", calls, reference
    )
    click.echo(table + f"wrote {run.out_dir}/solvers-oracle.{{md,json,png}}")
    if ref_data is None and ref_stats is None:
        return
    model, sched, shape = run.prepare([])
    feature_fn = metrics.feature_extractor(features, run.device)
    ref = reference_stats(feature_fn, features, ref_data, ref_slice, ref_stats, shape, run)
    panel = judging.panel(ref_data, ref_slice, shape, run.device)

    def fd_of(o: SamplerOptions) -> tuple[float, None]:
        from ddim.eval.experiments import sample_stats

        calls = model_calls(sched, o.steps, o.spacing, o.solver, o.final_step)
        fn = feature_fn if panel is None else panel.tap(f"{o.solver}-{calls}calls", feature_fn)
        stats = sample_stats(
            model, sched, fn, shape=shape, n=run.n, batch_size=run.batch_size,
            seed=run.seed, options=o, device=run.device,
        )  # fmt: skip
        return stats.frechet_distance(ref), None

    fd_points, columns = [], set()
    for solver in solvers:
        budgets = ddim_calls if solver == "ddim" else fd_calls
        fd_points += solver_curves.curves(fd_of, sched, [solver], budgets, options_for(solver))
        columns.update(budgets)
    budgets = sorted(columns)
    meta = replace_title(meta, f"FD ({features}) of n = {run.n} samples of {run.ckpt}")
    meta |= {"ckpt": run.ckpt, "n": run.n, "seed": run.seed, "features": features}
    table = solver_curves.write_curves(fd_points, run.out_dir, "solvers-fd", meta, "FD", budgets)
    click.echo(table + f"wrote {run.out_dir}/solvers-fd.{{md,json,png}}")
    if panel is not None:
        click.echo(panel.write(run.out_dir, "solvers", judging.keep)
                   + f"wrote {run.out_dir}/solvers-judges.{{md,json}}")  # fmt: skip


def replace_title(meta: dict[str, Any], title: str) -> dict[str, Any]:
    """``meta`` with a new title and the oracle's own keys left out."""
    keep = {k: v for k, v in meta.items() if k not in ("dim", "alpha", "title")}
    return keep | {"title": title}
