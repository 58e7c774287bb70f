"""Picture I/O: pixel mapping, grids, PNG folders, npz, GIFs, and strict image reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.formats import images
from ddim.formats.archives import load_npz


def ramp(n: int = 3, c: int = 1, size: int = 4) -> torch.Tensor:
    """A batch whose pixel values sweep [-1, 1] deterministically."""
    return torch.linspace(-1, 1, n * c * size * size).reshape(n, c, size, size)


def test_to_uint8_maps_and_clamps() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert images.to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]


def test_to_uint8_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        images.to_uint8(torch.zeros(2, 2, 4, 4))


def test_grid_places_images_between_black_padding() -> None:
    x = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)])
    grid = images.make_grid(x, nrow=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1:3, 1:4].min() == grid[1:3, 1:4].max() == 0
    assert grid[1:3, 5:8].min() == grid[1:3, 5:8].max() == 128
    assert grid[4:6, 1:4].min() == 255
    assert grid[4:6, 5:8].max() == 0  # the empty cell stays black
    assert grid[0].max() == grid[:, 0].max() == grid[3].max() == 0


def test_png_round_trip(tmp_path) -> None:
    x = ramp(n=4, c=3)
    images.save_png(tmp_path / "g.png", x, nrow=2)
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), images.make_grid(x, nrow=2))
    images.save_png(tmp_path / "one.png", x[:1, :1])
    with Image.open(tmp_path / "one.png") as img:
        assert img.mode == "L" and img.size == (4, 4)
        np.testing.assert_array_equal(np.asarray(img), images.to_uint8(x[:1, :1])[0, ..., 0])


def test_png_folder_numbers_from_start(tmp_path) -> None:
    x = ramp(n=3)
    paths = images.save_png_folder(tmp_path / "out", x, start=7)
    assert [p.name for p in paths] == ["000007.png", "000008.png", "000009.png"]
    assert images.png_names(2, 7) == ["000007.png", "000008.png"]
    back, labels = images.read_images([tmp_path / "out"], channels=1, image_size=4)
    assert labels == [str(p) for p in paths]
    np.testing.assert_array_equal(images.to_uint8(back), images.to_uint8(x))


def test_npz_is_uint8_nhwc_and_loads_back(tmp_path) -> None:
    x = ramp(n=2, c=3)
    images.save_npz(tmp_path / "s.npz", x)
    with np.load(tmp_path / "s.npz") as f:
        assert f.files == ["samples"]
        array = f["samples"]
    assert array.dtype == np.uint8 and array.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(array, images.to_uint8(x))
    torch.testing.assert_close(load_npz(tmp_path / "s.npz"), x, atol=1 / 127.5, rtol=0)


def test_gif_frames_durations_and_loop(tmp_path) -> None:
    frames = [torch.full((2, 1, 4, 4), v) for v in (-1.0, 0.0, 1.0)]
    images.save_gif(tmp_path / "a.gif", frames, nrow=2, duration_ms=50, hold_last_ms=500)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3 and gif.info["loop"] == 0
        assert gif.size == (2 * 6 + 2, 6 + 2)
        durations, centres = [], []
        for i in range(3):
            gif.seek(i)
            durations.append(gif.info["duration"])
            centres.append(np.asarray(gif.convert("L"))[3, 3])
    assert durations == [50, 50, 500]
    assert centres == [0, 128, 255]
    with pytest.raises(ValueError, match="at least one frame"):
        images.save_gif(tmp_path / "b.gif", [])


def test_stack_rows_interleaves_and_pads() -> None:
    top = torch.arange(5.0).reshape(5, 1, 1, 1) / 10
    bottom = -top - 0.5
    out = images.stack_rows(top, bottom, ncols=3).flatten().tolist()
    expected = [0.0, 0.1, 0.2, -0.5, -0.6, -0.7, 0.3, 0.4, -1.0, -0.8, -0.9, -1.0]
    assert out == pytest.approx(expected)
    with pytest.raises(ValueError, match="one shape"):
        images.stack_rows(top, bottom[:4], 3)


def write_png(path, array: np.ndarray, mode: str) -> None:
    Image.fromarray(array, mode=mode).save(path)


def test_read_images_checks_size_channels_and_mode(tmp_path) -> None:
    write_png(tmp_path / "gray.png", np.zeros((4, 4), np.uint8), "L")
    write_png(tmp_path / "big.png", np.zeros((6, 6), np.uint8), "L")
    write_png(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8), "RGB")
    write_png(tmp_path / "rgba.png", np.zeros((4, 4, 4), np.uint8), "RGBA")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n not really")
    x, labels = images.read_images([tmp_path / "gray.png"], 1, 4)
    assert x.shape == (1, 1, 4, 4) and x.min() == x.max() == -1.0
    assert labels == [str(tmp_path / "gray.png")]
    cases = {
        "big.png": r"big.png holds 6x6 grayscale images; the model takes 4x4 grayscale",
        "rgb.png": r"rgb.png holds 4x4 RGB images; the model takes 4x4 grayscale",
        "rgba.png": r"rgba.png has pixel mode RGBA",
        "bad.png": r"cannot read image .*bad.png",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            images.read_images([tmp_path / name], 1, 4)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        images.read_images([tmp_path / "missing.png"], 1, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found in folder"):
        images.read_images([tmp_path / "empty"], 1, 4)


def test_read_images_takes_npz_arrays(tmp_path) -> None:
    x = ramp(n=2, c=3)
    images.save_npz(tmp_path / "s.npz", x)
    back, labels = images.read_images([tmp_path / "s.npz"], 3, 4)
    assert labels == [f"{tmp_path / 's.npz'}[0]", f"{tmp_path / 's.npz'}[1]"]
    np.testing.assert_array_equal(images.to_uint8(back), images.to_uint8(x))
