"""Hostile inputs (issue 29): every malformed file is one ``error:`` line and exit status 2,
with no traceback, no warning and no half-written output; sizes are judged from headers
before anything is read or decoded; and a sample folder never mixes two models."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from click.testing import CliRunner, Result
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import ddim
from ddim.cli import main
from ddim.formats import images
from ddim.formats.archives import load_npz
from ddim.formats.checkpoint import BUNDLED, CheckpointError, load_checkpoint, read_metadata
from ddim.formats.checkpoint_meta import FORMAT_VERSION, digest
from ddim.models.unet import UNetConfig
from ddim.train.runtime import Distributed
from ddim.workflows.sample_folder import MANIFEST

SCHEDULE = ddim.NoiseSchedule.linear(100, 1e-3, 0.05)
DROP = object()  # a metadata field to remove
ABSENT_GPU = "cuda:7"


class Fields(dict):
    """Fields to change in the ``model_config`` that a checkpoint already has."""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def ckpt(root, perturbed_unet, write_checkpoint) -> Path:
    return write_checkpoint(root / "tiny.safetensors", perturbed_unet().state_dict(), SCHEDULE)


def with_metadata(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of the checkpoint ``src`` with its header's metadata edited: each field of
    ``changes`` takes that JSON value (a string, as safetensors writes them, or any value a
    hand-edited header may hold), is removed where the value is ``DROP``, or for
    :class:`Fields` is the file's own ``model_config`` with those fields changed."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    for key, value in changes.items():
        if value is DROP:
            meta.pop(key)
        elif isinstance(value, Fields):
            meta[key] = json.dumps({**json.loads(meta[key]), **value})
        else:
            meta[key] = value
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return dst


def invoke(*args: object) -> tuple[Result, list[warnings.WarningMessage]]:
    """Run ``ddim`` in-process: its result and every warning it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    return result, caught


def refused(*args: object, expected: tuple[str, ...] = ()) -> Result:
    """Run ``ddim``; assert that it failed with one ``error:`` line holding each of
    ``expected``, exit status 2, no traceback and no warning."""
    result, caught = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert [str(w.message) for w in caught] == []
    for text in expected:
        assert text in result.stderr, result.stderr
    return result


# ---------------------------------------------------------------- malformed metadata

CASES = [  # (id, changes to the metadata, what the error must name besides the file)
    ("config-list", {"model_config": "[1, 2]"}, "model_config"),
    ("config-null", {"model_config": "null"}, "model_config"),
    ("config-string", {"model_config": '"abc"'}, "model_config"),
    ("config-not-json", {"model_config": "{"}, "model_config"),
    ("config-unquoted", {"model_config": {"ch": 32}}, "model_config"),
    ("config-missing", {"model_config": DROP}, "model_config"),
    ("ch-mult-null", {"model_config": Fields(ch_mult=None)}, "ch_mult"),
    ("ch-mult-string", {"model_config": Fields(ch_mult="12")}, "ch_mult"),
    ("ch-mult-number", {"model_config": Fields(ch_mult=2)}, "ch_mult"),
    ("attn-null", {"model_config": Fields(attn_resolutions=None)}, "attn_resolutions"),
    ("dropout-string", {"model_config": Fields(dropout="0.1")}, "dropout"),
    ("dropout-nan", {"model_config": Fields(dropout=float("nan"))}, "dropout"),
    ("image-size-zero", {"model_config": Fields(image_size=0)}, "image_size"),
    ("config-unknown-key", {"model_config": Fields(heads=4)}, "heads"),
    ("config-wider", {"model_config": Fields(ch=64)}, "shape mismatches"),
    ("config-deep", {"model_config": Fields(num_res_blocks=10**6)}, "do not fit"),
    ("config-huge", {"model_config": Fields(ch=32 * 10**30)}, "do not fit"),
    ("extra-list", {"extra": "[1, 2]"}, "extra"),
    ("extra-null", {"extra": "null"}, "extra"),
    ("schedule-list", {"schedule": "[]"}, "schedule"),
    ("schedule-length", {"schedule": '{"kind": "linear", "num_timesteps": 5}'}, "schedule"),
    ("version-text", {"format_version": "abc"}, "format_version"),
    ("version-zero", {"format_version": "0"}, "format_version"),
    ("version-future", {"format_version": "99"}, "format version 99"),
    ("step-negative", {"step": "-1"}, "step"),
    ("step-fraction", {"step": "1.5"}, "step"),
    ("step-unquoted", {"step": 3}, "step"),
    ("shape-huge", {"data_shape": "[1, 100000, 100000]"}, "data_shape"),
    ("shape-short", {"data_shape": "[1, 8]"}, "data_shape"),
    ("shape-bool", {"data_shape": "[true, 8, 8]"}, "data_shape"),
    ("sha-not-hex", {"sha256": "xyz"}, "sha256"),
    ("ddim-version-missing", {"ddim_version": DROP}, "ddim_version"),
    ("format-list", {"format": ["ddim-checkpoint"]}, "not a ddim checkpoint"),
]


@pytest.mark.parametrize("command", ["info", "sample"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_metadata_is_one_line_naming_the_file_and_field(
    ckpt, tmp_path, case, command
) -> None:
    name, changes, field = case
    bad = with_metadata(ckpt, tmp_path / f"{name}.safetensors", **changes)
    out = tmp_path / "s.png"
    if command == "info":
        result = refused("info", bad, expected=(str(bad), field))
    else:
        result = refused("sample", "--ckpt", bad, "-n", 1, "--out", out, expected=(str(bad), field))
    assert result.stdout == "" and not out.exists()


def test_metadata_that_is_a_json_list_is_not_a_checkpoint(ckpt, tmp_path) -> None:
    raw = ckpt.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = list(header["__metadata__"].values())
    text = json.dumps(header).encode()
    bad = tmp_path / "list.safetensors"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    refused("info", bad, expected=(str(bad), "not a ddim checkpoint"))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELDS = ["format_version", "ddim_version", "model_config", "schedule", "data_shape", "step",
          "extra", "sha256"]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(FIELDS), value=JSON.map(json.dumps) | st.text(max_size=12) | JSON)
def test_fuzzed_metadata_is_read_or_refused_as_a_checkpoint_error(ckpt, root, field, value):
    """Whatever one field holds, reading the file succeeds or raises a CheckpointError
    that names it."""
    bad = with_metadata(ckpt, root / "fuzzed.safetensors", **{field: value})
    for read in (read_metadata, load_checkpoint):
        try:
            read(bad)
        except CheckpointError as e:
            assert str(bad) in str(e)


def _int(v: object) -> bool:
    return type(v) is int


def _ints(v: object, least: int) -> bool:
    return isinstance(v, list) and all(_int(x) and x >= least for x in v)


#: Whether a JSON value is right for a UNetConfig field on its own (the class docstring and
#: its types, written out independently of the checks in ``__post_init__``).
VALID = {
    "in_channels": lambda v: _int(v) and v >= 1,
    "out_channels": lambda v: _int(v) and v >= 1,
    "ch": lambda v: _int(v) and v >= 1 and v % 32 == 0,  # GroupNorm's 32 groups
    "ch_mult": lambda v: _ints(v, 1) and len(v) > 0,
    "num_res_blocks": lambda v: _int(v) and v >= 1,
    "attn_resolutions": lambda v: _ints(v, 1),
    "dropout": lambda v: type(v) in (int, float) and 0 <= v < 1,
    "resamp_with_conv": lambda v: type(v) is bool,
    "image_size": lambda v: _int(v) and v >= 1,
    "num_classes": lambda v: _int(v) and v >= 0,
    "prediction": lambda v: v in ("eps", "v", "x"),
    "sampling_plan": lambda v: (
        v is None or (_ints(v, 0) and len(v) > 0 and v == sorted(set(v), reverse=True))
    ),
}
#: Right values of each field, so that the fuzzing also reaches configs that are accepted.
GOOD = {
    "in_channels": [1, 3], "out_channels": [1, 3], "ch": [32, 64],
    "ch_mult": [[1], [1, 2], [1, 2, 2, 2]], "num_res_blocks": [1, 2],
    "attn_resolutions": [[], [4], [16]], "dropout": [0, 0.0, 0.5],
    "resamp_with_conv": [True, False], "image_size": [8, 32], "num_classes": [0, 10],
    "prediction": ["eps", "v", "x"], "sampling_plan": [None, [999, 500, 0]],
}  # fmt: skip
DEFAULTS = {f.name: f.default for f in dataclasses.fields(UNetConfig)}


def refused_fields(fields: dict[str, object]) -> set[str]:
    """The fields a ValueError about ``fields`` may name: those wrong on their own, else the
    one that the levels of ``ch_mult`` put at odds with the rest (none: the config is fine)."""
    wrong = {name for name, value in fields.items() if not VALID[name](value)}
    if wrong:
        return wrong
    config = {**DEFAULTS, **fields}
    levels = len(config["ch_mult"])
    if config["image_size"] % 2 ** (levels - 1):
        return {"image_size"}
    sizes = {config["image_size"] // 2**i for i in range(levels)}
    return set() if set(config["attn_resolutions"]) <= sizes else {"attn_resolutions"}


@settings(max_examples=200, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {}, optional={name: JSON | st.sampled_from(GOOD[name]) for name in VALID}
    )
)
@example(fields={})
@example(fields={"ch": 48})  # not a multiple of GroupNorm's 32 groups
@example(fields={"dropout": 1.0})
@example(fields={"image_size": 8})  # no 16 x 16 level for the default attention
@example(fields={"ch_mult": [1, 2, 2, 2, 2, 2, 2]})  # 32 is not divisible by 2 ** 6
@example(fields={"ch_mult": [1, 2], "image_size": 8, "attn_resolutions": [4], "dropout": 0})
def test_fuzzed_unet_configs_are_built_as_given_or_refused_naming_a_wrong_field(fields) -> None:
    """A config from JSON fields is either the one they describe (lists as tuples, other
    fields at their defaults) or a one-line ValueError that names a field that is wrong."""
    wrong = refused_fields(fields)
    if wrong:
        named = "|".join(sorted(wrong))
        with pytest.raises(ValueError, match=rf"^UNetConfig\.({named})\b") as raised:
            UNetConfig.from_dict(fields)
        assert "\n" not in str(raised.value)
        return
    config = UNetConfig.from_dict(fields)
    given_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    assert {name: getattr(config, name) for name in DEFAULTS} == {**DEFAULTS, **given_fields}
    assert UNetConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ch_mult": None}, "ch_mult"),
        ({"ch_mult": "12"}, "ch_mult"),
        ({"attn_resolutions": 16}, "attn_resolutions"),
        ({"dropout": None}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"dropout": True}, "dropout"),
        ({"resamp_with_conv": "yes"}, "resamp_with_conv"),
    ],
)
def test_unet_config_refuses_wrong_types_with_value_errors(fields, named) -> None:
    with pytest.raises(ValueError, match=f"UNetConfig.{named}"):
        UNetConfig(**fields)


@pytest.mark.parametrize("d", [None, [1, 2], "abc"])
def test_unet_config_from_something_not_a_mapping(d) -> None:
    with pytest.raises(ValueError, match="needs a mapping"):
        UNetConfig.from_dict(d)


# ---------------------------------------------------------------- the digest and versions


def test_an_edited_description_fails_the_digest(ckpt, tmp_path) -> None:
    assert read_metadata(ckpt)["format_version"] == FORMAT_VERSION == 2
    edited = with_metadata(ckpt, tmp_path / "e.safetensors", model_config=Fields(dropout=0.5))
    assert read_metadata(edited)["model_config"]["dropout"] == 0.5  # a valid description...
    with pytest.raises(CheckpointError, match=r"e.safetensors is corrupt: .*model_config"):
        load_checkpoint(edited)  # ...but not the one the file was written with
    refused("sample", "--ckpt", edited, "-n", 1, expected=(str(edited), "corrupt"))


def test_version_1_files_are_verified_by_their_tensors_as_before(ckpt, tmp_path) -> None:
    tensors = safetensors.torch.load_file(ckpt)
    v1 = with_metadata(ckpt, tmp_path / "v1.safetensors", format_version="1",
                       sha256=digest(tensors))  # fmt: skip
    assert load_checkpoint(v1).step == 0 and read_metadata(v1)["format_version"] == 1
    with pytest.raises(CheckpointError, match="its tensors do not match"):
        load_checkpoint(with_metadata(ckpt, tmp_path / "v1bad.safetensors", format_version="1"))


BUNDLED_VERSIONS = {"mnist": 1, "mnist-cond": 2, "mnist-4step": 2, "mnist-2step": 2}


@pytest.mark.parametrize(("name", "version"), BUNDLED_VERSIONS.items())
def test_the_bundled_models_of_both_versions_load(name, version) -> None:
    """mnist was written in format 1 (its digest covers the tensors only), the others in 2."""
    assert set(BUNDLED) == set(BUNDLED_VERSIONS)
    assert read_metadata(name)["format_version"] == version
    loaded = load_checkpoint(name)
    assert loaded.data_shape == (1, 28, 28) and loaded.schedule.num_timesteps == 1000


# ---------------------------------------------------------------- header bombs


def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def arrays(root) -> dict[str, Path]:
    """Arrays whose headers claim more than they hold, and arrays of no images."""
    bomb = npy_header((10**8, 28, 28)) + bytes(100)  # claims 73 GiB
    (root / "bomb.npy").write_bytes(bomb)
    (root / "short.npy").write_bytes(npy_header((3, 8, 8)) + bytes(3 * 64 - 1))
    with zipfile.ZipFile(root / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("samples.npy", bomb)
    with zipfile.ZipFile(root / "raw.npz", "w") as z:
        z.writestr("samples", b"not an array")
    np.savez(root / "empty.npz")
    np.savez(root / "none.npz", samples=np.zeros((0, 8, 8), np.uint8))
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bomb.npy", "claims shape (100000000, 28, 28) of uint8 (78,400,000,000 bytes)"),
        ("bomb.npz", "array samples.npy claims shape (100000000, 28, 28)"),
        ("short.npy", "claims shape (3, 8, 8)"),
        ("raw.npz", "not a .npy array"),
        ("empty.npz", "holds no arrays"),
        ("none.npz", "holds no images"),
    ],
)
def test_arrays_are_judged_from_their_headers(ckpt, arrays, name, expected) -> None:
    refused("encode", arrays[name], "--ckpt", ckpt, expected=(str(arrays[name]), expected))
    with pytest.raises(ValueError, match="claims|holds no|not a .npy"):
        load_npz(arrays[name])


@pytest.fixture(scope="module")
def png_bomb(root) -> Path:
    """10,000 x 10,000 pixels of 1 bit: 12 MB of pixels in a PNG of about 12 KB."""
    Image.new("1", (10_000, 10_000)).save(root / "bomb.png")
    return root / "bomb.png"


def test_a_png_bomb_is_refused_from_its_header_without_a_warning(
    ckpt, png_bomb, monkeypatch
) -> None:
    def no_decoding(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert png_bomb.stat().st_size < 100_000
    refused("encode", png_bomb, "--ckpt", ckpt, expected=(str(png_bomb), "10000x10000"))
    with pytest.raises(ValueError, match="10000x10000 grayscale"):
        images.read_images([png_bomb], 1, 8)


# ---------------------------------------------------------------- pickles with payloads


class Payload:
    """Unpickled, it would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_pickle_with_a_payload_runs_nothing_and_suggests_nothing_unsafe(tmp_path, writer) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    obj = {"w": torch.zeros(1), "x": Payload(marker)}
    if writer == "torch":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    out = tmp_path / "o.safetensors"
    result = refused("convert", evil, out, "--from", "official", "--to", "ours",
                     expected=(str(evil), "refusing to unpickle"))  # fmt: skip
    assert "weights_only" not in result.stderr and "add_safe_globals" not in result.stderr
    assert not marker.exists() and not out.exists()


# ---------------------------------------------------------------- absent devices

no_gpu_7 = pytest.mark.skipif(torch.cuda.device_count() > 7, reason=f"{ABSENT_GPU} exists here")


@pytest.fixture
def train_config(tmp_path, tiny_config) -> Path:
    """A one-step training run of the tiny U-Net on ``training.device: cuda:7``."""
    data = tmp_path / "data.npz"
    images.save_npz(data, torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    config = {
        "out_dir": str(tmp_path / "run"),
        "model": tiny_config.to_dict(),
        "diffusion": {"num_timesteps": 100, "beta_start": 1e-3, "beta_end": 0.05},
        "data": {"kind": "npz", "path": str(data), "image_size": 8, "channels": 1},
        "training": {"total_steps": 1, "batch_size": 4, "warmup_steps": 0, "ckpt_every": 1,
                     "sample_every": 0, "log_every": 1, "device": ABSENT_GPU},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "c.yaml"


@no_gpu_7
def test_training_on_an_absent_device_is_one_line(train_config) -> None:
    refused("train", train_config, "--no-progress", expected=("training.device", ABSENT_GPU))
    assert not (train_config.parent / "run").exists()
    with pytest.raises(ValueError, match="cannot be used"):
        Distributed.start(ABSENT_GPU)


@no_gpu_7
def test_resuming_on_an_absent_device_is_one_line(train_config) -> None:
    first, _ = invoke("train", train_config, "--no-progress", "--set", "training.device=cpu")
    assert first.exit_code == 0, first.stderr
    checkpoints = train_config.parent / "run" / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    refused("train", train_config, "--no-progress", "--resume", "--set",
            f"training.device={ABSENT_GPU}", "--set", "training.total_steps=2",
            expected=("training.device", ABSENT_GPU))  # fmt: skip
    assert sorted(p.name for p in checkpoints.iterdir()) == before


@no_gpu_7
def test_sampling_on_an_absent_device_is_one_line(ckpt, tmp_path) -> None:
    refused("sample", "--ckpt", ckpt, "--device", ABSENT_GPU, "--out", tmp_path / "s.png",
            expected=("--device",))  # fmt: skip


# ---------------------------------------------------------------- folders under reuse


def fill(ckpt: Path, out: Path, n: int, *extra: object) -> Result:
    """``ddim sample`` of ``n`` images into the folder ``out``, which must succeed."""
    result, _ = invoke("sample", "--ckpt", ckpt, "-n", n, "--steps", 3, "--out", f"{out}/", *extra)
    assert result.exit_code == 0, result.output
    return result


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def test_other_weights_at_the_same_path_are_refused(
    tmp_path, perturbed_unet, write_checkpoint
) -> None:
    path, folder = tmp_path / "m.safetensors", tmp_path / "out"
    write_checkpoint(path, perturbed_unet(seed=0).state_dict(), SCHEDULE)  # model A
    fill(path, folder, 6)
    for i in range(2, 6):  # as if interrupted after two images
        (folder / f"{i:06d}.png").unlink()
    write_checkpoint(path, perturbed_unet(seed=1).state_dict(), SCHEDULE)  # model B
    refused("sample", "--ckpt", path, "-n", 6, "--steps", 3, "--out", f"{folder}/",
            expected=(str(folder), "(model)", "--force"))  # fmt: skip
    assert sorted(pngs(folder)) == ["000000.png", "000001.png"]
    fill(path, folder, 6, "--force")
    fill(path, tmp_path / "b", 6)
    assert pngs(folder) == pngs(tmp_path / "b")  # all six from model B


def test_the_same_weights_at_another_path_resume(ckpt, tmp_path) -> None:
    folder, moved = tmp_path / "out", tmp_path / "moved.safetensors"
    fill(ckpt, folder, 3)
    moved.write_bytes(ckpt.read_bytes())
    assert "kept 3 already there" in fill(moved, folder, 3).stdout


def test_force_replaces_the_folder_as_a_whole(ckpt, tmp_path) -> None:
    folder = tmp_path / "out"
    fill(ckpt, folder, 6)
    (folder / "notes.txt").write_text("mine")
    fill(ckpt, folder, 2, "--force", "--seed", 5)
    assert sorted(pngs(folder)) == ["000000.png", "000001.png"]
    assert json.loads((folder / MANIFEST).read_text())["n"] == 2
    assert (folder / "notes.txt").read_text() == "mine"
