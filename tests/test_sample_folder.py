"""``ddim sample --out folder/``: shared over torchrun processes, resumed, packed into .npz."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ddim
from ddim.cli import main
from ddim.workflows.sample_folder import MANIFEST, rank_batches

SCHEDULE = ddim.NoiseSchedule.linear(100, 1e-3, 0.05)
N, BATCH = 7, 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, perturbed_unet, write_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("folder")
    return write_checkpoint(root / "tiny.safetensors", perturbed_unet().state_dict(), SCHEDULE)


def sample(ckpt: Path, out: Path, *extra: str) -> str:
    args = ["sample", "--ckpt", ckpt, "-n", N, "--steps", 4, "--eta", 0.5, "--batch-size", BATCH]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--out", f"{out}/", *extra]])
    assert result.exit_code == 0, result.output
    return result.output


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_take_the_batches_of_one_process(world: int) -> None:
    one = rank_batches(N, BATCH, 0, 1)
    assert one == [(0, 3), (3, 6), (6, 7)]
    shared = sorted(b for r in range(world) for b in rank_batches(N, BATCH, r, world))
    assert shared == one


def test_folder_equals_the_npz_of_a_direct_run(tmp_path, ckpt) -> None:
    out = sample(ckpt, tmp_path / "f", "--npz", tmp_path / "packed.npz")
    assert "wrote 7 PNGs" in out and len(pngs(tmp_path / "f")) == N
    # The same batches: a conv net's CPU rounding may depend on the batch's composition.
    direct = ["sample", "--ckpt", ckpt, "-n", N, "--steps", 4, "--eta", 0.5, "--batch-size", BATCH]
    result = CliRunner().invoke(main, [str(a) for a in [*direct, "--out", tmp_path / "d.npz"]])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "packed.npz") as a, np.load(tmp_path / "d.npz") as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])


def test_a_rerun_resumes_and_other_settings_are_refused(tmp_path, ckpt) -> None:
    folder = tmp_path / "f"
    sample(ckpt, folder)
    whole = pngs(folder)
    for name in ("000001.png", "000006.png"):
        (folder / name).unlink()
    out = sample(ckpt, folder)
    assert "wrote 2 PNGs" in out and "kept 5" in out
    assert pngs(folder) == whole
    result = CliRunner().invoke(
        main, ["sample", "--ckpt", str(ckpt), "-n", str(N), "--steps", "5", "--out", f"{folder}/"]
    )
    assert result.exit_code == 2
    assert "other settings" in result.output and "steps" in result.output
    assert (folder / MANIFEST).is_file()


@pytest.mark.slow
def test_two_gloo_processes_write_the_files_of_one(tmp_path, ckpt) -> None:
    sample(ckpt, tmp_path / "one")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "ddim.cli", "sample", "--ckpt", str(ckpt), "-n", str(N), "--steps", "4"]
    args += ["--eta", "0.5", "--batch-size", str(BATCH), "--out", f"{tmp_path / 'two'}/"]
    args += ["--precision", "fp32"]  # what auto is in-process (conftest), on any CPU
    result = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 7 PNGs" in result.stdout and "2 process(es)" in result.stdout
    assert pngs(tmp_path / "two") == pngs(tmp_path / "one")
