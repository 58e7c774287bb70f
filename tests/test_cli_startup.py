"""``ddim --help`` and usage errors answer without importing torch, and the choices the CLI
reads from the library's sources are the library's own."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "matplotlib")

RUN_MAIN = f"""
import sys
from ddim.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sample", "--help"],
        ["eval", "table1", "--help"],
        ["sample", "--steps", "0"],
        ["convert", "--bogus"],
    ],
    ids=" ".join,
)
def test_help_and_usage_errors_import_no_heavy_module(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, *args], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "[]"


def test_import_ddim_imports_no_heavy_module() -> None:
    code = f"import sys, ddim; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_load_on_first_use() -> None:
    import ddim
    from ddim import oracle, sample

    assert (sample.__module__, oracle.__name__) == ("ddim.sampling", "ddim.models.oracle")
    assert all(hasattr(ddim, name) for name in ddim.__all__)
    assert ddim.__version__ == "0.1.0"
