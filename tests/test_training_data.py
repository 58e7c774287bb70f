"""Training on streamed data: a folder or a pack trains bit for bit the run that the same
pixels held in memory train, through a SIGKILL and a resume with decoding workers, and
under torchrun; a resume on changed data is refused unless accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_training import (
    ENV,
    assert_identical,
    final_states,
    losses,
    run_killed,
    write_config,
)

from ddim.formats.image_sets import Reading
from ddim.formats.packed import pack_folder
from ddim.train import __main__ as train_cli
from ddim.train.config import load_config
from ddim.train.loop import train

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 96


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict]:
    """The same 96 8x8 grayscale images as an npz (in memory), a folder of PNGs and a pack,
    each as a config's data section."""
    root = tmp_path_factory.mktemp("sources")
    pixels = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 8, 8), dtype=np.uint8)
    np.savez(root / "images.npz", x=pixels)
    (root / "folder").mkdir()
    for k, image in enumerate(pixels):
        Image.fromarray(image).save(root / "folder" / f"{k:03d}.png")
    pack_folder(root / "folder", root / "pack", Reading(8, 1, "center-crop"))
    common = {"image_size": 8, "channels": 1, "random_flip": True}
    return {
        "memory": {**common, "kind": "npz", "path": str(root / "images.npz")},
        "folder": {**common, "kind": "folder", "path": str(root / "folder")},
        "packed": {**common, "kind": "packed", "path": str(root / "pack")},
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "packed"])
def test_streamed_data_resume_after_sigkill_is_the_in_memory_run_bit_for_bit(
    tmp_path, sources, kind
):
    torch.set_num_threads(1)
    reference = write_config(tmp_path, "memory", data=sources["memory"])
    train(load_config(reference), progress=False)
    config = write_config(tmp_path, "run", data={**sources[kind], "workers": 2})
    run_killed(config, "after-step", 5)  # checkpoint at 4, step 5 lost
    assert train(load_config(config), resume=True, progress=False).step == 6
    assert_identical(final_states(tmp_path / "run"), final_states(tmp_path / "memory"))
    assert losses(tmp_path / "run") == losses(tmp_path / "memory")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "packed"])
def test_torchrun_on_streamed_data_matches_one_process(tmp_path, sources, kind):
    same = {"model": {"dropout": 0.0}, "training": {"eps": 1e-4, "total_steps": 4}}
    single = write_config(tmp_path, "single", data=sources["memory"], **same)
    ddp = write_config(tmp_path, "ddp", data={**sources[kind], "workers": 1}, **same)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "ddim.train", str(ddp), "--no-progress"],
        env=ENV, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(load_config(single), progress=False)
    reference, other = final_states(tmp_path / "single", 4), final_states(tmp_path / "ddp", 4)
    for which in ("ema", "model"):
        for k, v in reference[which].items():
            torch.testing.assert_close(other[which][k], v, atol=1e-5, rtol=0, msg=kind)


def test_a_resume_on_changed_data_is_refused_unless_accepted(tmp_path, sources, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for png in sorted(Path(sources["folder"]["path"]).iterdir())[:16]:
        (folder / png.name).write_bytes(png.read_bytes())
    data = {**sources["folder"], "path": str(folder), "workers": 0}
    config = write_config(tmp_path, data=data, training={"total_steps": 2})
    train(load_config(config), progress=False)
    assert "found 16 images, skipped none" in capsys.readouterr().err
    (folder / "extra.png").write_bytes((folder / "000.png").read_bytes())
    more = ["training.total_steps=3"]
    with pytest.raises(ValueError, match=r"data changed since step 2: .* holds 17 images, 16 "):
        train(load_config(config, more), resume=True, progress=False)
    status = train_cli.main([str(config), "--resume", "--no-progress", "-o", more[0]])
    last = capsys.readouterr().err.splitlines()[-1]
    assert status == 2 and last.startswith("error: the training data changed since step 2")
    assert last.endswith("pass --accept-data-change to go on with the new data")
    (folder / "extra.png").unlink()
    (folder / "001.png").write_bytes((folder / "002.png").read_bytes())
    with pytest.raises(ValueError, match="holds other images than when it was saved"):
        train(load_config(config, more), resume=True, progress=False)
    result = train(load_config(config, more), resume=True, progress=False, accept_data_change=True)
    assert result.step == 3 and "data: " in capsys.readouterr().err


def test_the_folder_example_config_trains_on_a_folder(tmp_path):
    images = tmp_path / "my_images"
    images.mkdir()
    for k in range(6):
        size = (40 + 7 * k, 30 + 5 * k)  # mixed sizes and modes
        Image.new("RGB" if k % 2 else "L", size, 40 * k).save(images / f"{k}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    raw = yaml.safe_load((REPO / "configs" / "folder.yaml").read_text())
    assert (raw["data"]["image_size"], raw["data"]["channels"]) == (64, 3)
    assert raw["data"]["kind"] == "folder" and raw["model"]["image_size"] == 64
    tiny = [
        f"data.path={images}", f"out_dir={tmp_path / 'run'}", "data.image_size=8",
        "model.image_size=8", "model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
        "model.attn_resolutions=[4]", "training.total_steps=2", "training.batch_size=4",
        "training.sample_every=0", "data.workers=1",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "ddim.train", str(REPO / "configs" / "folder.yaml"),
         "--no-progress", *[a for item in tiny for a in ("--set", item)]],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{images}: found 7 images, skipped 1 that cannot be read" in proc.stderr
    assert "broken.jpg" in proc.stderr and "finished at step 2" in proc.stdout
