"""Weight files: exact round trips, self-description, damage detection, legacy import."""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
import safetensors.torch
import torch

from ddim.formats import checkpoint as checkpoints
from ddim.formats.atomic import atomic_write, atomic_write_bytes
from ddim.formats.checkpoint import (
    CheckpointError,
    check_state_dict,
    describe_schedule,
    load_checkpoint,
    load_pretrained,
    read_metadata,
)
from ddim.formats.legacy import convert_legacy
from ddim.models.unet import UNet
from ddim.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def states(perturbed_unet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Raw and EMA weights of the tiny U-Net."""
    return perturbed_unet(seed=0).state_dict(), perturbed_unet(seed=1).state_dict()


@pytest.fixture
def saved(tmp_path, states, write_checkpoint):
    model, ema = states
    return write_checkpoint(
        tmp_path / "run.safetensors",
        ema,
        NoiseSchedule.linear(),
        model=model,
        step=1234,
        extra_meta={"note": "hi"},
    )


def test_round_trip_is_exact_and_self_describing(saved, states, tiny_config):
    model, ema = states
    ckpt = load_checkpoint(saved)
    assert ckpt.model_config == tiny_config
    assert ckpt.step == 1234 and ckpt.data_shape == (1, 8, 8) and ckpt.extra == {"note": "hi"}
    assert all(torch.equal(ckpt.ema_state[k], ema[k]) for k in ema)
    assert all(torch.equal(ckpt.model_state[k], model[k]) for k in model)
    assert torch.equal(ckpt.schedule.betas, NoiseSchedule.linear().betas)

    meta = read_metadata(saved)
    assert meta["step"] == 1234
    assert meta["model_config"] == tiny_config.to_dict()
    assert meta["schedule"] == {
        "kind": "linear",
        "num_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
    }
    assert meta["data_shape"] == [1, 8, 8]
    assert meta["weights"] == ["ema", "model"]
    assert meta["num_parameters"] == sum(v.numel() for v in ema.values())
    assert meta["format_version"] == 2 and meta["ddim_version"] == "0.1.0"


def test_load_pretrained_gives_an_eval_model_with_the_chosen_weights(saved, states, tiny_config):
    model_state, ema_state = states
    x, t = (
        torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
        torch.tensor([3, 900]),
    )
    for which, state in (("ema", ema_state), ("model", model_state)):
        net, sched = load_pretrained(str(saved), which=which)
        reference = UNet(tiny_config).eval()
        reference.load_state_dict(state)
        assert not net.training and sched.num_timesteps == 1000
        with torch.no_grad():
            assert torch.equal(net(x, t), reference(x, t))


def test_ema_only_file_refuses_raw_weights(tmp_path, states, write_checkpoint):
    path = write_checkpoint(tmp_path / "ema.safetensors", states[1], NoiseSchedule.cosine(50))
    assert read_metadata(path)["weights"] == ["ema"]
    assert read_metadata(path)["schedule"] == {"kind": "cosine", "num_timesteps": 50}
    with pytest.raises(CheckpointError, match="EMA weights only"):
        load_pretrained(path, which="model")


def test_any_schedule_round_trips_bit_exactly(tmp_path, states, write_checkpoint):
    betas = torch.rand(37, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sched = NoiseSchedule.from_betas(betas * 0.5 + 1e-5)
    path = write_checkpoint(tmp_path / "custom.safetensors", states[1], sched)
    assert describe_schedule(sched) == {"kind": "custom", "num_timesteps": 37}
    assert torch.equal(load_checkpoint(path).schedule.betas, sched.betas)
    assert torch.equal(load_checkpoint(path).schedule.alpha_bar, sched.alpha_bar)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file_is_an_error_naming_it(saved, keep):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: keep if keep >= 0 else len(raw) - 1])
    for load in (load_pretrained, read_metadata):
        with pytest.raises(CheckpointError, match="truncated") as err:
            load(saved)
        assert str(saved) in str(err.value)


def test_flipped_bit_is_caught_by_the_digest(saved):
    raw = bytearray(saved.read_bytes())
    raw[-4] ^= 0x10
    saved.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{saved} is corrupt"):
        load_pretrained(saved)


def test_foreign_safetensors_and_missing_files(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a ddim checkpoint"):
        load_pretrained(plain)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_pretrained(tmp_path / "nowhere.safetensors")


def test_missing_bundled_asset_says_how_to_make_it(monkeypatch):
    monkeypatch.setitem(checkpoints.BUNDLED, "toy", "toy-not-shipped.safetensors")
    with pytest.raises(
        FileNotFoundError, match=r"bundled 'toy' model is not installed.*ddim\.train"
    ):
        load_pretrained("toy")


def test_bundled_mnist_model_loads_by_name():
    net, sched = load_pretrained("mnist")
    assert (net.config.in_channels, net.config.image_size) == (1, 28)
    assert sched.num_timesteps == 1000


def test_key_and_shape_problems_are_listed(tmp_path, states, write_checkpoint):
    model, ema = states
    broken = dict(ema)
    del broken["conv_in.weight"]
    broken["extra.weight"] = torch.zeros(1)
    broken["conv_out.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        write_checkpoint(tmp_path / "x.safetensors", broken, NoiseSchedule.linear(), model=model)
    message = str(err.value)
    assert "missing keys (1): conv_in.weight" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "shape mismatches (1): conv_out.bias (7,) != (1,)" in message
    assert not (tmp_path / "x.safetensors").exists()


def test_file_whose_config_does_not_fit_its_tensors(saved, tiny_config):
    """A file that passes its digest but whose config describes another network."""
    tensors = safetensors.torch.load_file(saved)
    header_len = struct.unpack("<Q", saved.read_bytes()[:8])[0]
    meta = json.loads(saved.read_bytes()[8 : 8 + header_len])["__metadata__"]
    meta["model_config"] = json.dumps({**tiny_config.to_dict(), "ch": 64})
    saved.write_bytes(safetensors.torch.save(tensors, metadata=meta))
    with pytest.raises(CheckpointError, match=r"ema weights in .* shape mismatches"):
        load_pretrained(saved)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0o600


# ------------------------------------------------------------------ legacy checkpoints


def _official(config, model, ema):
    """The official DDIM ``ckpt.pth`` layout: DataParallel keys, optimizer, epoch, step, EMA."""
    net = UNet(config)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    net(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)).sum().backward()
    opt.step()
    prefixed = [{f"module.{k}": v for k, v in s.items()} for s in (model, ema)]
    return [prefixed[0], opt.state_dict(), 7, 4321, prefixed[1]]


def test_official_list_checkpoint_gives_ema_or_model(tmp_path, states, tiny_config):
    model, ema = states
    path = tmp_path / "ckpt.pth"
    torch.save(_official(tiny_config, model, ema), path)
    for which, expected in (("ema", ema), ("model", model)):
        state = convert_legacy(path, which=which, model_config=tiny_config.to_dict())
        assert set(state) == set(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_pesser_flat_checkpoint(tmp_path, states, tiny_config):
    path = tmp_path / "model-790000.ckpt"
    torch.save(states[0], path)
    state = convert_legacy(path, model_config=tiny_config.to_dict())
    assert all(torch.equal(state[k], states[0][k]) for k in states[0])


def test_legacy_checkpoint_without_ema(tmp_path, states, tiny_config):
    path = tmp_path / "ckpt.pth"
    torch.save(_official(tiny_config, *states)[:4], path)
    with pytest.raises(CheckpointError, match="no EMA state"):
        convert_legacy(path)
    assert len(convert_legacy(path, which="model")) == len(states[0])


def test_truncated_legacy_checkpoint(tmp_path, states, tiny_config):
    path = tmp_path / "ckpt.pth"
    torch.save(_official(tiny_config, *states), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"{path} is truncated"):
        convert_legacy(path)


def test_wrong_keys_in_legacy_checkpoint_are_listed(tmp_path, states, tiny_config):
    renamed = {k.replace("mid.", "middle."): v for k, v in states[0].items()}
    path = tmp_path / "model-1.ckpt"
    torch.save(renamed, path)
    with pytest.raises(CheckpointError) as err:
        convert_legacy(path, model_config=tiny_config.to_dict())
    message = str(err.value)
    n_mid = sum(k.startswith("mid.") for k in states[0])
    assert f"missing keys ({n_mid}): mid.attn_1.k.bias" in message
    assert f"unexpected keys ({n_mid}): middle.attn_1.k.bias" in message


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_legacy_loader_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        convert_legacy(path)
    assert "must never run" not in capsys.readouterr().out


def test_check_state_dict_accepts_a_matching_state_and_names_each_wrong_key(states, tiny_config):
    state = states[0]
    assert check_state_dict(tiny_config, state, "test weights") is None
    shape = tuple(state["conv_in.weight"].shape)
    wide = (2 * shape[0], *shape[1:])
    missing = {k: v for k, v in state.items() if k != "mid.attn_1.k.bias"}
    unexpected = {**state, "mid.attn_1.extra": torch.zeros(2)}
    widened = {**state, "conv_in.weight": torch.zeros(wide)}
    for changed, problem in [
        (missing, "missing keys (1): mid.attn_1.k.bias"),
        (unexpected, "unexpected keys (1): mid.attn_1.extra"),
        (widened, f"shape mismatches (1): conv_in.weight {wide} != {shape}"),
    ]:
        with pytest.raises(CheckpointError) as err:
            check_state_dict(tiny_config, changed, "test weights")
        assert str(err.value) == f"test weights do not fit the U-Net config: {problem}"
