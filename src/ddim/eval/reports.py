"""Grids shaped like the paper's Table 1 and their outputs: Markdown, JSON and a plot.

A grid has one row per sampler setting (each ``eta``, then sigma-hat) and one column per
number of steps ``S``; each cell is a Fréchet distance. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddim.formats.atomic import atomic_write_bytes, atomic_write_text
from ddim.names import SIGMA_HAT


@dataclass(frozen=True)
class Row:
    """One cell of a Table-1 grid: a sampler setting, its Fréchet distance and its cost."""

    steps: int
    eta: float | None
    variance: str
    fd: float
    seconds: float

    @property
    def label(self) -> str:
        """The row name of the paper's Table 1: ``η = 0.5`` or ``σ̂``."""
        return "σ̂" if self.variance == SIGMA_HAT else f"η = {self.eta:g}"


def settings(etas: Sequence[float], sigma_hat: bool) -> list[tuple[float | None, str]]:
    """``(eta, variance)`` for each row of Table 1: the etas, then sigma-hat if asked."""
    bad = [e for e in etas if not e >= 0]
    if bad:
        raise ValueError(f"etas must be >= 0, got {bad}")
    rows: list[tuple[float | None, str]] = [(float(e), "ddim") for e in etas]
    return rows + ([(None, SIGMA_HAT)] if sigma_hat else [])


def run_grid(
    fd_of: Callable[[int, float, str], float],
    steps_list: Sequence[int],
    etas: Sequence[float],
    sigma_hat: bool,
) -> list[Row]:
    """Call ``fd_of(steps, eta, variance)`` for every cell, timing each one."""
    rows = []
    for eta, variance in settings(etas, sigma_hat):
        for steps in steps_list:
            start = time.perf_counter()
            fd = fd_of(int(steps), eta or 0.0, variance)
            rows.append(Row(int(steps), eta, variance, fd, time.perf_counter() - start))
    return rows


def fd_markdown(rows: Sequence[Row], digits: int = 4) -> str:
    """Rows = sampler settings, columns = ``S``, like the paper's Table 1."""
    steps = sorted({r.steps for r in rows})
    labels = list(dict.fromkeys(r.label for r in rows))
    cell = {(r.label, r.steps): r.fd for r in rows}
    lines = [
        "| | " + " | ".join(f"S = {s}" for s in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for label in labels:
        values = [f"{cell[label, s]:.{digits}g}" if (label, s) in cell else "" for s in steps]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def fd_plot_png(rows: Sequence[Row], ylabel: str = "Fréchet distance", title: str = "") -> bytes:
    """FD against ``S`` (log-x, log-y when every FD is positive), one line per setting."""
    lines = {}
    for label in dict.fromkeys(r.label for r in rows):
        name = label.replace("σ̂", r"$\hat{\sigma}$").replace("η", r"$\eta$")
        lines[name] = [(r.steps, r.fd) for r in rows if r.label == label]
    return line_plot_png(lines, "S (sampling steps)", ylabel, title)


def line_plot_png(
    lines: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    hline: tuple[float, str] | None = None,
) -> bytes:
    """One marked line per entry of ``lines`` (``(x, y)`` points), log-x, log-y when every
    ``y`` is positive, and an optional dashed horizontal line ``(y, label)``."""
    fig = Figure(figsize=(5.5, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in lines.items():
        ordered = sorted(points)
        ax.plot([x for x, _ in ordered], [y for _, y in ordered], marker="o", label=name)
    if hline is not None:
        ax.axhline(hline[0], color="k", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xscale("log")
    if all(y > 0 for points in lines.values() for _, y in points):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_fd_grid(
    rows: Sequence[Row],
    out_dir: str | os.PathLike[str],
    name: str,
    meta: Mapping[str, Any],
    title: str = "",
) -> list[Path]:
    """``<name>.md``, ``<name>.json`` (rows and ``meta``) and ``<name>.png`` in ``out_dir``."""
    out = Path(out_dir)
    md, js, png = out / f"{name}.md", out / f"{name}.json", out / f"{name}.png"
    heading = f"# {title}\n\n" if title else ""
    atomic_write_text(md, heading + fd_markdown(rows))
    write_json(js, {"meta": dict(meta), "rows": [asdict(r) | {"label": r.label} for r in rows]})
    atomic_write_bytes(png, fd_plot_png(rows, title=title))
    return [md, js, png]


def mse_markdown(rows: Mapping[str, Mapping[int, float]]) -> str:
    """Table 2's layout: one column per ``S``, one row of per-dimension MSE per encoding and
    reading (``ddim``, ``ddim, clamped``, ``bdia``, ...); a cell a row lacks is blank."""
    steps = sorted({s for row in rows.values() for s in row})
    cell = lambda row, s: f"{row[s]:.4g}" if s in row else ""  # noqa: E731
    return (
        "| S | " + " | ".join(str(s) for s in steps) + " |\n"
        "|---|" + "---:|" * len(steps) + "\n"
        + "".join(f"| {label} | " + " | ".join(cell(row, s) for s in steps) + " |\n"
                  for label, row in rows.items())
    )  # fmt: skip


# What makes two runs' cells comparable: the model, the features and reference, n and the
# seeds (the same x_T in every cell), and the spacing; an oracle grid, its D and alpha.
# Table 2 fixes the images instead of the reference.
_SAME_TABLE1 = ("ckpt", "features", "n", "seed", "spacing", "ref", "dim", "alpha")
_SAME_TABLE2 = ("ckpt", "data", "n", "spacing")


def merge_results(
    results: Mapping[str, Mapping[str, Any]],
) -> tuple[str, list[Row] | dict[str, dict[int, float]], dict[str, Any]]:
    """Join the ``table1.json`` (or ``table2.json``) contents of separate runs into one table.

    ``results`` maps a name (the file) to its parsed JSON. Each run contributes its cells;
    the runs must agree on everything that makes cells comparable (for Table 1: checkpoint,
    features, reference, ``n``, seed and spacing) and no cell may come from two runs.
    Returns ``("table1", rows, meta)`` or ``("table2", rows, meta)`` (MSE by label and S).
    """
    if not results:
        raise ValueError("nothing to merge")
    kinds = {_kind(name, doc) for name, doc in results.items()}
    if len(kinds) > 1:
        raise ValueError("cannot merge Table 1 results with Table 2 results")
    kind = kinds.pop()
    meta = _common_meta(results, _SAME_TABLE1 if kind == "table1" else _SAME_TABLE2)
    meta["merged_from"] = list(results)
    merged: dict[tuple[str, int], Any] = {}
    source: dict[tuple[str, int], str] = {}
    for name, doc in results.items():
        for key, cell in _cells(kind, doc).items():
            if key in merged:
                raise ValueError(
                    f"the cell {key[0]}, S = {key[1]} is in both {source[key]} and {name}"
                )
            merged[key], source[key] = cell, name
    if kind == "table1":
        return kind, _in_table_order(list(merged.values())), meta
    rows: dict[str, dict[int, float]] = {}
    for (label, s), v in sorted(merged.items(), key=lambda kv: kv[0][1]):
        rows.setdefault(label, {})[s] = v
    return kind, rows, meta


def _cells(kind: str, doc: Mapping[str, Any]) -> dict[tuple[str, int], Any]:
    """A result file's cells keyed by ``(row label, S)``: Rows for Table 1, MSEs for Table 2."""
    if kind == "table1":
        rows = [Row(**{k: r[k] for k in Row.__dataclass_fields__}) for r in doc["rows"]]
        return {(r.label, r.steps): r for r in rows}
    return {(label, int(s)): float(v) for label, row in table2_rows(doc).items()
            for s, v in row.items()}  # fmt: skip


def table2_rows(doc: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A ``table2.json``'s rows by label; a file from before the rows (``mse`` holding one
    unclamped DDIM row by ``S``) reads as the row ``ddim``."""
    mse = doc["mse"]
    if all(isinstance(v, Mapping) for v in mse.values()):
        return {label: dict(row) for label, row in mse.items()}
    return {"ddim": dict(mse)}


def _kind(name: str, doc: Mapping[str, Any]) -> str:
    if "rows" in doc and "meta" in doc:
        return "table1"
    if "mse" in doc and "meta" in doc:
        return "table2"
    raise ValueError(f"{name} is not a table1.json or table2.json written by ddim eval")


def _common_meta(results: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    (first, doc), *rest = results.items()
    meta = dict(doc["meta"])
    for name, other in rest:
        for key in keys:
            if other["meta"].get(key) != meta.get(key):
                raise ValueError(
                    f"cannot merge: {key} is {meta.get(key)!r} in {first} "
                    f"but {other['meta'].get(key)!r} in {name}"
                )
    return meta


def _in_table_order(rows: Sequence[Row]) -> list[Row]:
    """The eta rows by eta, then sigma-hat; each row's cells by S."""
    return sorted(
        rows, key=lambda r: (r.variance == SIGMA_HAT, r.eta if r.eta is not None else 0, r.steps)
    )
