"""Tests for the data loaders, on data written by the tests themselves."""

import gzip
import hashlib
import json
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.formats.archives import load_cifar10, load_mnist, load_npz
from ddim.formats.datasets import (
    DataConfig,
    load_dataset,
    load_digits,
    load_image_folder,
    random_flip,
)

MNIST_DIR = Path("/work/shared/data/mnist")


def scaled(values) -> torch.Tensor:
    """uint8 levels -> the [-1, 1] floats every loader must produce."""
    return torch.tensor(values, dtype=torch.float32) / 127.5 - 1.0


# ---------------------------------------------------------------- image folders


def gray_png(path: Path, level: int, size=(6, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, level).save(path)


def test_folder_is_recursive_sorted_and_filters_extensions(tmp_path):
    gray_png(tmp_path / "b.png", 40)
    gray_png(tmp_path / "a" / "z.PNG", 30)
    gray_png(tmp_path / "a.png", 20)
    (tmp_path / "c").mkdir()
    Image.new("RGB", (6, 6), (50, 50, 50)).save(tmp_path / "c" / "d.jpg")
    Image.new("L", (6, 6), 60).save(tmp_path / "e.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    gray_png(tmp_path / "skip.gif", 99)

    x = load_image_folder(tmp_path, image_size=6, channels=1)
    assert x.shape == (5, 1, 6, 6) and x.dtype == torch.float32
    # "a.png" < "a/z.PNG" < "b.png" < "c/d.jpg" < "e.webp" by relative posix path.
    assert torch.equal(x[:, 0, 3, 3], scaled([20, 30, 40, 50, 60]))
    assert torch.equal(x, load_image_folder(tmp_path, image_size=6, channels=1))


def test_folder_center_crops_to_square(tmp_path):
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (10, 0, 20, 10))  # the central 10x10 square is white, the sides black
    img.save(tmp_path / "wide.png")
    tall = Image.new("L", (10, 30), 0)
    tall.paste(255, (0, 10, 10, 20))
    tall.save(tmp_path / "tall.png")
    assert torch.equal(load_image_folder(tmp_path, 10, 1), torch.ones(2, 1, 10, 10))
    assert torch.equal(load_image_folder(tmp_path, 4, 1), torch.ones(2, 1, 4, 4))


def test_folder_resizes_bicubic_and_converts_channels(tmp_path):
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    gray = load_image_folder(tmp_path, 8, 1)
    # Pillow's L = 0.299 R + 0.587 G + 0.114 B, rounded: 255 * 0.299 -> 76.
    assert torch.equal(gray, scaled(76).expand(1, 1, 8, 8))
    rgb = load_image_folder(tmp_path, 8, 3)
    assert torch.equal(rgb[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))

    (tmp_path / "red.png").unlink()
    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(gradient).save(tmp_path / "ramp.png")
    expected = np.asarray(Image.fromarray(gradient).resize((5, 5), Image.BICUBIC))
    got = load_image_folder(tmp_path, 5, 3)
    assert torch.equal(got[0, 1], scaled(expected))
    assert got[0, 0, 0, 0] < got[0, 0, 0, 4]


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=f"image folder {re.escape(str(tmp_path / 'nope'))}"):
        load_image_folder(tmp_path / "nope", 8, 1)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=f"no .*images found in folder {re.escape(str(tmp_path))}"):
        load_image_folder(tmp_path, 8, 1)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_image_folder(tmp_path, 8, 2)

    gray_png(tmp_path / "good.png", 10)
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        load_image_folder(tmp_path, 8, 1)

    (tmp_path / "bad.png").unlink()
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(full)
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png"):
        load_image_folder(tmp_path, 8, 1)


# ---------------------------------------------------------------- MNIST idx


def idx3(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">4I", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_images() -> np.ndarray:
    images = np.random.default_rng(1).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


def test_mnist_raw_and_gzip(tmp_path, mnist_images):
    raw, gz = tmp_path / "images-idx3-ubyte", tmp_path / "images-idx3-ubyte.gz"
    raw.write_bytes(idx3(mnist_images))
    gz.write_bytes(gzip.compress(idx3(mnist_images)))
    x = load_mnist(raw)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], scaled(mnist_images))
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0
    assert torch.equal(load_mnist(gz), x)


def test_mnist_errors_name_the_file(tmp_path, mnist_images):
    good = idx3(mnist_images)
    cases = {
        "labels": (struct.pack(">2I", 2049, 10) + bytes(10), "magic 2049"),
        "short": (good[:-5], "is truncated"),
        "long": (good + b"\0", "longer than its header says"),
        "header": (good[:9], "header needs 16"),
        "empty": (idx3(np.zeros((0, 28, 28))), "holds no images"),
        "badgz": (gzip.compress(good)[:100], "not a valid gzip file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"MNIST file .*{name} .*{message}"):
            load_mnist(tmp_path / name)
    with pytest.raises(ValueError, match="missing.* does not exist"):
        load_mnist(tmp_path / "missing")


# ---------------------------------------------------------------- CIFAR-10 batches


def cifar_batch(path: Path, data: np.ndarray, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    batch = {
        b"batch_label": b"fake batch",
        b"labels": list(range(len(data))),
        b"data": data,
        b"filenames": [b"img%d.png" % i for i in range(len(data))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def test_cifar10_directory_splits_and_layout(tmp_path):
    for i in range(1, 6):
        data = np.full((2, 3072), i, dtype=np.uint8)
        cifar_batch(tmp_path / f"data_batch_{i}", data, protocol=2 if i % 2 else 5)
    first = np.zeros((1, 3072), dtype=np.uint8)
    first[0, :1024], first[0, 1024:2048], first[0, 2048:] = 255, 0, 127  # R, G, B planes
    first[0, 2048 + 32 * 5 + 7] = 200  # blue pixel at row 5, column 7
    cifar_batch(tmp_path / "test_batch", first)

    train = load_cifar10(tmp_path)
    assert train.shape == (10, 3, 32, 32) and train.dtype == torch.float32
    assert torch.equal(train[:, 0, 0, 0], scaled([1, 1, 2, 2, 3, 3, 4, 4, 5, 5]))

    test = load_cifar10(tmp_path, split="test")
    assert test.shape == (1, 3, 32, 32)
    assert torch.equal(test[0, :, 0, 0], scaled([255, 0, 127]))
    assert test[0, 2, 5, 7] == scaled(200) and test[0, 2, 5, 6] == scaled(127)
    assert torch.equal(load_cifar10(tmp_path / "test_batch"), test)


def py2_batch(data: np.ndarray) -> bytes:
    """A protocol-2 pickle as Python 2 / numpy 1 wrote the real CIFAR-10 batches: str
    values are byte strings and the array is rebuilt by numpy.core.multiarray._reconstruct."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    n, d = data.shape
    dtype = (
        b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + s(b"b")
        + b"\x87R(K\x01J"
        + struct.pack("<i", n)
        + b"J"
        + struct.pack("<i", d)
        + b"\x86"
        + dtype
        + b"\x89T"
        + struct.pack("<I", data.size)
        + data.tobytes()
        + b"tb"
    )
    return b"\x80\x02}" + s(b"data") + array + b"s."


def test_cifar10_reads_python2_pickles(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(py2_batch(data))
    x = load_cifar10(tmp_path / "data_batch_1")
    assert torch.equal(x, scaled(data.reshape(3, 3, 32, 32)))


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cifar10_refuses_code_and_bad_content(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": _Exploit(marker)}))
    with pytest.raises(ValueError, match=r"evil is not .*: global \w+\.mkdir is not allowed"):
        load_cifar10(tmp_path / "evil")
    assert not marker.exists()

    (tmp_path / "garbage").write_bytes(b"\x80\x04 definitely not a pickle")
    with pytest.raises(ValueError, match="batch .*garbage is not a readable"):
        load_cifar10(tmp_path / "garbage")
    (tmp_path / "nodata").write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(ValueError, match=r"batch .*nodata has no uint8"):
        load_cifar10(tmp_path / "nodata")
    cifar_batch(tmp_path / "shape", np.zeros((2, 100), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"batch .*shape has data of shape \(2, 100\)"):
        load_cifar10(tmp_path / "shape")
    with pytest.raises(ValueError, match=r"data_batch_1 does not exist"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_cifar10(tmp_path, split="val")


# ---------------------------------------------------------------- npz arrays


def test_npz_layouts_and_scaling(tmp_path):
    rng = np.random.default_rng(2)
    nhwc = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    expected = scaled(nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "nhwc.npz", images=nhwc)
    np.savez(tmp_path / "nchw.npz", nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "ints.npz", x=nhwc.astype(np.int64))
    np.save(tmp_path / "plain.npy", nhwc)
    for name in ("nhwc.npz", "nchw.npz", "ints.npz", "plain.npy"):
        x = load_npz(tmp_path / name)
        assert x.dtype == torch.float32
        assert torch.equal(x, expected), name

    gray = rng.integers(0, 256, (3, 7, 7), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", gray)
    assert torch.equal(load_npz(tmp_path / "gray.npz"), scaled(gray[:, None]))

    floats = rng.uniform(-1, 1, (2, 1, 4, 4))
    floats[0, 0, 0, :2] = -1.0, 1.0
    np.savez(tmp_path / "floats.npz", floats=floats, other=gray)
    x = load_npz(tmp_path / "floats.npz", key="floats")
    assert torch.equal(x, torch.from_numpy(floats.astype(np.float32)))


def test_npz_errors_name_the_file(tmp_path):
    def check(name: str, message: str, key=None, **arrays):
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=f"{name}.* {message}"):
            load_npz(tmp_path / name, key=key)

    u8 = np.zeros((2, 4, 4), np.uint8)
    check("two.npz", r"holds arrays \['a', 'b'\]; pass key=", a=u8, b=u8)
    check("key.npz", r"has no array 'c'; it holds \['a'\]", key="c", a=u8)
    check("range.npz", r"must lie in \[-1, 1\]", a=np.full((1, 4, 4), 1.5))
    check("nan.npz", "no NaN", a=np.full((1, 4, 4), np.nan))
    check("ints.npz", "outside 0..255", a=np.full((1, 4, 4), 256))
    check("bool.npz", "dtype bool", a=np.zeros((1, 4, 4), bool))
    check("ambiguous.npz", "cannot tell the channel axis", a=np.zeros((1, 3, 5, 3), np.uint8))
    check("flat.npz", "expected 3 or 4 dimensions", a=np.zeros((2, 16), np.uint8))
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="cannot read npz file .*objects.npz"):
        load_npz(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match="cannot read npz file .*junk.npz"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", u8)
    with pytest.raises(ValueError, match=r"single\.npy is a single \.npy array; key='a'"):
        load_npz(tmp_path / "single.npy", key="a")
    with pytest.raises(ValueError, match="npz file .*missing.npz does not exist"):
        load_npz(tmp_path / "missing.npz")


# ---------------------------------------------------------------- digits


def test_digits_values_and_resize():
    pytest.importorskip("sklearn")
    x = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # The first digit's top row is 0 0 5 13 9 1 0 0 (values 0..16 -> v / 8 - 1).
    assert torch.equal(x[0, 0, 0], torch.tensor([0, 0, 5, 13, 9, 1, 0, 0]) / 8.0 - 1.0)
    big = load_digits(image_size=16)
    assert big.shape == (1797, 1, 16, 16)
    assert big.min() >= -1.0 and big.max() <= 1.0
    assert abs(big.mean().item() - x.mean().item()) < 0.02


def test_digits_without_sklearn_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="needs scikit-learn"):
        load_digits()


# ---------------------------------------------------------------- config and dispatch


def test_data_config_round_trip(tmp_path):
    cfg = DataConfig(kind="mnist", image_size=28, channels=1, path=tmp_path / "f", stop=9000)
    assert cfg.path == str(tmp_path / "f")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert DataConfig.from_dict(d) == cfg
    assert d == {
        "kind": "mnist",
        "image_size": 28,
        "channels": 1,
        "path": str(tmp_path / "f"),
        "random_flip": False,
        "start": None,
        "stop": 9000,
        "labels": None,
        "preprocess": "center-crop",
        "strict": False,
        "workers": "auto",
        "key": None,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "svhn", "path": "x"}, "kind must be one of folder, packed, mnist"),
        ({"kind": "mnist"}, "kind 'mnist' needs a path"),
        ({"kind": "digits", "path": "x"}, "kind 'digits' takes no path"),
        ({"kind": "mnist", "path": "x", "image_size": 0}, "image_size must be positive"),
        ({"kind": "mnist", "path": "x", "channels": 2}, "channels must be 1 or 3"),
        ({"kind": "mnist", "path": "x", "random_flip": "yes"}, "random_flip must be a bool"),
        ({"kind": "mnist", "path": "x", "start": -1}, "start must be a non-negative"),
        ({"kind": "mnist", "path": "x", "start": 5, "stop": 5}, "start=5 must be below stop=5"),
        ({"kind": "mnist", "path": "x", "key": "a"}, "key applies only to kind 'npz'"),
        (
            {"kind": "folder", "path": "x", "labels": "y.npz"},
            "labels of a folder must be 'folders'",
        ),
        ({"kind": "packed", "path": "x", "labels": "folders"}, "labels applies only to kinds"),
        ({"kind": "folder", "path": "x", "preprocess": "crop"}, "preprocess must be one of"),
        ({"kind": "folder", "path": "x", "strict": 1}, "strict must be a bool"),
        ({"kind": "folder", "path": "x", "workers": -1}, "workers must be 'auto' or a non-neg"),
        ({"kind": "folder", "path": "x", "workers": "many"}, "workers must be 'auto' or a non"),
    ],
)
def test_data_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{"image_size": 28, "channels": 1, **kwargs})


def test_data_config_from_dict_errors():
    with pytest.raises(ValueError, match="unknown DataConfig keys: flip, size"):
        DataConfig.from_dict({"kind": "digits", "size": 8, "flip": True})
    with pytest.raises(ValueError, match="missing required keys: image_size, channels"):
        DataConfig.from_dict({"kind": "digits"})


def test_load_dataset_slices_and_checks_shape(tmp_path, mnist_images):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx3(mnist_images))

    def mnist(**changes) -> DataConfig:
        return DataConfig(
            **{"kind": "mnist", "image_size": 28, "channels": 1, "path": path, **changes}
        )

    assert torch.equal(load_dataset(mnist(start=2, stop=7)), scaled(mnist_images[2:7, None]))
    assert load_dataset(mnist()).shape[0] == 10
    where = re.escape(str(path))
    with pytest.raises(ValueError, match=f"stop=11 exceeds the 10 images in {where}"):
        load_dataset(mnist(stop=11))
    with pytest.raises(ValueError, match=r"start=10 is past the 10 images"):
        load_dataset(mnist(start=10))
    with pytest.raises(ValueError, match=rf"{where} have .* \(1, 28, 28\), .* \(1, 32, 32\)"):
        load_dataset(mnist(image_size=32))


def test_load_dataset_dispatches_every_kind(tmp_path):
    gray_png(tmp_path / "imgs" / "a.png", 0, size=(12, 12))
    folder_cfg = DataConfig(kind="folder", image_size=4, channels=3, path=tmp_path / "imgs")
    folder = load_dataset(folder_cfg)
    assert torch.equal(folder, -torch.ones(1, 3, 4, 4))

    np.savez(tmp_path / "d.npz", a=np.zeros((3, 3, 8, 8), np.uint8), b=np.zeros(1))
    npz = load_dataset(
        DataConfig(kind="npz", image_size=8, channels=3, path=tmp_path / "d.npz", key="a", start=1)
    )
    assert npz.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"d\.npz have shape"):
        load_dataset(
            DataConfig(kind="npz", image_size=8, channels=1, path=tmp_path / "d.npz", key="a")
        )

    cifar_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8))
    cifar = load_dataset(
        DataConfig(kind="cifar10", image_size=32, channels=3, path=tmp_path / "test_batch")
    )
    assert cifar.shape == (2, 3, 32, 32)

    pytest.importorskip("sklearn")
    digits = load_dataset(DataConfig(kind="digits", image_size=8, channels=1, stop=100))
    assert digits.shape == (100, 1, 8, 8)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="real MNIST test split not present")
def test_real_mnist_test_split():
    path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    full = load_mnist(path)
    assert full.shape == (10000, 1, 28, 28)
    levels = ((full + 1.0) * 127.5).round().to(torch.uint8).numpy()
    raw = struct.pack(">4I", 2051, 10000, 28, 28) + levels.tobytes()
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    train = load_dataset(DataConfig(kind="mnist", image_size=28, channels=1, path=path, stop=9000))
    assert train.shape == (9000, 1, 28, 28) and torch.equal(train, full[:9000])


# ---------------------------------------------------------------- random flip


def test_random_flip_is_deterministic_and_flips_the_drawn_half():
    x = torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    out = random_flip(x, torch.Generator().manual_seed(7))
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(7)))
    mask = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.5
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
    assert 20 < int(mask.sum()) < 44
    assert not torch.equal(out, random_flip(x, torch.Generator().manual_seed(8)))


def test_random_flip_rejects_non_batches():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) batch, got shape \(3, 5, 5\)"):
        random_flip(torch.zeros(3, 5, 5), torch.Generator())
