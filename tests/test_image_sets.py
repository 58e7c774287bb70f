"""Training sets read image by image: folders (lazy, labelled, with bad files skipped),
the papers' preprocessings, packs and their manifests, and the step loader's workers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.formats.datasets import DataConfig, load_image_folder, open_image_set
from ddim.formats.image_sets import ArraySet, FolderSet, Reading, scan_folder, to_model_range
from ddim.formats.packed import PackedSet, pack_folder, verify_packed
from ddim.formats.preprocess import CELEBA_BOX, preprocess
from ddim.train.batches import DataOrder, step_indices
from ddim.train.loader import StepShares, own_part, step_loader

RGB8 = Reading(8, 3, "center-crop")


def coded(width: int, height: int) -> Image.Image:
    """An RGB image whose red is the row and green the column of each pixel (mod 256)."""
    rows, cols = np.mgrid[0:height, 0:width]
    array = np.stack([rows % 256, cols % 256, np.full_like(rows, 7)], -1).astype(np.uint8)
    return Image.fromarray(array)


def noise_png(path: Path, seed: int, size: int = 8, mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def labelled_folder(root: Path) -> dict[str, np.ndarray]:
    """Seven 8x8 RGB images in classes cat (2) and dog (5, one in a nested folder)."""
    names = ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "dog/e.png", "dog/f.png"]
    names.append("dog/deep/g.png")
    return {name: noise_png(root / name, seed) for seed, name in enumerate(names)}


# ---------------------------------------------------------------- folders


def test_a_folder_set_reads_each_image_when_asked(tmp_path):
    pixels = [noise_png(tmp_path / f"{k}.png", k) for k in range(3)]
    images = FolderSet(scan_folder(tmp_path, RGB8), RGB8)
    assert len(images) == 3 and images.shape == (3, 8, 8) and images.labels is None
    assert torch.equal(images[1], torch.from_numpy(pixels[1].transpose(2, 0, 1).copy()))
    assert images[1].dtype == torch.uint8
    fresh = noise_png(tmp_path / "1.png", 99)  # the set holds names, not pixels
    assert torch.equal(images[1], torch.from_numpy(fresh.transpose(2, 0, 1).copy()))
    x = to_model_range(images.batch(torch.tensor([2, 0])))
    assert torch.equal(x, torch.from_numpy(np.stack([pixels[2], pixels[0]])).permute(0, 3, 1, 2)
                       .float() / 127.5 - 1)  # fmt: skip


def test_class_subfolders_are_labels_in_sorted_order(tmp_path):
    pixels = labelled_folder(tmp_path)
    cfg = DataConfig(kind="folder", image_size=8, channels=3, path=tmp_path, labels="folders")
    images, scan = open_image_set(cfg, num_classes=2)
    assert images.classes == ("cat", "dog") and scan.classes == ("cat", "dog")
    assert images.labels.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert images.names[4:] == ["dog/deep/g.png", "dog/e.png", "dog/f.png"]
    expected = pixels["dog/deep/g.png"].transpose(2, 0, 1)
    assert torch.equal(images[4], torch.from_numpy(expected.copy()))
    with pytest.raises(ValueError, match=r"lie in 0\.\.1, outside 0\.\.0"):
        open_image_set(cfg, num_classes=1)
    sliced, _ = open_image_set(DataConfig(**{**cfg.to_dict(), "start": 1, "stop": 3}), 2)
    assert sliced.labels.tolist() == [0, 1] and torch.equal(sliced[1], images[2])


def test_labels_need_class_subfolders(tmp_path):
    noise_png(tmp_path / "loose.png", 0)
    cfg = DataConfig(kind="folder", image_size=8, channels=3, path=tmp_path, labels="folders")
    with pytest.raises(ValueError, match=r"holds images outside them \(e\.g\. loose\.png\)"):
        open_image_set(cfg, num_classes=2)
    (tmp_path / "loose.png").unlink()
    with pytest.raises(ValueError, match="has no subfolders"):
        open_image_set(cfg, num_classes=2)
    (tmp_path / "empty-class").mkdir()
    with pytest.raises(ValueError, match="no .*images found in folder"):
        open_image_set(cfg, num_classes=2)
    unlabelled = DataConfig(kind="folder", image_size=8, channels=3, path=tmp_path)
    with pytest.raises(ValueError, match="needs labels: set data.labels"):
        open_image_set(unlabelled, num_classes=2)


def test_unreadable_images_are_skipped_and_named_or_refused_when_strict(tmp_path):
    for k in range(3):
        noise_png(tmp_path / f"ok{k}.png", k)
    full = tmp_path / "ok0.png"
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:60])  # a truncated PNG
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    for k in range(6):
        (tmp_path / f"z{k}.webp").write_bytes(b"")
    cfg = DataConfig(kind="folder", image_size=8, channels=3, path=tmp_path)
    images, scan = open_image_set(cfg)
    assert len(images) == 3 and scan.found == 11 and len(scan.skipped) == 8
    assert [f.name for f, _ in scan.skipped[:2]] == ["cut.png", "junk.jpg"]
    line = scan.summary()
    assert "\n" not in line and line.startswith(f"{tmp_path}: found 11 images, skipped 8")
    assert "cut.png" in line and "junk.jpg" in line and "and 3 more" in line
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png.*data\.strict is on"):
        open_image_set(DataConfig(**{**cfg.to_dict(), "strict": True}))
    assert len(open_image_set(DataConfig(**{**cfg.to_dict(), "workers": 2}))[0]) == 3
    for k in range(3):
        (tmp_path / f"ok{k}.png").write_bytes(b"gone")
    with pytest.raises(ValueError, match=r"none of the 11 images .* can be read"):
        open_image_set(cfg)


def test_mixed_modes_and_sizes_become_the_configured_squares(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "a_rgba.png")
    Image.new("LA", (9, 8), (40, 255)).save(tmp_path / "b_la.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "c_p.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "d_16.png")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "e_16.png")
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(tmp_path / "f_cmyk.jpg", quality=100)
    Image.new("1", (12, 8), 1).save(tmp_path / "g_1.png")
    assert Image.open(tmp_path / "d_16.png").mode.startswith("I")
    rgb = FolderSet(scan_folder(tmp_path, RGB8, strict=True), RGB8)
    first = [rgb[k][:, 0, 0].tolist() for k in range(len(rgb))]
    # Alpha is dropped, not blended; 16 bits scale by 255 / 65535 (32768 -> 127.5 -> 128).
    assert first[:5] == [[10, 20, 30], [40] * 3, [50, 60, 70], [255] * 3, [128] * 3]
    assert first[6] == [255] * 3 and all(abs(v - 255) <= 1 for v in first[5])
    gray = Reading(4, 1, "center-crop")
    assert FolderSet(scan_folder(tmp_path, gray, strict=True), gray).batch(
        torch.arange(7)).shape == (7, 1, 4, 4)  # fmt: skip


# ---------------------------------------------------------------- the papers' preprocessing


def test_celeba_crop_is_the_official_box():
    img = coded(178, 218)  # CelebA's aligned faces are 178 wide, 218 high
    out = preprocess(img, 128, 3, "celeba")  # no resize: the box itself
    top, left, h, w = CELEBA_BOX
    assert (top, left, h, w) == (121 - 64, 89 - 64, 128, 128)
    assert out[0, :, 0].tolist() == list(range(57, 185))  # rows 57..184
    assert out[1, 0, :].tolist() == list(range(25, 153))  # columns 25..152
    small = preprocess(img, 64, 3, "celeba")
    box = img.crop((25, 57, 153, 185)).resize((64, 64), Image.BILINEAR)
    assert np.array_equal(small, np.asarray(box).transpose(2, 0, 1))
    with pytest.raises(ValueError, match="needs at least 153x185 pixels, got 100x100"):
        preprocess(coded(100, 100), 64, 3, "celeba")


def test_resize_crop_is_torchvisions_resize_then_center_crop():
    # No resize needed (the short side is the size): the crop's top is round((41-20)/2) = 10
    # with Python's rounding, which torchvision's CenterCrop uses.
    out = preprocess(coded(20, 41), 20, 3, "resize-crop")
    assert out[0, :, 0].tolist() == list(range(10, 30))
    wide = preprocess(coded(45, 20), 20, 3, "resize-crop")  # left = round(25 / 2) = 12
    assert wide[1, 0, :].tolist() == list(range(12, 32))
    # Resize of the short side to 10: 20x50 -> 10x25 (int(10 * 50 / 20)), top = round(7.5) = 8.
    img = coded(20, 50)
    expected = np.asarray(img.resize((10, 25), Image.BILINEAR))[8:18].transpose(2, 0, 1)
    assert np.array_equal(preprocess(img, 10, 3, "resize-crop"), expected)
    centre = preprocess(coded(20, 50), 10, 3, "center-crop")  # the other order differs
    assert not np.array_equal(centre, expected)


# ---------------------------------------------------------------- packs


def test_a_pack_holds_what_the_folder_reads(tmp_path):
    labelled_folder(tmp_path / "src")
    (tmp_path / "src" / "dog" / "bad.png").write_bytes(b"broken")
    manifest = pack_folder(tmp_path / "src", tmp_path / "pack", RGB8, labelled=True,
                           shard_images=3)  # fmt: skip
    assert manifest["count"] == 7 and [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["source"]["found"] == 8 and manifest["source"]["skipped"][0][0] == "dog/bad.png"
    assert manifest["labels"]["classes"] == ["cat", "dog"]
    packed = PackedSet(tmp_path / "pack")
    folder = FolderSet(scan_folder(tmp_path / "src", RGB8, labelled=True), RGB8)
    assert len(packed) == len(folder) == 7
    assert torch.equal(packed.batch(torch.arange(7)), folder.batch(torch.arange(7)))
    assert torch.equal(packed.labels, folder.labels) and packed.classes == ("cat", "dog")
    assert verify_packed(tmp_path / "pack") == 7
    cfg = DataConfig(kind="packed", image_size=8, channels=3, path=tmp_path / "pack", start=2)
    images, scan = open_image_set(cfg, num_classes=2)
    assert scan is None and images.labels.tolist() == [1] * 5
    assert torch.equal(images[0], folder[2])
    with pytest.raises(ValueError, match=r"have shape .* \(3, 8, 8\), config expects \(3, 4, 4\)"):
        open_image_set(DataConfig(kind="packed", image_size=4, channels=3, path=tmp_path / "pack"))
    again = pack_folder(tmp_path / "src", tmp_path / "pack2", RGB8, labelled=True)
    assert again["digest"] != manifest["digest"]  # other shards, same images
    assert again["source"]["digest"] == manifest["source"]["digest"]
    assert PackedSet(tmp_path / "pack2").fingerprint() != packed.fingerprint()
    with pytest.raises(ValueError, match="already exists; remove it or pick another --out"):
        pack_folder(tmp_path / "src", tmp_path / "pack", RGB8)


def test_a_failed_pack_leaves_nothing(tmp_path):
    noise_png(tmp_path / "src" / "a.png", 0)
    (tmp_path / "src" / "b.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"b\.png.*data\.strict is on"):
        pack_folder(tmp_path / "src", tmp_path / "pack", RGB8, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    unlabelled = pack_folder(tmp_path / "src", tmp_path / "pack", RGB8)
    assert unlabelled["labels"] is None
    cfg = DataConfig(kind="packed", image_size=8, channels=3, path=tmp_path / "pack")
    with pytest.raises(ValueError, match="holds no labels; pack its folder again with --labels"):
        open_image_set(cfg, num_classes=2)


def test_a_pack_that_does_not_match_its_manifest_is_refused_in_one_line(tmp_path):
    for k in range(4):
        noise_png(tmp_path / "src" / f"{k}.png", k)
    pack = tmp_path / "pack"
    pack_folder(tmp_path / "src", pack, RGB8, shard_images=2)
    shard = pack / "images-00001.npy"
    original = shard.read_bytes()

    def refused(match: str, *, verify: bool = False) -> None:
        with pytest.raises(ValueError, match=match) as err:
            verify_packed(pack) if verify else PackedSet(pack)
        assert "\n" not in str(err.value)

    shard.write_bytes(original[:-5])
    refused("images-00001.npy cannot be read")
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    PackedSet(pack)  # the headers agree: only hashing finds it
    refused("images-00001.npy differs from its manifest", verify=True)
    np.save(shard, np.zeros((3, 3, 8, 8), np.uint8))
    refused(r"images-00001.npy holds uint8 \(3, 3, 8, 8\), the manifest says uint8 \(2, 3, 8, 8\)")
    shard.unlink()
    refused("images-00001.npy is missing")
    shard.write_bytes(original)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["count"] = 5
    (pack / "manifest.json").write_text(json.dumps(manifest))
    refused("does not add up")
    manifest["count"], manifest["shards"][0]["sha256"] = 4, "0" * 64
    (pack / "manifest.json").write_text(json.dumps(manifest))
    refused("has been edited")
    (pack / "manifest.json").write_text("{")
    refused("is not a manifest of a packed image set")
    (pack / "manifest.json").unlink()
    refused(re.escape(f"{pack} is not a packed image set: it has no manifest.json"))


# ---------------------------------------------------------------- fingerprints


def test_fingerprints_follow_the_content(tmp_path):
    for k in range(3):
        noise_png(tmp_path / f"{k}.png", k)
    before = FolderSet(scan_folder(tmp_path, RGB8), RGB8).fingerprint()
    assert FolderSet(scan_folder(tmp_path, RGB8), RGB8).fingerprint() == before
    assert FolderSet(scan_folder(tmp_path, RGB8), RGB8).sliced(1, None).fingerprint() != before
    noise_png(tmp_path / "1.png", 5, size=9)
    assert FolderSet(scan_folder(tmp_path, RGB8), RGB8).fingerprint() != before
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = x.clone()
    y[3, 0, 1, 1] = 1
    assert ArraySet(x, "a").fingerprint() != ArraySet(y, "a").fingerprint()
    assert (
        ArraySet(x, "a").sliced(0, 3).fingerprint() == ArraySet(y, "a").sliced(0, 3).fingerprint()
    )


# ---------------------------------------------------------------- the step loader


def test_a_sliced_set_reads_only_its_own_rows():
    """Position i of rows 2..5 is row 2 + i, for one image and for a batch; a position
    outside the slice is an IndexError, not a neighbour's image."""
    x = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    part = ArraySet(x, "a").sliced(2, 5)
    assert part[0][0, 0, 0].item() == 2
    assert part.batch(torch.tensor([0, 2]))[:, 0, 0, 0].tolist() == [2, 4]
    for bad in ([3], [-1], [0, 5]):
        with pytest.raises(IndexError, match="outside a set of 3"):
            part.batch(torch.tensor(bad))


def test_workers_and_ranks_read_exactly_the_steps_batches(tmp_path):
    labelled_folder(tmp_path / "src")
    images = FolderSet(scan_folder(tmp_path / "src", RGB8, labelled=True), RGB8)
    order = DataOrder(len(images), seed=3)
    whole = StepShares(images, order, 4, slice(None), labelled=True)
    inline = list(step_loader(whole, 3, 8, workers=0, pin_memory=False))
    pooled = list(step_loader(whole, 3, 8, workers=2, pin_memory=False))
    assert [s for s, _, _ in pooled] == list(range(3, 9))
    for (s, x, y), (_, x2, y2) in zip(inline, pooled, strict=True):
        index = step_indices(order, s, 4)
        assert torch.equal(x, images.batch(index)) and torch.equal(x2, x)
        assert torch.equal(y, images.labels[index]) and torch.equal(y2, y)
    halves = [
        list(step_loader(StepShares(images, order, 4, own_part(4, r, 2), True), 3, 8, 1, False))
        for r in range(2)
    ]
    for (_, x, y), (_, a, ya), (_, b, yb) in zip(inline, *halves, strict=True):
        assert torch.equal(torch.cat([a, b]), x) and torch.equal(torch.cat([ya, yb]), y)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_spoilt_after_the_scan_stops_the_run_in_one_line(tmp_path, workers):
    for k in range(8):
        noise_png(tmp_path / f"{k}.png", k)
    images = FolderSet(scan_folder(tmp_path, RGB8), RGB8)
    (tmp_path / "3.png").write_bytes(b"gone")
    shares = StepShares(images, DataOrder(8, 0), 8, slice(None), False)
    with pytest.raises(ValueError) as err:
        list(step_loader(shares, 1, 2, workers, False))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot read image {tmp_path / '3.png'}")
    assert message.endswith("(the folder changed after it was scanned)")


def test_the_eager_folder_loader_is_strict(tmp_path):
    noise_png(tmp_path / "a.png", 0)
    (tmp_path / "b.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        load_image_folder(tmp_path, 8, 3)


# ---------------------------------------------------------------- ddim data


def test_ddim_data_pack_and_verify(tmp_path):
    from test_cli import ok, run

    labelled_folder(tmp_path / "src")
    (tmp_path / "src" / "cat" / "bad.jpg").write_bytes(b"junk")
    out = ok("data", "pack", tmp_path / "src", "--size", "8", "--out", tmp_path / "pack",
             "--labels", "--workers", "0").output  # fmt: skip
    assert f"{tmp_path / 'src'}: found 8 images, skipped 1" in out
    assert "skipped cat/bad.jpg: cannot read image" in out
    assert "packed 7 images in 2 classes into 1 shard(s)" in out
    assert ok("data", "verify", tmp_path / "pack").output.startswith(f"{tmp_path / 'pack'}: 7")
    for args, message in [
        (["pack", tmp_path / "src", "--size", "8", "--out", tmp_path / "pack"], "already exists"),
        (["pack", tmp_path / "src", "--size", "8", "--out", tmp_path / "p2", "--strict"],
         "data.strict is on"),
        (["verify", tmp_path / "src"], "is not a packed image set"),
    ]:  # fmt: skip
        result = run("data", *args)
        assert result.exit_code == 2 and message in result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "p2").exists()
