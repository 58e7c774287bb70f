"""``ddim edit``, ``ddim inpaint`` and ``ddim translate`` end to end on a tiny conditional
U-Net: the library's images, known pixels kept, masks as PNG or by name, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import ok, run

import ddim
from ddim.edit import edit, translate
from ddim.formats import images
from ddim.formats.checkpoint import load_pretrained
from ddim.formats.masks import named_mask, read_mask
from ddim.inpaint import inpaint


def inputs(ckpts) -> torch.Tensor:
    return images.read_images([str(ckpts["images"])], 1, 8)[0]


def test_edit_matches_the_library(ckpts, tmp_path) -> None:
    ok("edit", ckpts["images"], "--ckpt", ckpts["cond"], "--strength", 0.5, "--steps", 10,
       "--class", 2, "--guidance", 2, "--seed", 3, "--out", tmp_path / "e.npz")  # fmt: skip
    model, sched = load_pretrained(ckpts["cond"])
    x = edit(model, inputs(ckpts), sched, strength=0.5, steps=10, guidance=2.0,
             y=torch.full((4,), 2), seed=3)  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "e.npz")["samples"], images.to_uint8(x))


@pytest.mark.parametrize("method", ["replace", "repaint", "dps", "ddnm"])
def test_inpaint_keeps_the_known_pixels_and_matches_the_library(ckpts, tmp_path, method) -> None:
    out = ok("inpaint", ckpts["images"], "--ckpt", ckpts["plain"], "--mask", "bottom-half",
             "--method", method, "--steps", 5, "--resample", 2,
             "--out", tmp_path / "i.npz")  # fmt: skip
    # resampling (repaint, ddnm) after arriving at points 2 and 4, 2 steps back up: 5 + 2 x 2
    calls = {"replace": 5, "repaint": 9, "dps": 5, "ddnm": 9}[method]
    assert f"{method}: {calls} model calls, {5 if method == 'dps' else 0} gradient" in out.output
    got = np.load(tmp_path / "i.npz")["samples"]
    x0 = inputs(ckpts)
    np.testing.assert_array_equal(got[:, :4], images.to_uint8(x0)[:, :4])  # the top half kept
    model, sched = load_pretrained(ckpts["plain"])
    ref = inpaint(model, x0, named_mask("bottom-half", 8), sched, steps=5, method=method,
                  resample=2)  # fmt: skip
    np.testing.assert_array_equal(got, images.to_uint8(ref.images))


@pytest.mark.parametrize("command", ["inpaint", "edit"])
def test_inpaint_and_edit_take_any_solver(ckpts, tmp_path, command) -> None:
    assert "--solver" in ok(command, "--help").output
    extra = ["--mask", "bottom-half", "--resample", 2] if command == "inpaint" else []
    out = tmp_path / "s.npz"
    ok(command, ckpts["images"], "--ckpt", ckpts["plain"], *extra, "--steps", 6,
       "--solver", "dpmpp-2m", "--out", out)  # fmt: skip
    model, sched = load_pretrained(ckpts["plain"])
    x0 = inputs(ckpts)
    if command == "inpaint":
        ref = inpaint(model, x0, named_mask("bottom-half", 8), sched, steps=6, resample=2,
                      solver="dpmpp-2m").images  # fmt: skip
        np.testing.assert_array_equal(np.load(out)["samples"][:, :4], images.to_uint8(x0)[:, :4])
    else:
        ref = edit(model, x0, sched, strength=0.6, steps=6, solver="dpmpp-2m")
    np.testing.assert_array_equal(np.load(out)["samples"], images.to_uint8(ref))


def test_masks_from_png_and_by_name(tmp_path) -> None:
    pixels = np.full((8, 8), 255, np.uint8)
    pixels[2:6, 2:6] = 0
    Image.fromarray(pixels, "L").save(tmp_path / "m.png")
    assert torch.equal(read_mask(tmp_path / "m.png", 8), named_mask("center", 8))
    assert named_mask("top-half", 8)[0, :4].sum() == 0 and named_mask("top-half", 8)[0, 4:].all()
    Image.fromarray((pixels // 2).astype(np.uint8), "L").save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="is not binary"):
        read_mask(tmp_path / "grey.png", 8)
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="is 9x9; the images are 8x8"):
        read_mask(tmp_path / "big.png", 8)
    with pytest.raises(ValueError, match="unknown mask 'middle'"):
        named_mask("middle", 8)


def test_translate_matches_the_library(ckpts, tmp_path) -> None:
    ok("translate", ckpts["images"], "--ckpt", ckpts["cond"], "--from", 0, "--to", 2,
       "--steps", 8, "--out", tmp_path / "t.npz")  # fmt: skip
    model, sched = load_pretrained(ckpts["cond"])
    x = translate(model, inputs(ckpts), sched, source=0, target=2,
                  options=ddim.SamplerOptions(steps=8))  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "t.npz")["samples"], images.to_uint8(x))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edit", "--strength", 0], "0"),
        (["edit", "--strength", 1.5], "1.5"),
        (["inpaint", "--mask", "middle"], "neither a file nor one of top-half"),
        (["inpaint", "--mask", "bottom-half", "--method", "magic"], "'magic' is not one of"),
        (["inpaint", "--mask", "bottom-half", "--resample-below", 0], "0 is not in the range"),
        (["translate", "--from", 0, "--to", 3], "3 is not a class of this model: give 0..2"),
        (["edit", "--class", "all"], "this command takes one class K, not all"),
    ],
)
def test_bad_editing_input_is_one_line(ckpts, tmp_path, args, message) -> None:
    result = run(args[0], ckpts["images"], *args[1:], "--ckpt", ckpts["cond"], "--steps", 3,
                 "--out", tmp_path / "x.npz")  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_translate_refuses_an_unconditional_model(ckpts, tmp_path) -> None:
    result = run("translate", ckpts["images"], "--ckpt", ckpts["plain"], "--from", 0, "--to", 1,
                 "--out", tmp_path / "x.npz")  # fmt: skip
    assert result.exit_code == 2 and "needs a class-conditional model" in result.stderr


@pytest.mark.slow
def test_eval_inpaint_scores_every_method_against_the_nearest_neighbour(tmp_path) -> None:
    """On the bundled model, four 'held-out' digits made by the model itself (so the test
    needs no MNIST files): each method's row, the nearest neighbour's, known pixels kept."""
    import gzip
    import json
    import struct

    model, sched = load_pretrained("mnist")
    from ddim import workflows
    from ddim.models.classifier import load_classifier

    x = workflows.generate(model, sched, 12, (1, 28, 28), seed=0,
                           options=ddim.SamplerOptions(steps=10))  # fmt: skip
    pixels = images.to_uint8(x)[..., 0]
    labels = load_classifier().predict(x).to(torch.uint8).numpy()
    with gzip.open(tmp_path / "d-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 12, 28, 28) + pixels.tobytes())
    with gzip.open(tmp_path / "d-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 12) + labels.tobytes())
    out = ok("eval", "inpaint", "--data", tmp_path / "d-images-idx3-ubyte.gz",
             "--labels", tmp_path / "d-labels-idx1-ubyte.gz", "--slice", "8:12",
             "--train-slice", "0:8", "-n", 4, "--steps", 4,
             "--methods", "replace,repaint:2,dps,ddnm:2:2,ddnm:2:2:0.2",
             "--precision", "fp32", "--out-dir", tmp_path / "r")  # fmt: skip
    result = json.loads((tmp_path / "r" / "inpaint.json").read_text())
    rows = {s["method"]: s for s in result["scores"]}
    assert list(rows) == ["replace", "repaint, r = 2", "dps", "ddnm, r = 2, jump 2",
                          "ddnm, r = 2, jump 2, t < 0.2 T", "nearest neighbour"]  # fmt: skip
    # ddnm: back 2 once, at point 2 (t = 250), but not where only t < 200 resamples
    assert [rows[m]["calls"] for m in rows] == [4, 7, 4, 6, 4, 0]
    assert all(s["known_kept"] for s in rows.values())
    assert "| replace | 4 |" in out.output and (tmp_path / "r" / "inpaint.png").is_file()
    data = ("--data", tmp_path / "d-images-idx3-ubyte.gz", "--labels", tmp_path / "x.gz")
    bad = run("eval", "inpaint", *data, "--methods", "ddnm:2:2:1.5")
    assert bad.exit_code == 2 and "'ddnm:2:2:1.5': BELOW is a number in (0, 1]" in bad.stderr


@pytest.mark.slow
def test_the_translation_table_runs_on_idx_files(tmp_path, capsys) -> None:
    """python -m ddim.eval.translation on a tiny MNIST-like folder: one row per pair."""
    from ddim.eval.translation import main

    fake_mnist_folder(tmp_path)
    main([str(tmp_path), "--pairs", "3:8", "-n", "2", "--steps", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3")]
    assert len(rows) == 1 and rows[0].startswith("| 3 → 8 | 2 |")


def test_degradations_by_hand() -> None:
    from ddim.eval.sdedit import degrade

    small = torch.arange(49.0).reshape(1, 1, 7, 7) / 49 * 2 - 1
    x = small.repeat_interleave(4, 2).repeat_interleave(4, 3)  # constant on 4x4 blocks
    pooled = torch.nn.functional.avg_pool2d(degrade(x, "downsample"), 4)
    # bilinear weights are symmetric, so an inner block of the upscaled image averages to
    # the 7x7 value it came from; a constant image passes unchanged
    assert torch.allclose(pooled[..., 1:-1, 1:-1], small[..., 1:-1, 1:-1], atol=1e-6)
    flat = torch.full((1, 1, 28, 28), 0.3)
    assert torch.equal(degrade(flat, "downsample"), flat)
    erased = degrade(x, "erase")
    assert (erased[..., 8:20, 8:20] == -1).all() and torch.equal(erased[..., :8, :], x[..., :8, :])
    with pytest.raises(ValueError, match="unknown degradation 'blur'"):
        degrade(x, "blur")


@pytest.mark.slow
def test_the_sdedit_curve_runs_on_idx_files(tmp_path) -> None:
    """python -m ddim.eval.sdedit on a tiny MNIST-like folder: the two ends, one row a
    strength, and the files it promises."""
    from ddim.eval.sdedit import main

    fake_mnist_folder(tmp_path)
    main([str(tmp_path), "-n", "4", "--steps", "4", "--strengths", "0.5,1", "--degrade", "erase",
          "--out-dir", str(tmp_path / "out"), "--precision", "fp32"])  # fmt: skip
    result = json.loads((tmp_path / "out" / "sdedit-erase.json").read_text())
    assert [r["strength"] for r in result["rows"]] == [None, 0.0, 0.5, 1.0]
    # the plan of 4 uniform steps is 0, 250, 500, 750: t0 = 499 adds to 0 and 250, t0 = 999 to all
    assert [r["calls"] for r in result["rows"]] == [0, 0, 3, 5]
    assert result["rows"][0]["mse_to_clean"] == 0 and result["rows"][1]["mse_to_input"] == 0
    strip = Image.open(tmp_path / "out" / "sdedit-erase-strip.png")
    assert strip.size == (4 * 30 + 2, 4 * 30 + 2)  # clean, degraded, two strengths; 4 digits


def fake_mnist_folder(root) -> None:
    """``t10k-{images,labels}`` idx files of 9,004 random digits: 9,000 "training" ones
    (label 0) and four held out, labelled 3, 3, 8, 8."""
    import gzip
    import struct

    x = torch.rand(9004, 28, 28).mul(255).to(torch.uint8).numpy()
    y = np.array([0] * 9000 + [3, 3, 8, 8], dtype=np.uint8)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 9004, 28, 28) + x.tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 9004) + y.tobytes())


@pytest.mark.parametrize("solver", ["edict", "bdia"])
def test_exact_encoding_from_the_command_line(ckpts, tmp_path, solver) -> None:
    """ddim encode writes both halves and the solver; ddim reconstruct decodes to float
    rounding (where DDIM misses by far more); ddim translate takes the exact solvers too."""
    latents = tmp_path / "l.npz"
    ok("encode", ckpts["images"], "--ckpt", ckpts["plain"], "--steps", 6, "--solver", solver,
       "--out", latents)  # fmt: skip
    with np.load(latents) as f:
        assert str(f["solver"]) == solver and f["latents_second"].shape == f["latents"].shape
    said = ok("reconstruct", ckpts["images"], "--ckpt", ckpts["plain"], "--steps", 6,
              "--solver", solver, "--out", tmp_path / "r.png").output  # fmt: skip
    mse = float(said.split("pixels: ")[1].split(" ")[0])
    plain = ok("reconstruct", ckpts["images"], "--ckpt", ckpts["plain"], "--steps", 6,
               "--out", tmp_path / "d.png").output  # fmt: skip
    assert mse < 1e-10 < float(plain.split("pixels: ")[1].split(" ")[0])
    ok("translate", ckpts["images"], "--ckpt", ckpts["cond"], "--from", 0, "--to", 2,
       "--steps", 4, "--solver", solver, "--out", tmp_path / "t.npz")  # fmt: skip
    bad = run("encode", ckpts["images"], "--ckpt", ckpts["plain"], "--solver", "dpmpp-2m",
              "--out", tmp_path / "x.npz")  # fmt: skip
    assert bad.exit_code == 2 and "'dpmpp-2m' is not one of 'ddim', 'edict', 'bdia'" in bad.output


def test_fixed_point_encoding_from_the_command_line(ckpts, tmp_path) -> None:
    """ddim reconstruct --fixed-point K: K extra calls a step, the residual printed, and a
    smaller error than plain DDIM's; refused with an exact solver."""

    def mse(*extra: object) -> tuple[float, str]:
        said = ok("reconstruct", ckpts["images"], "--ckpt", ckpts["plain"], "--steps", 6,
                  "--out", tmp_path / "r.png", "--force", *extra).output  # fmt: skip
        return float(said.split("pixels: ")[1].split(" ")[0]), said

    plain, said = mse()
    assert "fixed point" not in said
    refined, said = mse("--fixed-point", 5)
    assert "fixed point: 5 extra model calls a step (36 a batch in all); largest residual" in said
    assert refined < 0.75 * plain  # 0.128 against 0.242: this tiny model is no denoiser
    bad = run("encode", ckpts["images"], "--ckpt", ckpts["plain"], "--solver", "bdia",
              "--fixed-point", 2, "--out", tmp_path / "x.npz")  # fmt: skip
    assert bad.exit_code == 2 and "fixed_point applies to DDIM's encoding" in bad.stderr


def test_interpolate_between_images_encoded_exactly(ckpts, tmp_path) -> None:
    """ddim interpolate --images A B --solver bdia: the strip's ends are the images."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    x = inputs(ckpts)
    images.save_png(first, x[:1])
    images.save_png(second, x[1:2])
    out = tmp_path / "strip.png"
    ok("interpolate", "--images", first, second, "--ckpt", ckpts["plain"], "--steps", 5,
       "--frames", 3, "--solver", "bdia", "--out", out)  # fmt: skip
    strip = np.asarray(Image.open(out))
    a = np.asarray(Image.open(first))
    assert np.array_equal(strip[2:10, 2:10], a)  # the first frame is image a, to the pixel
    assert np.array_equal(strip[2:10, 22:30], np.asarray(Image.open(second)))  # the last: b
