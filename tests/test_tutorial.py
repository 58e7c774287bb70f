"""The tutorial notebook (docs/tutorials/ddim-in-ten-minutes.ipynb) is committed executed, with
its figures as PNGs, for the docs site (mkdocs-jupyter does not run it), and it runs from top
to bottom in a fresh kernel of this interpreter, where the numbers it shows hold: BDIA's
encode-decode round trip returns the digits to float rounding where DDIM's at the same 10 steps
does not, DDIM's error falls with S (Table 2), η = 0 keeps a sample from 10 to 50 steps where
η = 1 does not, and inpainting keeps the known pixels at the advertised cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec")
jupyter_manager = pytest.importorskip("jupyter_client.manager")
jupyter_specs = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "ddim-in-ten-minutes.ipynb"

#: The cell the test appends: the notebook's own variables, as one line of JSON.
REPORT = """
import json, sys
print(json.dumps({
    "python": sys.executable,
    "ddim_error": ddim_error, "ddim_error_50": errors[50], "bdia_error": bdia_error,
    "change_eta0": change[0.0], "change_eta1": change[1.0], "kept_change": kept_change,
    "ddnm_calls": ddnm.model_calls, "replace_calls": replace.model_calls,
}))
"""


def run_notebook(nb: Any, workdir: Path) -> None:
    """Execute ``nb`` in place in ``workdir`` with an ipykernel of ``sys.executable``: a kernel
    spec written for this run, so neither ``PATH`` nor an installed ``python3`` spec (whose
    ``python`` may be another interpreter) picks the kernel's Python."""
    specs = workdir / "kernels"
    ipykernel_spec.write_kernel_spec(specs / "python3")
    manager = jupyter_manager.KernelManager(
        kernel_name="python3",
        kernel_spec_manager=jupyter_specs.KernelSpecManager(kernel_dirs=[str(specs)]),
    )
    client = nbclient.NotebookClient(
        nb, km=manager, timeout=300, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()


def test_the_notebook_is_committed_executed() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 6
    assert NOTEBOOK.stat().st_size < 400_000


@pytest.mark.slow
def test_the_notebook_runs_and_its_numbers_hold(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    run_notebook(nb, tmp_path)

    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    numbers = json.loads(printed)
    assert numbers["python"] == sys.executable
    assert numbers["bdia_error"] < 1e-6
    assert numbers["ddim_error"] > 1e-4
    assert numbers["ddim_error_50"] < numbers["ddim_error"]
    assert numbers["change_eta0"] < 0.1 * numbers["change_eta1"]
    assert numbers["kept_change"] == 0.0
    assert (numbers["ddnm_calls"], numbers["replace_calls"]) == (160, 20)
