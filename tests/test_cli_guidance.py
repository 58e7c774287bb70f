"""``ddim sample/encode/reconstruct --class --guidance`` on a tiny conditional U-Net made here:
the same images as the library, one row per class for ``--class all``, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cli import ok, run

import ddim
from ddim import workflows
from ddim.formats import images
from ddim.formats.checkpoint import load_pretrained
from ddim.formats.latents import load_latents


def test_sample_a_class_under_guidance_matches_the_library(ckpts, tmp_path) -> None:
    out = ok("sample", "--ckpt", ckpts["cond"], "--class", 2, "--guidance", 3, "-n", 3,
             "--steps", 6, "--out", tmp_path / "g.npz")  # fmt: skip
    assert "classifier-free guidance: each call on 2 x 3 rows" in out.output
    model, sched = load_pretrained(ckpts["cond"])
    options = ddim.SamplerOptions(steps=6, guidance=3.0)
    x = workflows.generate(model, sched, 3, (1, 8, 8), options=options, labels=torch.full((3,), 2))
    got = np.load(tmp_path / "g.npz")["samples"]
    np.testing.assert_array_equal(images.to_uint8(x), got)
    plain = workflows.generate(model, sched, 3, (1, 8, 8), options=ddim.SamplerOptions(steps=6))
    assert not np.array_equal(images.to_uint8(plain), got)  # the class changed the images


def test_class_all_is_one_row_per_class(ckpts, tmp_path) -> None:
    ok("sample", "--ckpt", ckpts["cond"], "--class", "all", "-n", 7, "--steps", 4,
       "--out", tmp_path / "all.npz")  # fmt: skip
    got = np.load(tmp_path / "all.npz")["samples"]
    assert got.shape[0] == 6  # 7 // 3 = 2 images of each of the 3 classes
    model, sched = load_pretrained(ckpts["cond"])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x = workflows.generate(model, sched, 6, (1, 8, 8), options=ddim.SamplerOptions(steps=4),
                           labels=labels)  # fmt: skip
    np.testing.assert_array_equal(images.to_uint8(x), got)


def test_encode_and_reconstruct_under_a_class(ckpts, tmp_path) -> None:
    ok("encode", ckpts["images"], "--ckpt", ckpts["cond"], "--class", 1, "--guidance", 2,
       "--steps", 5, "--out", tmp_path / "z.npz")  # fmt: skip
    model, sched = load_pretrained(ckpts["cond"])
    x0, _ = images.read_images([str(ckpts["images"])], 1, 8)
    z = workflows.encode(model, sched, x0, options=ddim.SamplerOptions(steps=5, guidance=2.0),
                         labels=torch.ones(4, dtype=torch.long))  # fmt: skip
    torch.testing.assert_close(load_latents(tmp_path / "z.npz")[0], z, rtol=0, atol=0)
    out = ok("reconstruct", ckpts["images"], "--ckpt", ckpts["cond"], "--class", 1,
             "--steps", 5, "--out", tmp_path / "r.png")  # fmt: skip
    assert "per-dim MSE" in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--class", 3], "'3' is not a class of this model: give 0..2 or all"),
        (["sample", "--class", "seven"], "'seven' is not a class of this model"),
        (["sample", "--guidance", 2], "classifier-free guidance needs labels y"),
        (["sample", "--guidance", -1], "-1"),
        (["encode", "IMAGES", "--class", "all"], "this command takes one class K, not all"),
        (["sample", "--classifier", "c.safetensors"], "--classifier needs --classifier-scale"),
    ],
)
def test_bad_guidance_options_are_one_line(ckpts, tmp_path, args, message) -> None:
    args = [str(ckpts["images"]) if a == "IMAGES" else a for a in args]
    result = run(*args, "--ckpt", ckpts["cond"], "--steps", 3, "-n" if args[0] == "sample"
                 else "--out", 2 if args[0] == "sample" else tmp_path / "z.npz")  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_class_of_an_unconditional_model_is_refused(ckpts) -> None:
    result = run("sample", "--ckpt", ckpts["plain"], "--class", 1, "--steps", 3, "-n", 1)
    assert result.exit_code == 2
    assert "this model is unconditional; --class needs a class-conditional model" in result.stderr
    result = run("sample", "--ckpt", ckpts["plain"], "--class", 1, "--guidance", 2, "-n", 1)
    assert result.exit_code == 2 and "unconditional" in result.stderr
