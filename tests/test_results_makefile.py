"""``docs/results/Makefile``: every piece of docs/results/mnist-model.md to
docs/results/previous-model.md and of docs/results/solvers-mnist.md, the sample checks and
the README's pictures, end to end on a tiny model; a second run finds nothing left to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import ddim
from ddim.formats.images import save_npz
from ddim.models.unet import UNet, UNetConfig

MAKEFILE = Path(__file__).resolve().parents[1] / "docs" / "results" / "Makefile"
TINY = UNetConfig(
    in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
    attn_resolutions=(), dropout=0.0, image_size=28,
)  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
]


def tiny_model_and_data(tmp_path: Path, write_checkpoint, images: int) -> tuple[Path, Path]:
    """A tiny random 28 x 28 U-Net (T = 20) and ``images`` random images."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    write_checkpoint(ckpt, UNet(TINY).state_dict(), ddim.NoiseSchedule.linear(20), config=TINY)
    data = tmp_path / "digits.npz"
    noise = torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    save_npz(data, noise * 2 - 1)
    return ckpt, data


def test_the_results_makefile_makes_every_piece_once(tmp_path, write_checkpoint):
    ckpt, data = tiny_model_and_data(tmp_path, write_checkpoint, 12)
    out, solvers, pictures = tmp_path / "mnist", tmp_path / "solvers", tmp_path / "docs"
    settings = {
        "DDIM": f"{sys.executable} -m ddim.cli", "PYTHON": sys.executable,
        "CKPT": ckpt, "DATA": data, "BATCH": 3, "OUT": out, "SOLVERS_OUT": solvers,
        "PICTURES": pictures, "WORK": tmp_path / "work", "TRAIN": "0:6", "HELD": "6:12",
        "N": 3, "LONG_SLICE": "6:8", "LONG_N": 2, "CONS_N": 3, "SOLVER_N": 3,
        "RECON_SLICE": "6:10", "T1_STEPS": "2,5", "T1_LONG": 20, "T2_STEPS": "2,5",
        "T2_MID": 10, "T2_LONG": 20, "CONS_STEPS": "2,5", "CONS_REF": 20, "CHECK_STEPS": 5,
        "FEW_STEPS": 2, "SOLVER_CALLS": "4,8", "DDIM_CALLS": "5,10", "SOLVER_FEW": 4,
        "PICTURE_STEPS": 5, "RECON_STEPS": 10,
    }  # fmt: skip
    make = ["make", "-f", str(MAKEFILE), *(f"{k}={v}" for k, v in settings.items())]
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*make, *args], capture_output=True, text=True, env=env)

    done = run("all")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table1 = json.loads((out / "table1/table1.json").read_text())
    cells = {(r["label"], r["steps"]) for r in table1["rows"]}
    assert cells == {(f"η = {e}", s) for e in ("0", "0.2", "0.5", "1") for s in (2, 5)} | {
        ("σ̂", 2), ("σ̂", 5), ("η = 0", 20), ("σ̂", 20)
    }  # fmt: skip
    assert table1["meta"]["n"] == 3 and table1["meta"]["ckpt"] == str(ckpt)
    assert not (out / "table1/pieces/s1000.progress").exists()  # kept batches, once done
    floor = json.loads((out / "table1/floor.json").read_text())
    assert (floor["n"], len(floor["draws"]), floor["meta"]["ref"]) == (3, 20, f"{data}[6:12]")
    table2 = json.loads((out / "table2/table2.json").read_text())["mse"]
    assert list(table2["ddim"]) == ["2", "5", "10"]
    long = json.loads((out / "table2/s1000-n400.json").read_text())
    assert list(long["mse"]["ddim"]) == ["20"] and long["meta"]["n"] == 2
    assert set(json.loads((out / "consistency.json").read_text())["agreement"]) == {"2", "5"}
    for steps in (5, 2):
        blobs = json.loads((out / f"checks/blobs-s{steps}.json").read_text())
        assert blobs["meta"]["steps"] == steps and blobs["meta"]["n"] == 3
    assert (out / "checks/memorization_pairs.png").stat().st_size > 0
    assert json.loads((out / "checks/memorization.json").read_text())["meta"]["n"] == 3
    suffixes = ("", "-ddim", "-denoise", "-karras", "-uniform-2m10", "-none-2m10")
    for suffix in suffixes:
        assert json.loads((solvers / f"solvers-fd{suffix}.json").read_text())["points"]
    assert Image.open(pictures / "samples.png").size == (8 * 30 + 2, 8 * 30 + 2)
    assert Image.open(pictures / "examples/reconstruction.png").size == (4 * 30 + 2, 2 * 30 + 2)
    assert Image.open(pictures / "examples/interpolation-grid.png").size == (6 * 30 + 2,) * 2
    assert Image.open(pictures / "examples/trajectory.gif").n_frames == 5 + 1
    assert Image.open(pictures / "examples/trajectory-x0.gif").n_frames == 5

    assert run("-q", "all").returncode == 0, "a second run would redo work"
    assert run("clean").returncode == 0
    assert not (out / "table1/table1.json").exists() and not (pictures / "samples.png").exists()
    assert run("-q", "all").returncode == 1


def test_the_judges_re_read_table1_and_the_solver_table_from_kept_samples(
    tmp_path, write_checkpoint
):
    ckpt, data = tiny_model_and_data(tmp_path, write_checkpoint, 24)
    out, solvers, work = tmp_path / "mnist", tmp_path / "solvers", tmp_path / "work"
    settings = {
        "DDIM": f"{sys.executable} -m ddim.cli", "CKPT": ckpt, "DATA": data, "BATCH": 4,
        "OUT": out, "SOLVERS_OUT": solvers, "WORK": work, "TRAIN": "0:12", "HELD": "12:24",
        "N": 8, "SOLVER_N": 8, "JUDGE_STEPS": "3", "JUDGE_ROWS": "eta0 sigma-hat",
        "SOLVER_RUNS": "ddim karras", "SOLVER_CALLS": "4", "DDIM_CALLS": "5",
    }  # fmt: skip
    make = ["make", "-f", str(MAKEFILE), *(f"{k}={v}" for k, v in settings.items())]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([*make, "judges", "solver-judges"], capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table1 = json.loads((out / "judges/table1.json").read_text())
    assert list(table1)[1:] == ["S3-eta0 (8)", "S3-sigma-hat (8)"]
    paired = json.loads((out / "judges/paired-S3.json").read_text())
    assert list(paired) == ["S3-sigma-hat − S3-eta0"]
    rows = json.loads((solvers / "judges/solvers.json").read_text())
    assert rows["ddim-5calls (8)"]["recall"]["high"] <= 1  # names are unique: no folders
    assert list(rows)[1:] == ["ddim-5calls (8)", "dpmpp-2m-4calls (8)", "unipc-4calls (8)"]
    again = subprocess.run([*make, "-q", "judges", "solver-judges"], env=env)
    assert again.returncode == 0, "a second run would redo work"
