"""Class-conditional models and their training: the label embedding, labelled data, label
dropout, and a fine-tune that starts exactly as the unconditional model it starts from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from test_training import TINY

from ddim.formats.checkpoint import CheckpointError, load_checkpoint, save_weights
from ddim.formats.datasets import DataConfig, load_dataset, load_labelled_dataset, open_image_set
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule
from ddim.train import loop
from ddim.train.batches import DataOrder, step_batch
from ddim.train.config import config_from_dict
from ddim.train.init import start_from
from ddim.train.runtime import Distributed

CONFIG = UNetConfig(
    in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(4,), image_size=8,
)  # fmt: skip


def conditional_config(**training) -> dict:
    return {
        **TINY,
        "out_dir": "unused",
        "model": {**TINY["model"], "num_classes": 10},
        "training": {**TINY["training"], "label_dropout": 0.25, **training},
    }


def test_a_new_conditional_unet_predicts_the_unconditional_eps_for_every_label():
    torch.manual_seed(0)
    plain = UNet(CONFIG).eval()
    cond = UNet(UNetConfig(**{**CONFIG.to_dict(), "num_classes": 3})).eval()
    missing = cond.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["label_emb.weight"]
    assert cond.label_emb.weight.shape == (4, 4 * 32)  # K = 3 classes and the null label
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        expected = plain(x, t)
        for y in (None, torch.tensor([0, 1, 2, 3])):
            assert torch.equal(cond(x, t, y), expected)
        cond.label_emb.weight[1] = 1.0
        moved = cond(x, t, torch.tensor([1, 1, 0, 3]))
    assert not torch.allclose(moved[:2], expected[:2]) and torch.equal(moved[2:], expected[2:])


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (torch.tensor([0, 4]), "must lie in 0..3"),
        (torch.tensor([-1, 0]), "must lie in 0..3"),
        (torch.tensor([0]), "shape \\(2,\\)"),
        (torch.tensor([0.0, 1.0]), "integer tensor"),
    ],
)
def test_bad_labels_are_refused_by_name(y, message):
    cond = UNet(UNetConfig(**{**CONFIG.to_dict(), "num_classes": 3}))
    with pytest.raises(ValueError, match=message):
        cond(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), y)


def test_an_unconditional_unet_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(CONFIG)(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2))


def test_num_classes_is_checked():
    with pytest.raises(ValueError, match="num_classes must be a non-negative integer"):
        UNetConfig(num_classes=-1)


def test_labelled_npz_data_are_sliced_with_their_images(tmp_path):
    images = np.arange(5 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8)
    np.savez(tmp_path / "d.npz", x=images, y=np.array([3, 1, 4, 1, 5]))
    cfg = DataConfig(kind="npz", image_size=8, channels=1, path=str(tmp_path / "d.npz"),
                     key="x", labels="y", start=1, stop=4)  # fmt: skip
    x, y = load_labelled_dataset(cfg, num_classes=6)
    assert torch.equal(x, load_dataset(cfg)) and y.tolist() == [1, 4, 1]
    with pytest.raises(ValueError, match="lie in 1..4, outside 0..3"):
        load_labelled_dataset(cfg, num_classes=4)
    np.savez(tmp_path / "d.npz", x=images, y=np.array([3, 1, 4]))
    with pytest.raises(ValueError, match="holds 3 labels for the 5 images"):
        load_labelled_dataset(cfg, num_classes=6)


def test_the_digits_carry_their_labels_and_other_kinds_need_them():
    x, y = load_labelled_dataset(DataConfig(kind="digits", image_size=8, channels=1), 10)
    assert x.shape == (1797, 1, 8, 8) and y[:10].tolist() == list(range(10))
    with pytest.raises(ValueError, match="needs labels: set data.labels"):
        load_labelled_dataset(DataConfig(kind="npz", image_size=8, channels=1, path="a.npz"), 10)
    with pytest.raises(ValueError, match="labels applies only to kinds folder, mnist, npz"):
        DataConfig(kind="cifar10", image_size=8, channels=1, path="a", labels="b")


def test_label_dropout_replaces_a_seeded_share_of_labels_by_the_null_label():
    config = config_from_dict(conditional_config())
    images, _ = open_image_set(config.data, 10)
    labels = images.labels
    order = DataOrder(len(images), 0)
    drawn = [step_batch(images, order, s, config, 100) for s in range(1, 401)]
    y = torch.cat([d[3] for d in drawn])
    truth = torch.cat([labels[order.indices((s - 1) * 8, 8)] for s in range(1, 401)])
    null = y == 10
    assert torch.equal(y[~null], truth[~null])  # kept labels are the images' own
    share = null.double().mean().item()  # 3,200 draws: std of the share 0.0077
    assert abs(share - 0.25) < 0.03
    again = step_batch(images, order, 7, config, 100)
    assert all(torch.equal(a, b) for a, b in zip(again, drawn[6], strict=True))
    unlabelled = open_image_set(config.data)[0]  # the images, t and noise do not move
    plain = step_batch(unlabelled, order, 7, config, 100)
    assert all(torch.equal(a, b) for a, b in zip(plain[:3], drawn[6][:3], strict=True))


def test_label_dropout_needs_a_conditional_model():
    raw = conditional_config()
    raw["model"] = TINY["model"]
    with pytest.raises(ValueError, match="label_dropout needs a class-conditional model"):
        config_from_dict(raw)


def save(path, net: UNet, sched: NoiseSchedule) -> None:
    cfg = net.config.to_dict()
    save_weights(path, None, net.state_dict(), model_config=cfg, schedule=sched,
                 data_shape=(1, 8, 8), step=9)  # fmt: skip


def test_init_starts_a_conditional_run_as_the_unconditional_model(tmp_path):
    torch.manual_seed(3)
    plain = UNet(CONFIG).eval()
    sched = NoiseSchedule.linear(100, 1e-4, 0.02)
    save(tmp_path / "u.safetensors", plain, sched)
    config = config_from_dict(conditional_config(init=str(tmp_path / "u.safetensors")))
    ctx = Distributed.start("cpu")
    run = loop._setup(config, ctx)
    start_from(config.training.init, run.model, run.ema, config.diffusion.build())
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 20, 50, 99])
    with torch.no_grad():
        expected = plain(x, t)
        for net in (run.model.eval(), run.ema.module):
            assert torch.equal(net(x, t, torch.tensor([0, 3, 9, 10])), expected)

    other = NoiseSchedule.linear(100, 1e-4, 0.03)
    save(tmp_path / "v.safetensors", plain, other)
    with pytest.raises(CheckpointError, match="another noise schedule"):
        start_from(str(tmp_path / "v.safetensors"), run.model, run.ema, config.diffusion.build())
    wide = UNetConfig(**{**CONFIG.to_dict(), "ch": 64})
    save(tmp_path / "w.safetensors", UNet(wide), sched)
    with pytest.raises(CheckpointError, match="does not fit model"):
        start_from(str(tmp_path / "w.safetensors"), run.model, run.ema, config.diffusion.build())


@pytest.mark.slow
def test_a_conditional_run_trains_and_records_num_classes(tmp_path):
    raw = conditional_config()
    raw["out_dir"] = str(tmp_path / "run")
    result = loop.train(config_from_dict(raw), progress=False)
    ckpt = load_checkpoint(result.weights)
    assert ckpt.model_config.num_classes == 10
    assert ckpt.ema_state["label_emb.weight"].abs().sum() > 0  # the embedding learned


@pytest.mark.slow
def test_ddim_train_init_starts_from_a_bundled_name_or_path(tmp_path):
    """``ddim train --init CKPT`` is ``--set training.init=CKPT``: the run's step-0 weights
    are the checkpoint's, its class embedding zero."""
    from click.testing import CliRunner

    from ddim.cli import main

    torch.manual_seed(4)
    plain = UNet(CONFIG).eval()
    save(tmp_path / "u.safetensors", plain, NoiseSchedule.linear(100, 1e-4, 0.02))
    raw = conditional_config(total_steps=1, ckpt_every=1)
    raw["out_dir"] = str(tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    args = ["train", str(tmp_path / "c.yaml"), "--init", str(tmp_path / "u.safetensors"),
            "--set", "training.lr=1e-12", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001.safetensors")
    assert ckpt.extra["train_config"]["training"]["init"] == str(tmp_path / "u.safetensors")
    for key, value in plain.state_dict().items():  # one step at lr 1e-12 moves nothing visible
        torch.testing.assert_close(ckpt.model_state[key], value, rtol=0, atol=1e-8)


def test_the_class_embedding_learns_at_its_own_rate():
    """label_lr_scale puts label_emb in its own Adam group at that multiple of the rate; an
    unconditional model keeps one group (so older runs' optimiser states still load)."""
    from ddim.train.init import param_groups

    cond = UNet(UNetConfig(**{**CONFIG.to_dict(), "num_classes": 3}))
    groups = param_groups(cond, 20.0)
    assert [len(g["params"]) for g in groups] == [len(list(cond.parameters())) - 1, 1]
    assert groups[1]["params"][0] is cond.label_emb.weight and groups[1]["lr_scale"] == 20.0
    assert len(param_groups(UNet(CONFIG), 20.0)) == 1
    with pytest.raises(ValueError, match="label_lr_scale must be a finite number > 0"):
        config_from_dict(conditional_config(label_lr_scale=0.0))
    raw = conditional_config(label_lr_scale=10.0, total_steps=2, ckpt_every=2, warmup_steps=0)
    raw["out_dir"] = "run"
    result = loop.train(config_from_dict(raw), progress=False)
    state = torch.load(result.weights.with_suffix("").with_suffix(".state.pt"), weights_only=True)
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-2)]
