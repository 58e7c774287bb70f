"""Progressive distillation: Salimans & Ho's target lands one student step on the teacher's
two (every parameterization, every point), the rounds' plans, and the trainer on
scikit-learn's 8x8 digits: students that record their plan, exact resume after SIGKILL,
and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ddim
from ddim.eval.exact_gaussian import DiagonalGaussian, power_law_spectrum
from ddim.eval.landing import swapped_sample
from ddim.formats.checkpoint import load_checkpoint, load_pretrained
from ddim.names import PREDICTIONS
from ddim.parameterization import from_pair, to_pair
from ddim.train.distill import distill, round_folder
from ddim.train.distill_config import distill_config_from_dict, load_distill_config
from ddim.train.loop import NonFiniteLossError
from ddim.train.progressive import (
    alpha_sigma,
    ddim_move,
    distillation_loss,
    distillation_plans,
    loss_weight,
    solver_landing,
    student_points,
    student_target,
    teacher_steps,
)

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear(100, 1e-4, 0.02)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_loss_weights_by_hand() -> None:
    alpha, sigma = torch.tensor([0.6, 0.8], dtype=F64), torch.tensor([0.8, 0.6], dtype=F64)
    torch.testing.assert_close(loss_weight(alpha, sigma, "snr"),
                               torch.tensor([0.5625, 16 / 9], dtype=F64))  # fmt: skip
    torch.testing.assert_close(loss_weight(alpha, sigma, "truncated-snr"),
                               torch.tensor([1.0, 16 / 9], dtype=F64))  # fmt: skip
    # landing: (alpha'' - sigma'' alpha / sigma)^2; from (0.6, 0.8) to (0.8, 0.6):
    # (0.8 - 0.6 * 0.6 / 0.8)^2 = 0.35^2; from (0.8, 0.6) to alpha_bar = 1: 1
    end = (torch.tensor([0.8, 1.0], dtype=F64), torch.tensor([0.6, 0.0], dtype=F64))
    torch.testing.assert_close(loss_weight(alpha, sigma, "landing", end),
                               torch.tensor([0.35**2, 1.0], dtype=F64))  # fmt: skip
    with pytest.raises(ValueError, match="weighting must be one of snr, truncated-snr, landing"):
        loss_weight(alpha, sigma, "min-snr")
    with pytest.raises(ValueError, match="the landing weight needs the end point"):
        loss_weight(alpha, sigma, "landing")


def _toy_teacher(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 0.7 + 0.01 * tt.view(-1, 1, 1, 1).to(x.dtype) / 100


def _toy_student(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 0.9 - 0.02 * tt.view(-1, 1, 1, 1).to(x.dtype) / 100


#: Six rows' student points t, t', t'' on SCHED, the last row's ending at alpha_bar = 1.
TOY_POINTS = (torch.tensor([99, 80, 60, 40, 20, 10]), torch.tensor([90, 70, 50, 30, 15, 5]),
              torch.tensor([80, 60, 40, 20, 10, -1]))  # fmt: skip


def test_the_snr_weight_is_the_eps_loss_of_the_target() -> None:
    """Under ``snr`` the loss is the mean squared error between the student's ε and the ε
    that eq. (1)'s target implies at ``z_t``, ``(z_t - alpha x~) / sigma``: what an
    ε-student started from an ε-teacher is trained on."""
    g = torch.Generator().manual_seed(3)
    x0, noise = (torch.randn(6, 1, 4, 4, generator=g, dtype=F64) for _ in range(2))
    ts, teacher, student = TOY_POINTS, _toy_teacher, _toy_student
    loss = distillation_loss(student, teacher, SCHED, x0, noise, ts, ("eps", "eps"), None, "snr")
    alpha, sigma = alpha_sigma(SCHED, ts[0], x0)
    z = alpha * x0 + sigma * noise
    target = student_target(z, teacher_steps(teacher, SCHED, z, ts, "eps"),
                            (alpha, sigma, *alpha_sigma(SCHED, ts[2], z)))  # fmt: skip
    eps_target = (z - alpha * target) / sigma
    expected = (student(z, ts[0]) - eps_target).square().flatten(1).mean(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_landing_weight_is_the_squared_landing_error(prediction) -> None:
    """Under ``landing`` the loss is the mean squared distance between where the student's
    own DDIM step from ``z_t`` lands and where the teacher's two land, ``z''``, whatever
    the student predicts: halving rows and rows whose last point is ``alpha_bar = 1``."""
    g = torch.Generator().manual_seed(5)
    x0, noise = (torch.randn(6, 1, 4, 4, generator=g, dtype=F64) for _ in range(2))
    ts, teacher, student = TOY_POINTS, _toy_teacher, _toy_student
    loss = distillation_loss(student, teacher, SCHED, x0, noise, ts, ("eps", prediction), None,
                             "landing")  # fmt: skip
    alpha, sigma = alpha_sigma(SCHED, ts[0], x0)
    z = alpha * x0 + sigma * noise
    z_end = teacher_steps(teacher, SCHED, z, ts, "eps")
    eps, x_hat = to_pair(student(z, ts[0]), z, alpha, sigma, prediction)
    landed = ddim_move(x_hat, eps, *alpha_sigma(SCHED, ts[2], z))
    expected = (landed - z_end).square().flatten(1).mean(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert loss.item() > 1e-4


def test_plans_halve_from_the_top_timestep() -> None:
    plans = distillation_plans(ddim.NoiseSchedule.linear(), 8, 1)
    assert plans == [(999, 874, 749, 624, 499, 374, 249, 124), (999, 749, 499, 249), (999, 499),
                     (999,)]  # fmt: skip
    assert distillation_plans(ddim.NoiseSchedule.linear(), 4, 4) == [(999, 749, 499, 249)] * 2
    for bad in ((8, 3), (12, 2), (2, 4), (8, 0)):
        with pytest.raises(ValueError, match="must be a power of hops = 2, got"):
            distillation_plans(SCHED, *bad)
    # hops = 4 (3): every fourth (third) point; 16 -> 4 and 12 -> 4 are one round each
    sched = ddim.NoiseSchedule.linear()
    assert distillation_plans(sched, 16, 4, hops=4)[1] == (999, 749, 499, 249)
    assert distillation_plans(sched, 12, 4, hops=3)[1:] == [(999, 749, 499, 249)]
    assert [len(p) for p in distillation_plans(sched, 64, 1, hops=4)] == [64, 16, 4, 1]
    with pytest.raises(ValueError, match="must be a power of hops = 4, got 16 / 2"):
        distillation_plans(sched, 16, 2, hops=4)
    # linspace: from T - 1 down to 0, so the last student step's teacher ends with t = 0
    plans = distillation_plans(sched, 8, 2, hops=4, spacing="linspace")
    assert plans == [(999, 856, 714, 571, 428, 285, 143, 0), (999, 428)]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_one_student_step_from_the_target_lands_on_the_teachers_two(prediction) -> None:
    """Eq. (1) at every student point of a 4-step plan, the last (to alpha_bar = 1) included:
    a network whose output is the target, read through ``prediction``, steps onto z''."""
    sched = ddim.NoiseSchedule.linear()
    teacher_plan, student_plan = distillation_plans(sched, 8, 4)[:2]
    ts = torch.tensor([*teacher_plan, -1])
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(4, 3, generator=g, dtype=F64)
    k = torch.arange(4)
    t, t_mid, t_end = ts[2 * k], ts[2 * k + 1], ts[2 * k + 2]
    assert t.tolist() == list(student_plan)

    def teacher(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 0.7 + 0.01 * tt[:, None].to(x.dtype) / 1000

    z_end = teacher_steps(teacher, sched, z_t, (t, t_mid, t_end), "eps")
    alpha, sigma = alpha_sigma(sched, t, z_t)
    alpha_end, sigma_end = alpha_sigma(sched, t_end, z_t)
    x_target = student_target(z_t, z_end, (alpha, sigma, alpha_end, sigma_end))
    eps_target = (z_t - alpha * x_target) / sigma
    out = from_pair(eps_target, x_target, alpha, sigma, prediction)
    eps, x0 = to_pair(out, z_t, alpha, sigma, prediction)
    landed = ddim_move(x0, eps, alpha_end, sigma_end)
    assert (landed - z_end).abs().max().item() < 1e-12
    # and by hand: eq. 12 at eta = 0 through t, t', t'' for each row
    for row in range(4):
        points = [int(t[row]), int(t_mid[row]), int(t_end[row])]
        want = _ddim_to(teacher, sched, z_t[row : row + 1], points)
        torch.testing.assert_close(z_end[row : row + 1], want, rtol=0, atol=1e-12)


def _ddim_to(teacher, sched, z, points):
    """DDIM (eta = 0) from ``points[0]`` through each point in turn, by eq. 12 by hand."""
    for start, end in zip(points[:-1], points[1:], strict=True):
        a, a_prev = sched.alpha_bar_at(start), sched.alpha_bar_at(end)
        eps = teacher(z, torch.tensor([start]))
        x0 = (z - (1 - a) ** 0.5 * eps) / a**0.5
        z = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return z


# ---------------------------------------------------------------- the trainer


TINY_MODEL = {
    "in_channels": 1, "out_channels": 1, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
    "attn_resolutions": [4], "dropout": 0.1, "image_size": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, perturbed_unet) -> Path:
    from ddim.models.unet import UNetConfig

    config = UNetConfig.from_dict(TINY_MODEL)
    model = perturbed_unet(config, seed=1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    from ddim.formats.checkpoint import save_weights

    save_weights(path, None, model.state_dict(), model_config=config.to_dict(), schedule=SCHED,
                 data_shape=(1, 8, 8), step=0)  # fmt: skip
    return path


def raw_config(tmp: Path, teacher: Path, **training) -> dict:
    return {
        "out_dir": str(tmp / "run"),
        "distill": {
            "teacher": str(teacher),
            "teacher_steps": 4,
            "student_steps": 1,
            "prediction": "v",
        },  # fmt: skip
        "data": {"kind": "digits", "image_size": 8, "channels": 1},
        "training": {
            "total_steps": 3,
            "batch_size": 8,
            "lr": 1e-3,
            "warmup_steps": 1,
            "ckpt_every": 2,
            "keep_last": 1,
            "log_every": 1,
            "device": "cpu",
            **training,
        },  # fmt: skip
    }


def write_config(tmp: Path, teacher: Path, **training) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "distill.yaml"
    path.write_text(yaml.safe_dump(raw_config(tmp, teacher, **training)))
    return path


def test_rounds_write_students_that_sample_with_their_plans(tmp_path, teacher) -> None:
    result = distill(load_distill_config(write_config(tmp_path, teacher)), progress=False)
    assert [p.parent.name for p in result.students] == ["round-1-2steps", "round-2-1steps"]
    student, sched = load_pretrained(result.students[-1])
    assert student.config.prediction == "v" and student.config.sampling_plan == (99,)
    assert torch.equal(sched.betas, SCHED.betas)
    meta = load_checkpoint(result.students[0]).extra["distill"]
    assert meta["teacher_plan"] == [99, 74, 49, 24] and meta["student_plan"] == [99, 49]
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    default = ddim.sample(student, x_T, sched,
                          callback=lambda s: calls.append(s.t))  # fmt: skip
    assert calls == [99]  # one model call, at the top timestep
    explicit = ddim.sample(student, x_T, sched, steps=[99])
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="distilled for 1 steps at t = \\[99\\]; sampling it "
                                         "with 2 steps"):  # fmt: skip
        ddim.sample(student, x_T, sched, steps=2)


def test_equal_steps_make_one_round_that_reparameterizes(tmp_path, teacher) -> None:
    raw = raw_config(tmp_path, teacher, total_steps=2)
    raw["distill"]["student_steps"] = 4
    result = distill(distill_config_from_dict(raw), progress=False)
    assert [p.parent.name for p in result.students] == ["round-1-4steps"]
    student, _ = load_pretrained(result.students[0])
    assert student.config.prediction == "v" and student.config.sampling_plan == (99, 74, 49, 24)
    meta = load_checkpoint(result.students[0]).extra["distill"]
    assert meta["teacher_plan"] == meta["student_plan"] == [99, 74, 49, 24]
    raw = raw_config(tmp_path / "same", teacher)
    raw["distill"].update(student_steps=4, prediction="eps")
    with pytest.raises(ValueError, match="only re-parameterizes, but the teacher already "
                                         "predicts eps"):  # fmt: skip
        distill(distill_config_from_dict(raw), progress=False)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from ddim.train.distill import distill
    from ddim.train.distill_config import load_distill_config

    config, n = sys.argv[1], int(sys.argv[2])
    def hook(r, step, loss):
        if (r, step) == (1, n):
            os.kill(os.getpid(), signal.SIGKILL)
    distill(load_distill_config(config), progress=False, on_step=hook)
    """
)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, teacher) -> None:
    straight = distill(load_distill_config(write_config(tmp_path / "a", teacher)), progress=False)
    config = write_config(tmp_path / "b", teacher)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(config), "3"], env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(ValueError, match="already holds distillation rounds; pass --resume"):
        distill(load_distill_config(config), progress=False)
    resumed = distill(load_distill_config(config), resume=True, progress=False)
    for a, b in zip(straight.students, resumed.students, strict=True):
        sa, sb = load_checkpoint(a).ema_state, load_checkpoint(b).ema_state
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_resume_needs_only_the_latest_student(tmp_path, teacher) -> None:
    """Three rounds (8 -> 4 -> 2 -> 1); with round 1's folder and round 3's gone, a resume
    trains round 3 again from round 2's student, bit for bit, and leaves round 1 alone."""
    raw = raw_config(tmp_path, teacher, total_steps=2)
    raw["distill"]["teacher_steps"] = 8
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(raw))
    straight = distill(load_distill_config(tmp_path / "distill.yaml"), progress=False)
    names = [p.parent.name for p in straight.students]
    assert names == ["round-1-4steps", "round-2-2steps", "round-3-1steps"]
    kept = {p.parent.name: load_checkpoint(p).ema_state for p in straight.students}
    for name in (names[0], names[2]):
        shutil.rmtree(tmp_path / "run" / name)
    resumed = distill(load_distill_config(tmp_path / "distill.yaml"), resume=True, progress=False)
    assert [p.parent.name for p in resumed.students] == names[1:]
    assert not (tmp_path / "run" / names[0]).exists()
    again = load_checkpoint(resumed.students[-1]).ema_state
    assert all(torch.equal(again[k], v) for k, v in kept[names[2]].items())


def test_a_round_resumed_with_another_teacher_is_refused(tmp_path, teacher, perturbed_unet):
    config = write_config(tmp_path, teacher)

    def interrupt(r, step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(load_distill_config(config), progress=False, on_step=interrupt)
    other = tmp_path / "other.safetensors"
    from ddim.formats.checkpoint import save_weights
    from ddim.models.unet import UNetConfig

    cfg = UNetConfig.from_dict(TINY_MODEL)
    save_weights(other, None, perturbed_unet(cfg, seed=2).state_dict(), model_config=cfg.to_dict(),
                 schedule=SCHED, data_shape=(1, 8, 8), step=0)  # fmt: skip
    moved = load_distill_config(config, [f"distill.teacher={other}"])
    with pytest.raises(ValueError, match="round 1 was started with another teacher"):
        distill(moved, resume=True, progress=False)


def test_bad_teachers_and_configs_are_one_line(tmp_path, teacher) -> None:
    raw = raw_config(tmp_path, teacher)
    raw["data"] = {"kind": "digits", "image_size": 4, "channels": 1}
    with pytest.raises(ValueError, match=r"takes \(1, 8, 8\) images, but data gives \(1, 4, 4\)"):
        distill(distill_config_from_dict(raw), progress=False)
    raw = raw_config(tmp_path, teacher)
    raw["diffusion"] = {"schedule": "linear", "num_timesteps": 1000}
    with pytest.raises(ValueError, match="trained on another noise schedule"):
        distill(distill_config_from_dict(raw), progress=False)
    raw = raw_config(tmp_path, teacher)
    raw["training"]["init"] = "mnist"
    with pytest.raises(ValueError, match="training.init does not apply to distillation"):
        distill_config_from_dict(raw)
    raw = raw_config(tmp_path, teacher)
    raw["distill"]["student_steps"] = 3
    with pytest.raises(ValueError, match="power of hops = 2"):
        distill(distill_config_from_dict(raw), progress=False)
    for key, value, message in [
        ("teacher_solver", "dpmpp-2m-sde", "teacher_solver must be one of ddim, dpmpp-2m, "),
        ("teacher_solver", "edict", "teacher_solver must be one of"),
        ("hops", 1, "distill.hops must be >= 2, got 1"),
        ("teacher_spacing", "uniform", "teacher_spacing must be one of trailing, linspace"),
        ("init", "", "distill.init must be a checkpoint path or name"),
    ]:
        raw = raw_config(tmp_path, teacher)
        raw["distill"][key] = value
        with pytest.raises(ValueError, match=message):
            distill_config_from_dict(raw)
    raw = raw_config(tmp_path, teacher)
    raw["distill"]["init"] = "mnist"
    differ = r"\(attn_resolutions: \[7\], the teacher's \[4\]\)"
    with pytest.raises(ValueError, match=r"distill.init mnist has another network than the "
                                         r"teacher " + differ):  # fmt: skip
        distill(distill_config_from_dict(raw), progress=False)


def test_a_non_finite_loss_names_the_round_and_step(tmp_path, teacher) -> None:
    config = load_distill_config(write_config(tmp_path, teacher, lr=1e30, grad_clip=0.0))
    with pytest.raises(NonFiniteLossError, match=r"round 1: loss .* at step \d"):
        distill(config, progress=False)


def test_ddim_distill_command_and_sample_with_the_students_plan(tmp_path, teacher) -> None:
    config = write_config(tmp_path, teacher, total_steps=1)
    run = subprocess.run([sys.executable, "-m", "ddim.cli", "distill", str(config),
                          "--no-progress"], capture_output=True, text=True, env=ENV,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    student = round_folder(tmp_path / "run", 2, 1) / "student.safetensors"
    assert f"student: {student}" in run.stdout
    out = tmp_path / "s.png"
    sample = subprocess.run([sys.executable, "-m", "ddim.cli", "sample", "--ckpt", str(student),
                             "-n", "2", "--out", str(out)], capture_output=True, text=True,
                            env=ENV, timeout=120)  # fmt: skip
    assert sample.returncode == 0, sample.stderr
    assert "sampling with its own 1-step plan [99]" in sample.stdout
    assert "ddim: 1 model calls a batch" in sample.stdout
    assert out.is_file()
    # where round 2's one step lands against round 1's two: one row, read from its plan
    np.savez(tmp_path / "held.npz", np.random.default_rng(0).integers(0, 256, (8, 8, 8), np.uint8))
    round_1 = round_folder(tmp_path / "run", 1, 2) / "student.safetensors"
    land = [sys.executable, "-m", "ddim.cli", "eval", "landing", str(student), "--data",
            str(tmp_path / "held.npz"), "--out-dir", str(tmp_path / "land")]  # fmt: skip
    done = subprocess.run([*land, "--teacher", str(round_1)], capture_output=True, text=True,
                          env=ENV, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "land/landing.json").read_text())["rows"]
    assert [(r["t"], r["t_end"]) for r in rows] == [(99, -1)]
    assert rows[0]["student"] > 0 and rows[0]["teacher_one_step"] > 0
    bad = subprocess.run([*land, "--teacher", str(student)], capture_output=True, text=True,
                         env=ENV, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert "plan [99] is not every other point of" in bad.stderr
    # --swap-samples: the student's own samples are `ddim sample`'s on the same seeds, in fp32
    swap = subprocess.run([*land, "--teacher", str(round_1), "--seed", "5", "--swap-samples", "3"],
                          capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert swap.returncode == 0, swap.stderr
    same = subprocess.run([sys.executable, "-m", "ddim.cli", "sample", "--ckpt", str(student),
                           "-n", "3", "--seed", "5", "--precision", "fp32", "--out",
                           str(tmp_path / "own.npz")],
                          capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert same.returncode == 0, same.stderr
    own = np.load(tmp_path / "land/student.npz")["samples"]
    np.testing.assert_array_equal(own, np.load(tmp_path / "own.npz")["samples"])
    swapped = np.load(tmp_path / "land/swap-99.npz")["samples"]
    assert swapped.shape == own.shape == (3, 8, 8, 1) and not np.array_equal(swapped, own)


def test_a_solver_teacher_from_another_students_start(tmp_path, teacher, perturbed_unet):
    """Round 1 walked by DPM-Solver++(2M) over 8 points, 4 hops a student step (one round,
    8 -> 2), the student started from ``distill.init``: at a learning rate of 1e-12 the
    student is ``init``'s network, not the teacher's, and it records its 2-step plan. Its
    first loss is the loss of eq. (1) at the solver's landing (:func:`solver_landing`), made
    again here from step 1's batch."""
    from ddim.formats.checkpoint import save_weights
    from ddim.formats.datasets import open_image_set
    from ddim.models.unet import UNet, UNetConfig
    from ddim.train.batches import DataOrder, derive_seed
    from ddim.train.distill import ROUND, round_batch

    cfg = UNetConfig.from_dict(TINY_MODEL)
    init = tmp_path / "init.safetensors"
    start = perturbed_unet(cfg, seed=3).state_dict()
    save_weights(init, None, start, model_config=cfg.to_dict(), schedule=SCHED,
                 data_shape=(1, 8, 8), step=0)  # fmt: skip
    raw = raw_config(tmp_path, teacher, total_steps=1, lr=1e-12, ema_decay=0.0,
                     precision="fp32")  # fmt: skip
    raw["distill"].update(teacher_steps=8, student_steps=2, hops=4, teacher_solver="dpmpp-2m",
                          init=str(init))  # fmt: skip
    config = distill_config_from_dict(raw)
    result = distill(config, progress=False)
    assert [p.parent.name for p in result.students] == ["round-1-2steps"]
    ckpt = load_checkpoint(result.students[0])
    assert ckpt.model_config.sampling_plan == (99, 49)
    assert ckpt.extra["distill"]["teacher_plan"] == [99, 87, 74, 61, 49, 37, 24, 11]
    for k, v in start.items():
        torch.testing.assert_close(ckpt.ema_state[k], v, rtol=0, atol=1e-9)
    assert not torch.equal(ckpt.ema_state["conv_in.weight"],
                           load_checkpoint(teacher).ema_state["conv_in.weight"])  # fmt: skip
    logged = json.loads((result.students[0].parent / "log.jsonl").read_text().splitlines()[0])
    student, teacher_net = UNet(replace(cfg, prediction="v")), UNet(cfg)
    student.load_state_dict(start)
    teacher_net.load_state_dict(load_checkpoint(teacher).ema_state)
    plan, student_plan = (99, 87, 74, 61, 49, 37, 24, 11), (99, 49)
    data, _ = open_image_set(config.data, None)
    rnd = types.SimpleNamespace(index=1, student_plan=student_plan, student=student)
    order = DataOrder(len(data), derive_seed(0, ROUND, 1))
    x0, k, noise, _ = round_batch(config, rnd, 1, data, None, order)
    run = ddim.SamplerOptions(steps=list(plan), solver="dpmpp-2m")
    landing = lambda z: solver_landing(teacher_net.eval(), SCHED, run, z, k, 4)  # noqa: E731
    with torch.no_grad():
        loss = distillation_loss(student.eval(), teacher_net, SCHED, x0, noise,
                                 student_points(plan, student_plan, k), ("eps", "v"), None,
                                 "truncated-snr", landing)  # fmt: skip
    assert logged["step"] == 1
    assert logged["loss"] == pytest.approx(loss.item(), rel=1e-5)
    with torch.no_grad():
        ddim_loss = distillation_loss(student, teacher_net, SCHED, x0, noise,
                                      student_points(plan, student_plan, k), ("eps", "v"), None,
                                      "truncated-snr")  # fmt: skip
    assert abs(ddim_loss.item() - loss.item()) > 1e-3 * loss.item()


# ---------------------------------------------------------------- exact: the Gaussian oracle


def test_a_solver_teachers_landing_is_its_walk_over_each_part() -> None:
    """:func:`solver_landing`: with ``ddim`` it is the per-row DDIM steps of
    :func:`teacher_steps` (1e-12); with DPM-Solver++(2M), 4 hops a student step, each row
    lands where ``ddim.sample`` from that row's student point over that part of the plan
    does (from the top, ending at the part's last point; the last part ends at the data)."""
    sched = ddim.NoiseSchedule.linear()
    oracle = DiagonalGaussian(power_law_spectrum(4), sched)
    g = torch.Generator().manual_seed(4)
    z_t = torch.randn(6, 4, generator=g, dtype=F64)
    k = torch.tensor([0, 1, 1, 0, 1, 0])
    plan = distillation_plans(sched, 4, 2)[0]
    run = ddim.SamplerOptions(steps=list(plan), solver="ddim")
    got = solver_landing(oracle, sched, run, z_t, k, 2)
    want = teacher_steps(oracle, sched, z_t, student_points(plan, (999, 499), k), "eps")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    plan = distillation_plans(sched, 8, 2, hops=4)[0]
    run = ddim.SamplerOptions(steps=list(plan), solver="dpmpp-2m")
    got = solver_landing(oracle, sched, run, z_t, k, 4)
    for row in range(6):
        part = list(plan[4 * k[row] : 4 * k[row] + 5])
        alone = ddim.sample(oracle, z_t[row : row + 1], sched, steps=part, solver="dpmpp-2m",
                            final_step="none" if len(part) == 5 else None)  # fmt: skip
        torch.testing.assert_close(got[row : row + 1], alone, rtol=0, atol=1e-12)
    assert (got - solver_landing(oracle, sched, ddim.SamplerOptions(steps=list(plan)), z_t, k,
                                 4)).abs().max() > 1e-3  # fmt: skip


def test_a_student_of_a_2m_teacher_reaches_its_map_on_the_gaussian_oracle() -> None:
    """One round, 8 -> 2 (4 hops), from the exact ε walked by DPM-Solver++(2M): the v-student's
    map is the teacher's map over the two parts to 1e-6, and that map's W2^2 to the data
    (closed form) is below the 8-step DDIM teacher's: the same calls, a closer target."""
    sched = ddim.NoiseSchedule.linear()
    lam = power_law_spectrum(4)
    oracle = DiagonalGaussian(lam, sched)
    plans = distillation_plans(sched, 8, 2, hops=4)
    run = ddim.SamplerOptions(steps=list(plans[0]), solver="dpmpp-2m")
    eye = torch.eye(4, dtype=F64)
    top = list(plans[0][:5])
    middle = ddim.sample(oracle, eye, sched, steps=top, solver="dpmpp-2m", final_step="none")
    target_gain = ddim.sample(oracle, middle, sched, steps=list(plans[0][4:]),
                              solver="dpmpp-2m").diag()  # fmt: skip
    student, g = PerDirection(plans[1], 4, "v"), torch.Generator().manual_seed(0)

    def landing(k):
        return lambda z: solver_landing(oracle, sched, run, z, k, 4)

    _train_on_oracle(student, oracle, ("eps", "v"), plans[0], lam, "truncated-snr", g, landing)
    with torch.no_grad():
        gain = ddim.sample(student, eye, sched).diag()
    torch.testing.assert_close(gain, target_gain, rtol=1e-6, atol=1e-9)
    ddim_gain = ddim.sample(oracle, eye, sched, steps=list(plans[0])).diag()
    w2 = ((gain.abs() - lam.sqrt()) ** 2).sum().item()
    assert w2 < 0.05 * ((ddim_gain.abs() - lam.sqrt()) ** 2).sum().item()


@pytest.mark.parametrize("k", [None, 0, 1, 2, 3])
def test_a_swapped_step_is_the_teachers_two_on_the_oracle(k) -> None:
    """With the exact ε of N(0, diag(lambda)) as student and teacher, the student's plan with
    step ``k`` taken by the teacher's two is DDIM on the plan with the teacher's midpoint
    put back: ``ddim.sample`` over those timesteps, to rounding in float64."""
    sched = ddim.NoiseSchedule.linear()
    oracle = DiagonalGaussian(power_law_spectrum(4), sched)
    teacher_plan = distillation_plans(sched, 8, 4)[0]
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = swapped_sample(oracle, oracle, sched, x_T, teacher_plan, ("eps", "eps"), k)
    steps = [
        t
        for i, t in enumerate(teacher_plan)
        if i % 2 == 0 or i == 2 * (k or 0) + 1 and k is not None
    ]
    assert len(steps) == 4 + (k is not None)
    want = ddim.sample(oracle, x_T, sched, steps=steps)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="the student has 4 steps; no step 4"):
        swapped_sample(oracle, oracle, sched, x_T, teacher_plan, ("eps", "eps"), 4)


class PerDirection(torch.nn.Module):
    """A v-student with one coefficient per plan point and eigendirection: on diagonal
    Gaussian data every DDIM map is diagonal and linear, so it can match any of them."""

    def __init__(self, plan: tuple[int, ...], dim: int, prediction: str = "v") -> None:
        super().__init__()
        self.row = torch.full((1000,), -1, dtype=torch.long)  # timestep -> its coefficient row
        self.row[list(plan)] = torch.arange(len(plan))
        self.c = torch.nn.Parameter(torch.zeros(len(plan), dim, dtype=F64))
        self.config = types.SimpleNamespace(prediction=prediction, sampling_plan=plan,
                                            num_classes=0)  # fmt: skip

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.c[self.row[t]] * x


@pytest.mark.parametrize(("student_prediction", "weighting"),
                         [("v", "truncated-snr"), ("eps", "snr"), ("v", "landing")])  # fmt: skip
def test_distilled_students_reach_the_teachers_map_on_the_gaussian_oracle(
    student_prediction, weighting
) -> None:
    """Rounds 8 -> 4 -> 2 -> 1 on N(0, diag(lambda)) with the exact eps as the first teacher,
    trained on the trainer's own loss: every student's map (its gains on unit inputs) is the
    teacher's 8-step DDIM map to 1e-6, and its W2^2 to the data is the closed form of that
    map (to 1e-5), sum (|g| - sqrt(lambda))^2, far from the 1-step DDIM map's. v-students under
    Salimans & Ho's weight, and ε-students under the ε-loss."""
    sched = ddim.NoiseSchedule.linear()
    lam = power_law_spectrum(4)
    teacher = DiagonalGaussian(lam, sched)
    plans = distillation_plans(sched, 8, 1)
    eye = torch.eye(4, dtype=F64)
    target_gain = ddim.sample(teacher, eye, sched, steps=list(plans[0])).diag()
    prediction, g = "eps", torch.Generator().manual_seed(0)
    for teacher_plan, student_plan in zip(plans[:-1], plans[1:], strict=True):
        student = PerDirection(student_plan, 4, student_prediction)
        _train_on_oracle(student, teacher, (prediction, student_prediction), teacher_plan,
                         lam, weighting, g)  # fmt: skip
        with torch.no_grad():
            gain = ddim.sample(student, eye, sched).diag()  # its own plan
        torch.testing.assert_close(gain, target_gain, rtol=1e-6, atol=1e-9)
        teacher, prediction = student.requires_grad_(False), student_prediction
    w2 = ((gain.abs() - lam.sqrt()) ** 2).sum().item()
    closed_form = ((target_gain.abs() - lam.sqrt()) ** 2).sum().item()
    assert w2 == pytest.approx(closed_form, rel=1e-5, abs=1e-12)  # gains to 1e-6, so W2 to 1e-5
    one_step = ddim.sample(DiagonalGaussian(lam, sched), eye, sched, steps=[999]).diag()
    assert ((one_step.abs() - lam.sqrt()) ** 2).sum().item() > 10 * closed_form + 1e-3


def _train_on_oracle(
    student, teacher, predictions, teacher_plan, lam, weighting, g, landing=None
) -> None:
    """400 Adam steps of the trainer's loss at batch 256 on N(0, diag(lam)); ``landing(k)``,
    if given, is the teacher's landing for the batch's student steps ``k``."""
    sched = ddim.NoiseSchedule.linear()
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(400):
        k = torch.randint(0, len(student.config.sampling_plan), (256,), generator=g)
        x0 = torch.randn(256, 4, generator=g, dtype=F64) * lam.sqrt()
        noise = torch.randn(256, 4, generator=g, dtype=F64)
        ts = student_points(teacher_plan, student.config.sampling_plan, k)
        loss = distillation_loss(student, teacher, sched, x0, noise, ts, predictions, None,
                                 weighting, None if landing is None else landing(k))  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_reparameterized_student_keeps_its_teachers_map_on_the_gaussian_oracle() -> None:
    """An ε-teacher's 4-step plan, re-parameterized (``teacher_steps == student_steps``),
    then halved 4 -> 2 -> 1 by students of the new kind: every student's map is the exact
    ε-teacher's 4-step DDIM map to 1e-6 (v-students)."""
    student_prediction = "v"
    sched = ddim.NoiseSchedule.linear()
    lam = power_law_spectrum(4)
    teacher, prediction = DiagonalGaussian(lam, sched), "eps"
    plans = distillation_plans(sched, 4, 4) + distillation_plans(sched, 4, 1)[1:]
    assert plans == [(999, 749, 499, 249)] * 2 + [(999, 499), (999,)]
    eye = torch.eye(4, dtype=F64)
    target_gain = ddim.sample(teacher, eye, sched, steps=list(plans[0])).diag()
    g = torch.Generator().manual_seed(1)
    for teacher_plan, student_plan in zip(plans[:-1], plans[1:], strict=True):
        student = PerDirection(student_plan, 4, student_prediction)
        _train_on_oracle(student, teacher, (prediction, student_prediction), teacher_plan, lam,
                         "truncated-snr", g)  # fmt: skip
        with torch.no_grad():
            gain = ddim.sample(student, eye, sched).diag()
        torch.testing.assert_close(gain, target_gain, rtol=1e-6, atol=1e-9)
        teacher, prediction = student.requires_grad_(False), student_prediction


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_reparameterizing_target_is_the_teachers_own_data_prediction(prediction) -> None:
    """With one teacher step per student step, eq. (1) gives back the ε-teacher's x^0 at
    every point of a 4-step plan (the last, to alpha_bar = 1, included), so a student of any
    parameterization whose output is that target takes the teacher's step exactly."""
    sched = ddim.NoiseSchedule.linear()
    plan = distillation_plans(sched, 4, 4)[1]
    g = torch.Generator().manual_seed(2)
    z_t = torch.randn(4, 3, generator=g, dtype=F64)
    t, t_end = student_points(plan, plan, torch.arange(4))
    assert t.tolist() == [999, 749, 499, 249] and t_end.tolist() == [749, 499, 249, -1]

    def teacher(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 0.7 + 0.01 * tt[:, None].to(x.dtype) / 1000

    alpha, sigma = alpha_sigma(sched, t, z_t)
    alpha_end, sigma_end = alpha_sigma(sched, t_end, z_t)
    z_end = teacher_steps(teacher, sched, z_t, (t, t_end), "eps")
    x_target = student_target(z_t, z_end, (alpha, sigma, alpha_end, sigma_end))
    eps_teacher = teacher(z_t, t)
    x0_teacher = (z_t - sigma * eps_teacher) / alpha
    torch.testing.assert_close(x_target, x0_teacher, rtol=1e-9, atol=1e-12)
    eps_target = (z_t - alpha * x_target) / sigma
    eps, x0 = to_pair(from_pair(eps_target, x_target, alpha, sigma, prediction), z_t, alpha,
                      sigma, prediction)  # fmt: skip
    assert (ddim_move(x0, eps, alpha_end, sigma_end) - z_end).abs().max().item() < 1e-12
    for row in range(4):
        want = _ddim_to(teacher, sched, z_t[row : row + 1], [int(t[row]), int(t_end[row])])
        torch.testing.assert_close(z_end[row : row + 1], want, rtol=0, atol=1e-12)
