"""The documentation stays honest: the README is short, its code blocks run as written, and
the site builds strictly (broken links, missing pages and unresolved API references fail),
with the API and command-line references generated from the code."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = "<!-- docs-test: skip"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def readme_blocks(lang: str) -> list[str]:
    """The README's fenced blocks in ``lang``, less those under a skip marker."""
    text = "\n" + README.read_text(encoding="utf-8")
    return [m["body"] for m in BLOCK.finditer(text)
            if m["lang"] == lang and not m["before"].startswith(SKIP)]  # fmt: skip


def test_the_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_readme_blocks_are_found() -> None:
    """The parser sees every block: the library's Python block, and the shell blocks of
    Quick start and the command line less the one marked skip (``ddim serve`` and the
    long runs)."""
    assert len(readme_blocks("python")) == 1
    assert any("ddim sample" in b for b in readme_blocks("bash"))
    assert not any("ddim serve" in b for b in readme_blocks("bash"))


@pytest.mark.slow
def test_the_readmes_python_runs(tmp_path: Path) -> None:
    (code,) = readme_blocks("python")
    checks = (
        "\nassert x0.shape == filled.shape == eights.shape == (8, 1, 28, 28)"
        "\nassert frames.shape == (8, 1, 28, 28)"
        "\nassert float((x0_again - x0).square().mean()) < 1e-8\n"
    )
    done = subprocess.run([sys.executable, "-c", code + checks], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_the_readmes_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line of the README's command-line block, in order, in an empty folder, through
    the ``ddim`` command's own entry point (the Quick start block is CI's own job)."""
    from click.testing import CliRunner

    from ddim.cli import main

    lines = [line for block in readme_blocks("bash") for line in block.splitlines()
             if line.startswith("ddim ")]  # fmt: skip
    assert len(lines) >= 5
    monkeypatch.chdir(tmp_path)
    for line in lines:
        done = CliRunner().invoke(main, shlex.split(line, comments=True)[1:])
        assert done.exit_code == 0, f"{line}: {done.output[-2000:]}"
    assert (tmp_path / "recon.png").exists() and (tmp_path / "strip.png").exists()


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=ENV["PATH"])
    assert mkdocs, "mkdocs is missing: install the docs extra (pip install -e .[docs])"
    done = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env={**ENV, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    site = tmp_path / "site"
    api = (site / "reference/api/sampling/index.html").read_text(encoding="utf-8")
    assert 'id="ddim.sampling.sample"' in api and 'id="ddim.sampling.invert"' in api
    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    for command in ("ddim-sample", "ddim-encode", "ddim-distill", "ddim-eval-table2"):
        assert f'id="{command}"' in cli
    assert (site / "tutorials/ddim-in-ten-minutes/index.html").exists()
