"""The ``ddim`` command end to end on a tiny U-Net made here, and its one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from click.testing import CliRunner, Result
from PIL import Image

import ddim
from ddim import workflows
from ddim.cli import main
from ddim.formats import images
from ddim.formats.checkpoint import load_pretrained, read_metadata
from ddim.formats.latents import load_latents
from ddim.models.unet import UNet
from ddim.speed import Setting
from ddim.workflows import SamplerOptions as Opts

T = 100
SCHEDULE = ddim.NoiseSchedule.linear(T, 1e-3, 0.05)


@pytest.fixture(scope="module")
def files(tmp_path_factory, perturbed_unet, write_checkpoint) -> dict[str, Path]:
    """A tiny checkpoint, good and bad images, and damaged checkpoints."""
    root = tmp_path_factory.mktemp("cli")
    ckpt = write_checkpoint(
        root / "tiny.safetensors", perturbed_unet().state_dict(), SCHEDULE, step=7
    )
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / f"g{i}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(root / "big.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(root / "rgb.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "truncated.safetensors").write_bytes(ckpt.read_bytes()[:5000])
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    safetensors.torch.save_file({"w": torch.zeros(2)}, root / "foreign.safetensors")
    (root / "not_a_file").write_text("x")
    (root / "sections.yaml").write_text("model: {}\n")
    (root / "existing.png").write_bytes(b"")
    (root / "empty_dir").mkdir()
    return {p.name: p for p in root.iterdir()} | {"root": root}


def run(*args: object) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    return result


def ok(*args: object) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return result


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def tile(grid: np.ndarray, row: int, col: int, size: int = 8, pad: int = 2) -> np.ndarray:
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return grid[top : top + size, left : left + size]


# ---------------------------------------------------------------- sample


def test_sample_is_batch_invariant_seeded_and_matches_the_library(files, tmp_path) -> None:
    common = ["sample", "--ckpt", files["tiny.safetensors"], "--steps", 10, "--eta", 0.5]
    ok(*common, "-n", 5, "--batch-size", 2, "--out", tmp_path / "a.npz")
    ok(*common, "-n", 5, "--batch-size", 5, "--out", tmp_path / "b.npz")
    ok(*common, "-n", 1, "--seed", 3, "--out", tmp_path / "c.npz")
    a, b, c = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "abc")
    assert a.shape == (5, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c[0], a[3])
    model, sched = load_pretrained(files["tiny.safetensors"])
    x = workflows.generate(model, sched, 5, (1, 8, 8), options=Opts(steps=10, eta=0.5))
    np.testing.assert_array_equal(images.to_uint8(x), a)
    assert a.std() > 10


@pytest.mark.parametrize("solver", ["dpmpp-2m", "heun", "dpmpp-2m-sde"])
def test_sample_with_a_solver_matches_the_library_and_reports_its_calls(
    files, tmp_path, solver
) -> None:
    args = ["--ckpt", files["tiny.safetensors"], "--steps", 6, "--spacing", "logsnr"]
    result = ok("sample", *args, "--solver", solver, "-n", 3, "--out", tmp_path / "s.npz")
    model, sched = load_pretrained(files["tiny.safetensors"])
    calls = ddim.model_calls(sched, 6, "logsnr", solver)
    assert (
        result.stdout.splitlines()[0]
        == f"{solver}: {calls} model calls a batch, 1 batch(es) of <= 64"
    )
    x = workflows.generate(
        model, sched, 3, (1, 8, 8), options=Opts(steps=6, spacing="logsnr", solver=solver)
    )
    np.testing.assert_array_equal(images.to_uint8(x), np.load(tmp_path / "s.npz")["samples"])


def test_sample_writes_grids_and_folders_and_respects_force(files, tmp_path) -> None:
    args = ["sample", "--ckpt", files["tiny.safetensors"], "--steps", 5, "-n", 6]
    result = ok(*args, "--out", tmp_path / "grid.png")
    assert result.stdout == (
        "ddim: 5 model calls a batch, 1 batch(es) of <= 64\n"
        "speed: eager (5 model calls are too few to repay compiling)\n"
        f"wrote a grid of 6 images to {tmp_path / 'grid.png'}\n"
    )
    assert result.stderr == ""
    grid = read_png(tmp_path / "grid.png")
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)
    ok(*args, "--out", tmp_path / "row.png", "--nrow", 6)
    assert read_png(tmp_path / "row.png").shape == (12, 62)
    ok(*args, "--out", f"{tmp_path / 'pngs'}/")
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == [f"{i:06d}.png" for i in range(6)] + ["ddim-sample.json"]
    np.testing.assert_array_equal(read_png(tmp_path / "pngs" / "000004.png"), tile(grid, 1, 1))

    again = run(*args, "--out", tmp_path / "grid.png")
    assert again.exit_code == 2
    assert (
        again.stderr == f"error: {tmp_path / 'grid.png'} already exists; pass --force to "
        "overwrite it\n"
    )
    assert "kept 6 already there" in ok(*args, "--out", tmp_path / "pngs").stdout  # resumed
    assert run(*args, "--out", tmp_path / "pngs", "--seed", 1).exit_code == 2
    ok(*args, "--out", tmp_path / "grid.png", "--seed", 1, "--force")
    assert not np.array_equal(read_png(tmp_path / "grid.png"), grid)


def test_sample_trajectory_gif(files, tmp_path) -> None:
    args = ["sample", "--ckpt", files["tiny.safetensors"], "--steps", 10, "-n", 4]
    result = ok(*args, "--out", tmp_path / "s.png", "--trajectory", tmp_path / "xt.gif")
    assert "wrote 11 frames of xt" in result.stdout
    with Image.open(tmp_path / "xt.gif") as gif:
        assert gif.n_frames == 11
        gif.seek(10)
        last = np.asarray(gif.convert("L"))
    np.testing.assert_array_equal(last, read_png(tmp_path / "s.png"))
    ok(
        *args,
        "--out",
        tmp_path / "t.png",
        "--trajectory",
        tmp_path / "x0.gif",
        "--trajectory-of",
        "x0",
    )
    with Image.open(tmp_path / "x0.gif") as gif:
        assert gif.n_frames == 10


def test_sample_variances_and_clipping_differ(files, tmp_path) -> None:
    args = ["sample", "--ckpt", files["tiny.safetensors"], "--steps", 10, "-n", 3]
    outs = {}
    for name, extra in {
        "ddim": [],
        "clip": ["--clip"],
        "large": ["--variance", "ddpm-large"],
        "large-noclip": ["--variance", "ddpm-large", "--no-clip"],
        "quad": ["--spacing", "quad"],
    }.items():
        ok(*args, *extra, "--out", tmp_path / f"{name}.npz")
        outs[name] = np.load(tmp_path / f"{name}.npz")["samples"]
    assert len({v.tobytes() for v in outs.values()}) == len(outs)


# ---------------------------------------------------------------- encode / reconstruct


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_encode_matches_the_library(files, tmp_path, suffix) -> None:
    out = tmp_path / f"z{suffix}"
    sources = [files["g0.png"], files["g2.png"]]
    result = ok(
        "encode",
        *sources,
        "--ckpt",
        files["tiny.safetensors"],
        "--steps",
        10,
        "--batch-size",
        1,
        "--out",
        out,
    )
    assert result.stdout == f"wrote 2 latents to {out}\n"
    latents, labels = load_latents(out)
    assert labels == [str(s) for s in sources]
    model, sched = load_pretrained(files["tiny.safetensors"])
    x0, _ = images.read_images(sources, 1, 8)
    expected = workflows.encode(model, sched, x0, options=Opts(steps=10), batch_size=1)
    torch.testing.assert_close(latents, expected, atol=0, rtol=0)
    assert latents.std() > 0.3


def test_reconstruct_prints_the_unit_scale_mse(files, tmp_path) -> None:
    sources = [files[f"g{i}.png"] for i in range(3)]
    out = tmp_path / "r.png"
    result = ok(
        "reconstruct",
        *sources,
        "--ckpt",
        files["tiny.safetensors"],
        "--steps",
        20,
        "--per-image",
        "--out",
        out,
    )
    model, sched = load_pretrained(files["tiny.safetensors"])
    x0, _ = images.read_images(sources, 1, 8)
    mse = workflows.reconstruct(model, sched, x0, options=Opts(steps=20)).mse
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"{m:.6f}  {s}" for m, s in zip(mse.tolist(), sources, strict=True)]
    mean = re.fullmatch(
        r"per-dim MSE on \[0,1\]-scaled pixels: (\S+) \(mean over 3 images, "
        r"20 steps, ddim\); clamped to \[-1, 1\] as saved: (\S+)",
        lines[3],
    )
    assert mean is not None and float(mean.group(1)) == pytest.approx(mse.mean().item(), rel=1e-5)
    clamped = (
        workflows.per_dim_mse(
            x0, workflows.reconstruct(model, sched, x0, options=Opts(steps=20)).images.clamp(-1, 1)
        )
        .mean()
        .item()
    )
    assert float(mean.group(2)) == pytest.approx(clamped, rel=1e-5)
    picture = read_png(out)
    assert picture.shape == (22, 32)
    np.testing.assert_array_equal(tile(picture, 0, 2), read_png(files["g2.png"]))


# ---------------------------------------------------------------- interpolate


def test_interpolate_seeds_ends_are_the_seeds_samples(files, tmp_path) -> None:
    ckpt = ["--ckpt", files["tiny.safetensors"], "--steps", 10]
    ok(
        "interpolate",
        "--seeds",
        5,
        9,
        "--frames",
        4,
        "--out",
        tmp_path / "i.png",
        "--gif",
        tmp_path / "i.gif",
        *ckpt,
    )
    strip = read_png(tmp_path / "i.png")
    assert strip.shape == (12, 42)
    for seed, col in ((5, 0), (9, 3)):
        ok("sample", "-n", 1, "--seed", seed, "--out", tmp_path / f"s{seed}.png", *ckpt)
        np.testing.assert_array_equal(tile(strip, 0, col), read_png(tmp_path / f"s{seed}.png"))
    assert not np.array_equal(tile(strip, 0, 1), tile(strip, 0, 2))
    with Image.open(tmp_path / "i.gif") as gif:
        assert gif.n_frames == 4


def test_interpolate_grid_of_four_seeds_and_images(files, tmp_path) -> None:
    ckpt = ["--ckpt", files["tiny.safetensors"], "--steps", 10]
    ok(
        "interpolate",
        "--seeds",
        1,
        2,
        "--seeds",
        3,
        4,
        "--grid",
        "--frames",
        3,
        "--out",
        tmp_path / "g.png",
        *ckpt,
    )
    grid = read_png(tmp_path / "g.png")
    assert grid.shape == (32, 32)
    for seed, (row, col) in zip((1, 2, 3, 4), ((0, 0), (0, 2), (2, 0), (2, 2)), strict=True):
        ok("sample", "-n", 1, "--seed", seed, "--out", tmp_path / f"s{seed}.png", *ckpt)
        np.testing.assert_array_equal(tile(grid, row, col), read_png(tmp_path / f"s{seed}.png"))
    ok(
        "interpolate",
        "--images",
        files["g0.png"],
        files["g1.png"],
        "--frames",
        3,
        "--out",
        tmp_path / "im.png",
        *ckpt,
    )
    model, sched = load_pretrained(files["tiny.safetensors"])
    x0, _ = images.read_images([files["g0.png"], files["g1.png"]], 1, 8)
    z = workflows.encode(model, sched, x0, options=Opts(steps=10))
    x = workflows.decode(
        model, sched, workflows.interpolation_latents(z, 3), options=Opts(steps=10)
    )
    np.testing.assert_array_equal(read_png(tmp_path / "im.png"), images.make_grid(x, 3)[..., 0])


# ---------------------------------------------------------------- convert / info / train


def eps_of(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(x, torch.tensor([3, 97]))


def test_convert_ours_diffusers_round_trip(files, tmp_path) -> None:
    diffusers = pytest.importorskip("diffusers")
    original, _ = load_pretrained(files["tiny.safetensors"])
    ok(
        "convert",
        files["tiny.safetensors"],
        tmp_path / "pipe",
        "--from",
        "ours",
        "--to",
        "diffusers",
    )
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = unet(x, torch.tensor([3, 97])).sample
    torch.testing.assert_close(theirs, eps_of(original), atol=1e-5, rtol=0)
    ok(
        "convert",
        tmp_path / "pipe",
        tmp_path / "back.safetensors",
        "--from",
        "diffusers",
        "--to",
        "ours",
    )
    back, sched = load_pretrained(tmp_path / "back.safetensors")
    torch.testing.assert_close(eps_of(back), eps_of(original), atol=1e-5, rtol=0)
    assert torch.equal(sched.betas, SCHEDULE.betas)
    ok("sample", "--ckpt", tmp_path / "pipe", "-n", 2, "--steps", 5, "--out", tmp_path / "d.npz")
    ok(
        "sample",
        "--ckpt",
        files["tiny.safetensors"],
        "-n",
        2,
        "--steps",
        5,
        "--out",
        tmp_path / "o.npz",
    )
    d, o = (np.load(tmp_path / f"{k}.npz")["samples"].astype(int) for k in "do")
    assert np.abs(d - o).max() <= 1


@pytest.mark.parametrize("which", ["ema", "model"])
def test_convert_ours_to_ours_keeps_one_set_of_weights_and_the_description(
    tmp_path, perturbed_unet, write_checkpoint, which
) -> None:
    """How a training checkpoint becomes a bundled model: one set of weights, and the
    step and training config it came with."""
    ema, raw = perturbed_unet(), perturbed_unet(seed=5)
    src = write_checkpoint(
        tmp_path / "run.safetensors", ema.state_dict(), SCHEDULE, model=raw.state_dict(),
        step=1234, extra_meta={"train_config": {"training": {"lr": 5e-4}}},
    )  # fmt: skip
    dst = tmp_path / "bundled.safetensors"
    ok("convert", src, dst, "--from", "ours", "--to", "ours", "--which", which)
    meta = read_metadata(dst)
    assert meta["weights"] == ["ema"] and meta["step"] == 1234
    assert meta["extra"] == {
        "train_config": {"training": {"lr": 5e-4}}, "converted_from": f"ours:{src}"
    }  # fmt: skip
    model, _ = load_pretrained(dst)
    assert torch.equal(eps_of(model), eps_of({"ema": ema, "model": raw}[which]))


@pytest.mark.parametrize("dtype,storage", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_convert_to_16_bits_stores_rounded_weights_that_compute_in_fp32(
    tmp_path, perturbed_unet, write_checkpoint, dtype, storage
) -> None:
    """How a bundled student is made smaller: the file holds each weight rounded once to
    16 bits, and the loaded model is, bit for bit, the source with its weights so rounded."""
    source = perturbed_unet()
    src = write_checkpoint(tmp_path / "full.safetensors", source.state_dict(), SCHEDULE)
    dst = tmp_path / f"{dtype}.safetensors"
    ok("convert", src, dst, "--from", "ours", "--to", "ours", "--dtype", dtype)
    assert read_metadata(dst)["extra"]["weight_dtype"] == dtype
    stored = safetensors.torch.load_file(dst)
    assert {v.dtype for k, v in stored.items() if k.startswith("ema.")} == {storage}
    rounded = perturbed_unet()
    rounded.load_state_dict({k: v.to(storage).float() for k, v in source.state_dict().items()})
    model, sched = load_pretrained(dst)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(eps_of(model), eps_of(rounded))
    assert not torch.equal(eps_of(model), eps_of(source))
    assert torch.equal(sched.betas, SCHEDULE.betas)
    assert dst.stat().st_size < 0.51 * src.stat().st_size


def test_convert_native_diffusers_model(tmp_path, tiny_config) -> None:
    diffusers = pytest.importorskip("diffusers")
    from ddim.formats.diffusers import diffusers_unet_config
    from ddim.formats.diffusers_folder import scheduler_config

    torch.manual_seed(4)
    unet = diffusers.UNet2DModel(**diffusers_unet_config(tiny_config)).eval()
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "scheduler_config.json").write_text(json.dumps(scheduler_config(SCHEDULE)))
    ok(
        "convert",
        tmp_path / "unet",
        tmp_path / "ours.safetensors",
        "--from",
        "diffusers",
        "--to",
        "ours",
    )
    ours, _ = load_pretrained(tmp_path / "ours.safetensors")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            eps_of(ours), unet(x, torch.tensor([3, 97])).sample, atol=1e-5, rtol=0
        )


def official_yaml(path: Path) -> Path:
    raw = {
        "data": {"dataset": "TINY", "image_size": 8, "channels": 1},
        "model": {
            "type": "simple",
            "in_channels": 1,
            "out_ch": 1,
            "ch": 32,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [4],
            "dropout": 0.0,
            "var_type": "fixedlarge",
            "ema_rate": 0.9999,
            "ema": True,
            "resamp_with_conv": True,
        },
        "diffusion": {
            "beta_schedule": "linear",
            "beta_start": 0.001,
            "beta_end": 0.05,
            "num_diffusion_timesteps": T,
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_convert_official_and_pesser(tmp_path, tiny_config, perturbed_unet) -> None:
    ema, raw = perturbed_unet(seed=1).state_dict(), perturbed_unet(seed=2).state_dict()
    prefixed = [{f"module.{k}": v for k, v in s.items()} for s in (raw, ema)]
    torch.save([prefixed[0], {}, 3, 1234, prefixed[1]], tmp_path / "ckpt.pth")
    torch.save(ema, tmp_path / "model-1234.ckpt")
    config = official_yaml(tmp_path / "tiny.yml")
    reference = UNet(tiny_config).eval()
    reference.load_state_dict(ema)
    for fmt, src, which in (
        ("official", "ckpt.pth", "ema"),
        ("pesser", "model-1234.ckpt", "ema"),
        ("official", "ckpt.pth", "model"),
    ):
        dst = tmp_path / f"{fmt}-{which}.safetensors"
        ok(
            "convert",
            tmp_path / src,
            dst,
            "--from",
            fmt,
            "--to",
            "ours",
            "--config",
            config,
            "--which",
            which,
        )
        model, sched = load_pretrained(dst)
        assert torch.equal(sched.betas, SCHEDULE.betas)
        if which == "ema":
            torch.testing.assert_close(eps_of(model), eps_of(reference), atol=0, rtol=0)
        else:
            assert torch.equal(model.state_dict()["conv_in.weight"], raw["conv_in.weight"])
    result = run(
        "convert",
        tmp_path / "ckpt.pth",
        tmp_path / "x.safetensors",
        "--from",
        "official",
        "--to",
        "ours",
    )
    assert result.exit_code == 2
    assert "official CIFAR-10 model; give the model's YAML config" in result.stderr


def test_info_text_and_json(files, perturbed_unet) -> None:
    text = ok("info", files["tiny.safetensors"]).stdout
    n = sum(v.numel() for v in perturbed_unet().state_dict().values())
    assert f"parameters     {n:,}\n" in text
    assert "training step  7\n" in text and "data shape     1x8x8\n" in text
    assert "schedule       linear (beta_end=0.05, beta_start=0.001, num_timesteps=100)" in text
    assert "extra" not in text
    meta = json.loads(ok("info", files["tiny.safetensors"], "--json").stdout)
    assert (meta["step"], meta["num_parameters"], meta["weights"]) == (7, n, ["ema"])


def test_info_speed_measures_once_and_sample_uses_the_record(files, tmp_path) -> None:
    """``info --speed`` measures both eager layouts once and picks the faster here (either,
    by machine); ``sample`` runs the same one from the record and replaces that setting's
    figure, and no other, with its own time per call."""
    from ddim.speed import record

    field_of = {
        Setting().describe(): "eager",
        Setting(channels_last=True).describe(): "eager_channels_last",
    }
    text = ok("info", files["tiny.safetensors"], "--speed").stdout
    head = "ddim sample -n 1000 (50 steps, batches of 64) on cpu runs "
    line = text.splitlines()[-1]
    assert line.startswith(head)
    assert "800 calls x (" in line and "30.0 s to compile - " in line  # 16 batches x 50
    (probed,) = json.loads(record.path().read_text()).values()
    assert probed["compiled"] is None and all(probed[f] > 0 for f in field_of.values())
    faster = min(field_of.values(), key=probed.__getitem__)  # the default layout on a tie
    chosen = line.removeprefix(head).partition(": ")[0]
    assert field_of.get(chosen) == faster  # an eager setting: 800 calls do not repay 30 s
    args = ["sample", "--ckpt", files["tiny.safetensors"], "-n", 200, "--steps", 50]
    said = ok(*args, "--out", tmp_path / "a.npz").stdout  # the same shape: 64 rows a call
    assert re.findall(r"^speed: (.+?) \(200 calls x \(", said, re.MULTILINE) == [chosen]
    (entry,) = json.loads(record.path().read_text()).values()
    assert [f for f in entry if entry[f] != probed[f]] == [faster]  # the job's, not the probe's
    fixed = ok(*args, "--no-compile", "--out", tmp_path / "b.npz").stdout
    assert "speed:" not in fixed


def test_info_shows_the_training_config_as_indented_lines(
    tmp_path, perturbed_unet, write_checkpoint
) -> None:
    train_config = {
        "data": {"key": None, "random_flip": False},
        "model": {"ch": 32, "ch_mult": [1, 2]},
        "out_dir": "runs/tiny",
    }
    ckpt = write_checkpoint(
        tmp_path / "c.safetensors",
        perturbed_unet().state_dict(),
        SCHEDULE,
        extra_meta={"train_config": train_config},
    )
    text = ok("info", ckpt).stdout
    assert "\n--precision auto on cpu runs " in text
    assert (
        "weights        ema\n"
        "extra:\n"
        "  train_config:\n"
        "    data:\n"
        "      key: null\n"
        "      random_flip: false\n"
        "    model:\n"
        "      ch: 32\n"
        "      ch_mult: [1, 2]\n"
        "    out_dir: runs/tiny\n"
    ) in text
    meta = json.loads(ok("info", ckpt, "--json").stdout)
    assert meta["extra"] == {"train_config": train_config}


def test_train_runs_and_resumes(tmp_path, tiny_config) -> None:
    data = tmp_path / "data.npz"
    images.save_npz(data, torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    config = {
        "out_dir": str(tmp_path / "run"),
        "model": tiny_config.to_dict(),
        "diffusion": {"num_timesteps": T, "beta_start": 1e-3, "beta_end": 0.05},
        "data": {"kind": "npz", "path": str(data), "image_size": 8, "channels": 1},
        "training": {
            "total_steps": 2,
            "batch_size": 4,
            "warmup_steps": 0,
            "ckpt_every": 1,
            "sample_every": 0,
            "log_every": 1,
            "device": "cpu",
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    first = ok("train", tmp_path / "c.yaml", "--no-progress")
    assert "finished at step 2" in first.stdout
    second = ok(
        "train", tmp_path / "c.yaml", "--set", "training.total_steps=3", "--resume", "--no-progress"
    )
    assert "finished at step 3" in second.stdout
    weights = Path(second.stdout.strip().rsplit("weights: ", 1)[1])
    assert json.loads(ok("info", weights, "--json").stdout)["step"] == 3


# ---------------------------------------------------------------- errors


def error_cases() -> list[tuple[str, list[str], str]]:
    """(id, args with {name} placeholders for fixture files, expected text in the error)."""
    tiny = ["--ckpt", "{tiny.safetensors}"]
    missing_device = "cuda:99" if torch.cuda.is_available() else "cuda"
    return [
        ("missing-ckpt", ["sample", "--ckpt", "{root}/nope.safetensors"], "does not exist"),
        ("garbage-ckpt", ["sample", "--ckpt", "{garbage.safetensors}"], "not a safetensors"),
        ("truncated-ckpt", ["sample", "--ckpt", "{truncated.safetensors}"], "truncated"),
        ("foreign-ckpt", ["info", "{foreign.safetensors}"], "not a ddim checkpoint"),
        ("folder-ckpt", ["sample", "--ckpt", "{empty_dir}"], "is not a diffusers folder"),
        ("steps-zero", ["sample", *tiny, "--steps", "0"], "'--steps': 0 is not in the range"),
        ("steps-above-T", ["sample", *tiny, "--steps", "101"], "more than the model's 100"),
        ("eta-negative", ["sample", *tiny, "--eta", "-1"], "'--eta'"),
        ("eta-nan", ["sample", *tiny, "--eta", "nan", "--out", "{root}/n.png"], "eta must be"),
        (
            "solver-eta",
            ["sample", *tiny, "--solver", "unipc", "--eta", "1", "--out", "{root}/u.png"],
            "eta applies to solver 'ddim' only, not 'unipc'",
        ),
        (
            "solver-steps",
            ["sample", *tiny, "--solver", "dpmpp-3m", "--steps", "2", "--out", "{root}/v.png"],
            "needs at least 3 steps",
        ),
        ("solver-unknown", ["sample", *tiny, "--solver", "euler"], "'euler' is not one of"),
        ("n-zero", ["sample", *tiny, "-n", "0"], "'-n' / '--num'"),
        ("batch-zero", ["sample", *tiny, "--batch-size", "0"], "'--batch-size'"),
        ("seed-negative", ["sample", *tiny, "--seed", "-3"], "'--seed'"),
        ("spacing", ["sample", *tiny, "--spacing", "cubic"], "'cubic' is not one of"),
        ("variance", ["sample", *tiny, "--variance", "big"], "'big' is not one of"),
        ("device-unknown", ["sample", *tiny, "--device", "tpu9"], "unknown device 'tpu9'"),
        ("device-absent", ["sample", *tiny, "--device", missing_device], "CUDA"),
        ("out-suffix", ["sample", *tiny, "--out", "{root}/s.jpg"], "must end with .png or .npz"),
        ("out-exists", ["sample", *tiny, "--out", "{existing.png}"], "already exists"),
        ("out-unwritable", ["sample", *tiny, "--out", "{not_a_file}/s.png"], "is not a folder"),
        ("traj-suffix", ["sample", *tiny, "--trajectory", "{root}/t.png"], "must end with .gif"),
        ("encode-size", ["encode", "{big.png}", *tiny], "holds 10x10 grayscale images"),
        ("encode-channels", ["encode", "{rgb.png}", *tiny], "holds 8x8 RGB images"),
        ("encode-corrupt", ["encode", "{corrupt.png}", *tiny], "cannot read image"),
        ("encode-missing", ["encode", "{root}/none.png", *tiny], "does not exist"),
        ("encode-no-images", ["encode", "{empty_dir}", *tiny], "no images found"),
        ("encode-out", ["encode", "{g0.png}", *tiny, "--out", "{root}/z.txt"], "or .pt"),
        ("recon-out", ["reconstruct", "{g0.png}", *tiny, "--out", "{root}/r.npz"], ".png"),
        ("interp-nothing", ["interpolate", *tiny], "give either --seeds"),
        (
            "interp-both",
            ["interpolate", "--seeds", "1", "2", "--images", "{g0.png}", "{g1.png}"],
            "give either",
        ),
        ("interp-grid-pairs", ["interpolate", "--seeds", "1", "2", "--grid"], "given twice"),
        ("interp-frames", ["interpolate", "--seeds", "1", "2", "--frames", "1"], "'--frames'"),
        (
            "interp-gif-grid",
            [
                "interpolate",
                "--seeds",
                "1",
                "2",
                "--seeds",
                "3",
                "4",
                "--grid",
                "--gif",
                "{root}/g.gif",
            ],
            "--gif animates",
        ),
        (
            "convert-dst-exists",
            [
                "convert",
                "{tiny.safetensors}",
                "{existing.png}",
                "--from",
                "ours",
                "--to",
                "diffusers",
            ],
            "already exists",
        ),
        (
            "convert-bad-torch",
            [
                "convert",
                "{garbage.safetensors}",
                "{root}/o.safetensors",
                "--from",
                "pesser",
                "--to",
                "ours",
            ],
            "not a PyTorch checkpoint",
        ),
        (
            "convert-dtype-diffusers",
            [
                "convert",
                "{tiny.safetensors}",
                "{root}/pipe16",
                "--from",
                "ours",
                "--to",
                "diffusers",
                "--dtype",
                "fp16",
            ],
            "--dtype applies to --to ours only",
        ),
        (
            "convert-no-from",
            ["convert", "{tiny.safetensors}", "{root}/o.safetensors", "--to", "ours"],
            "Missing option '--from'",
        ),
        ("train-missing", ["train", "{root}/none.yaml"], "does not exist"),
        ("train-override", ["train", "{sections.yaml}", "--set", "lr"], "must look like"),
        ("train-override-alias", ["train", "{sections.yaml}", "-o", "lr"], "must look like"),
        ("train-not-mapping", ["train", "{not_a_file}"], "must be a mapping of sections"),
        ("train-incomplete", ["train", "{sections.yaml}"], "needs a 'diffusion' section"),
        ("info-missing", ["info", "{root}/none.safetensors"], "does not exist"),
        ("unknown-command", ["smaple"], "No such command 'smaple'"),
        ("unknown-option", ["sample", "--foo"], "No such option '--foo'"),
    ]


@pytest.mark.parametrize("case", error_cases(), ids=lambda c: c[0])
def test_bad_input_is_one_error_line_and_exit_2(files, case) -> None:
    _, args, expected = case
    names = {k: str(v) for k, v in files.items()}
    result = run(*(re.sub(r"\{([^}]+)\}", lambda m: names[m.group(1)], a) for a in args))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_debug_env_reraises(files, monkeypatch) -> None:
    monkeypatch.setenv("DDIM_DEBUG", "1")
    result = CliRunner().invoke(main, ["info", str(files["root"] / "none.safetensors")])
    assert isinstance(result.exception, FileNotFoundError)


@pytest.mark.slow
def test_entry_point_in_a_subprocess(files) -> None:
    exe = shutil.which("ddim", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the ddim entry point is not installed")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("sample", "encode", "reconstruct", "interpolate", "train", "convert", "info"):
        assert f"  {command} " in help_text.stdout
    bad = subprocess.run(
        [exe, "sample", "--ckpt", str(files["tiny.safetensors"]), "--steps", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "error: Invalid value for '--steps': 0 is not in the range x>=1. (see 'ddim sample --help')"
    ]


# ---------------------------------------------------------------- the bundled model


@pytest.mark.slow
def test_bundled_mnist_samples_and_reconstructs(tmp_path) -> None:
    text = ok("info").stdout
    assert "data shape     1x28x28" in text
    ok("sample", "-n", 8, "--steps", 20, "--out", tmp_path / "s.npz")
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (8, 28, 28, 1)
    assert (samples < 30).mean() > 0.5 and (samples > 200).mean() > 0.05  # dark ground, strokes
    ok("sample", "-n", 2, "--steps", 20, "--out", f"{tmp_path / 'pngs'}/")
    result = ok("reconstruct", tmp_path / "pngs", "--steps", 50, "--out", tmp_path / "r.png")
    mse = float(re.search(r"pixels: (\S+)", result.stdout).group(1))
    assert mse < 0.01


def test_a_folder_named_like_the_bundled_model_does_not_hide_it(tmp_path, monkeypatch) -> None:
    """`--ckpt mnist` next to a data folder called mnist/ (make -C docs/results found this)."""
    (tmp_path / "mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "data shape     1x28x28" in ok("info", "mnist").stdout
    ok("sample", "--ckpt", "mnist", "-n", 1, "--steps", 2, "--out", tmp_path / "s.npz")
    assert np.load(tmp_path / "s.npz")["samples"].shape == (1, 28, 28, 1)
    not_diffusers = run("sample", "--ckpt", tmp_path / "mnist", "-n", 1, "--out", "x.png")
    assert not_diffusers.exit_code == 2
    assert "is not a diffusers folder (no config.json or unet/config.json)" in not_diffusers.output
