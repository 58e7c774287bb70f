"""``training.null_teacher``: the samples whose label was dropped regress on an unconditional
teacher's eps instead of the drawn noise; the labelled samples keep the plain objective."""

from __future__ import annotations

import pytest
import torch
from test_conditional_training import CONFIG, conditional_config, save

from ddim.formats.checkpoint import CheckpointError, load_checkpoint
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule, q_sample
from ddim.train import loop
from ddim.train.config import config_from_dict
from ddim.train.init import load_teacher
from ddim.train.loss import diffusion_loss, loss_weights

SCHED = NoiseSchedule.linear(100, 1e-4, 0.02)


def student_of(teacher: UNet) -> UNet:
    """A conditional U-Net (10 classes) with the teacher's weights: it predicts the
    teacher's eps for every label until its class embedding moves."""
    cond = UNet(UNetConfig(**{**CONFIG.to_dict(), "num_classes": 10})).eval()
    cond.load_state_dict(teacher.state_dict(), strict=False)
    return cond


def test_a_student_equal_to_its_teacher_has_zero_loss_on_the_null_label():
    torch.manual_seed(0)
    teacher = UNet(CONFIG).eval()
    student = student_of(teacher)
    x0, noise = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 5, 30, 60, 90, 99])
    null = torch.full((6,), 10)
    with torch.no_grad():
        assert diffusion_loss(student, x0, t, noise, SCHED.alpha_bar, None, null, teacher, 10) == 0
        plain = diffusion_loss(student, x0, t, noise, SCHED.alpha_bar, None, null)
    assert plain > 0.1  # without the teacher the same batch regresses on the noise


def test_the_dropped_rows_regress_on_the_teacher_and_the_rest_on_the_noise():
    """The weighted loss worked out row by row: ||eps(x_t, t, y) - target||^2 with the
    target the teacher's eps where y is the null label 10, the noise elsewhere."""
    torch.manual_seed(1)
    teacher = UNet(CONFIG).eval()
    student = student_of(teacher)
    with torch.no_grad():
        student.label_emb.weight[10] = 0.3 * torch.randn(4 * 32)
        student.label_emb.weight[2] = -0.2 * torch.randn(4 * 32)
    x0, noise = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    t, y = torch.tensor([3, 40, 40, 77, 99]), torch.tensor([10, 2, 10, 7, 10])
    weights = loss_weights(t, SCHED.alpha_bar, "min-snr", 5.0)
    with torch.no_grad():
        got = diffusion_loss(student, x0, t, noise, SCHED.alpha_bar, weights, y, teacher, 10)
        x_t = q_sample(x0, t, noise, SCHED.alpha_bar)
        rows = []
        for i in range(5):
            eps = student(x_t[i : i + 1], t[i : i + 1], y[i : i + 1])
            target = teacher(x_t[i : i + 1], t[i : i + 1]) if y[i] == 10 else noise[i : i + 1]
            rows.append(weights[i] * (eps - target).pow(2).mean())
    torch.testing.assert_close(got, torch.stack(rows).mean(), rtol=1e-5, atol=0)
    assert all(r > 0 for r in rows)


def test_a_teacher_must_be_unconditional_on_the_same_schedule_and_images(tmp_path):
    torch.manual_seed(2)
    plain = UNet(CONFIG).eval()
    save(tmp_path / "u.safetensors", plain, SCHED)
    teacher = load_teacher(str(tmp_path / "u.safetensors"), SCHED, (1, 8, 8))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 50])
    with torch.no_grad():
        assert torch.equal(teacher(x, t), plain(x, t))
    save(tmp_path / "c.safetensors", student_of(plain), SCHED)
    with pytest.raises(CheckpointError, match="null_teacher .* is class-conditional"):
        load_teacher(str(tmp_path / "c.safetensors"), SCHED, (1, 8, 8))
    with pytest.raises(CheckpointError, match="another noise schedule"):
        load_teacher(
            str(tmp_path / "u.safetensors"), NoiseSchedule.linear(100, 1e-4, 0.03), (1, 8, 8)
        )
    with pytest.raises(CheckpointError, match=r"takes \(1, 8, 8\) images, not \(3, 8, 8\)"):
        load_teacher(str(tmp_path / "u.safetensors"), SCHED, (3, 8, 8))


def test_a_null_teacher_needs_label_dropout_and_a_name():
    with pytest.raises(ValueError, match="null_teacher needs label dropout"):
        config_from_dict(conditional_config(label_dropout=0.0, null_teacher="mnist"))
    with pytest.raises(ValueError, match="null_teacher must be a checkpoint path or name"):
        config_from_dict(conditional_config(null_teacher=""))


@pytest.mark.slow
def test_a_run_with_a_null_teacher_trains_and_records_it(tmp_path):
    torch.manual_seed(3)
    save(tmp_path / "u.safetensors", UNet(CONFIG).eval(), SCHED)
    raw = conditional_config(null_teacher=str(tmp_path / "u.safetensors"), total_steps=2)
    raw["out_dir"] = str(tmp_path / "run")
    result = loop.train(config_from_dict(raw), progress=False)
    ckpt = load_checkpoint(result.weights)
    assert ckpt.step == 2
    assert ckpt.extra["train_config"]["training"]["null_teacher"] == str(tmp_path / "u.safetensors")
