"""The training loop: exact resume after SIGKILL, clean stop on SIGTERM, non-finite losses,
DDP and gradient accumulation equivalence, configs. Data: scikit-learn's 8x8 digits."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ddim.formats.checkpoint import load_checkpoint, load_pretrained
from ddim.formats.image_sets import ArraySet
from ddim.models.unet import UNet
from ddim.train import __main__ as train_cli
from ddim.train.batches import DataOrder, sample_timesteps, step_batch
from ddim.train.config import config_from_dict, load_config
from ddim.train.loop import NonFiniteLossError, learning_rate, train

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {
        "in_channels": 1,
        "out_channels": 1,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [4],
        "dropout": 0.1,
        "image_size": 8,
    },
    "diffusion": {"schedule": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02},
    "data": {"kind": "digits", "image_size": 8, "channels": 1, "random_flip": True},
    "training": {
        "total_steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 2,
        "ckpt_every": 2,
        "keep_last": 2,
        "sample_every": 0,
        "log_every": 1,
        "ema_decay": 0.9,
    },
}
# One intra-op thread everywhere: the same arithmetic in the test process and in children.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp: Path, name: str = "run", **sections) -> Path:
    raw = {key: {**value, **sections.get(key, {})} for key, value in TINY.items()}
    raw["out_dir"] = str(tmp / name)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def final_states(out_dir: Path, step: int = 6) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(out_dir / "checkpoints" / f"step_{step:07d}.safetensors")
    return {"ema": ckpt.ema_state, "model": ckpt.model_state}


def losses(out_dir: Path) -> list[tuple[int, float]]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def assert_identical(a, b) -> None:
    for which in ("ema", "model"):
        assert a[which].keys() == b[which].keys()
        different = [k for k in a[which] if not torch.equal(a[which][k], b[which][k])]
        assert not different, f"{which} weights differ: {different[:5]}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run, the reference for every resume test."""
    tmp = tmp_path_factory.mktemp("straight")
    torch.set_num_threads(1)
    result = train(load_config(write_config(tmp)), progress=False)
    assert result.step == 6 and result.stopped_by is None
    return tmp / "run"


# A child process that trains and SIGKILLs itself at a chosen point.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from ddim.train import loop as training
    from ddim.train.config import load_config

    config, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    hook = None
    if mode == "after-step":
        hook = lambda step, loss: die() if step == n else None
    else:  # die just before the n-th rename onto latest.json: step files written, pointer old
        real_replace, count = os.replace, [0]
        def replace(src, dst):
            if os.path.basename(dst) == "latest.json":
                count[0] += 1
                if count[0] == n:
                    die()
            real_replace(src, dst)
        os.replace = replace
    training.train(load_config(config), progress=False, on_step=hook)
    """
)


def run_killed(config: Path, mode: str, n: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(config), mode, str(n)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.slow
def test_resume_after_sigkill_between_checkpoints_is_bit_identical(tmp_path, straight):
    config = write_config(tmp_path)
    run_killed(config, "after-step", 5)  # checkpoint at 4, step 5 done but lost
    out = tmp_path / "run"
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert losses(out)[-1][0] == 5

    result = train(load_config(config), resume=True, progress=False)
    assert result.step == 6
    assert_identical(final_states(out), final_states(straight))
    assert losses(out) == losses(straight)  # step 5's orphan record was dropped, then redone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest.json",
        "step_0000004.safetensors",
        "step_0000004.state.pt",
        "step_0000006.safetensors",
        "step_0000006.state.pt",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_inside_a_checkpoint_write(tmp_path, straight):
    config = write_config(tmp_path)
    run_killed(config, "before-pointer", 2)  # step 4's files written, pointer still at 2
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert json.loads((ckpt_dir / "latest.json").read_text())["step"] == 2
    assert any(p.name.startswith(".tmp-latest.json") for p in ckpt_dir.iterdir())
    load_pretrained(ckpt_dir / "step_0000002.safetensors")

    train(load_config(config), resume=True, progress=False)
    assert_identical(final_states(tmp_path / "run"), final_states(straight))
    assert not any(p.name.startswith(".tmp-") for p in ckpt_dir.iterdir())


@pytest.mark.slow
def test_sigterm_checkpoints_then_exits_130(tmp_path):
    config = write_config(tmp_path, training={"total_steps": 100_000, "ckpt_every": 100_000})
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddim.train", str(config), "--no-progress"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "log.jsonl").is_file() or len(losses(out)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    step = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert step == losses(out)[-1][0] >= 3
    assert f"SIGTERM: stopped after step {step}" in stderr
    assert load_checkpoint(out / "checkpoints" / f"step_{step:07d}.safetensors").step == step
    assert not (out / "ema.safetensors").exists()  # only a completed run exports


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, capsys):
    config = write_config(tmp_path, training={"ckpt_every": 1, "warmup_steps": 0})
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2"):
        train(load_config(config, ["training.lr=1e30"]), progress=False)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert json.loads((ckpt_dir / "latest.json").read_text())["step"] == 1
    net, _ = load_pretrained(ckpt_dir / "step_0000001.safetensors", which="model")
    assert all(torch.isfinite(p).all() for p in net.parameters())

    status = train_cli.main([str(config), "--resume", "--no-progress", "-o", "training.lr=1e30"])
    assert status == 2
    assert "error: loss is nan at step 2" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_and_grad_accum_match_one_process(tmp_path):
    """Two gloo processes with half the batch each, and one process with two micro-batches,
    end where one process with the whole batch does (up to float rounding).

    Dropout is off: its masks are drawn inside the model per process. Adam's eps is raised
    to 1e-4 because biases in front of a one-channel-per-group GroupNorm get exactly-zero
    gradients, whose rounding noise Adam with eps=1e-8 would blow up into lr-sized steps.
    """
    same = {"model": {"dropout": 0.0}, "training": {"eps": 1e-4, "total_steps": 4}}
    single = write_config(tmp_path, "single", **same)
    accum = write_config(
        tmp_path, "accum", model=same["model"], training={**same["training"], "grad_accum": 2}
    )
    ddp = write_config(tmp_path, "ddp", **same)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ddim.train",
            str(ddp),
            "--no-progress",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(load_config(single), progress=False)
    train(load_config(accum), progress=False)

    reference = final_states(tmp_path / "single", 4)
    start = final_states(tmp_path / "single", 2)["model"]
    moved = max((reference["model"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3
    for name in ("ddp", "accum"):
        other = final_states(tmp_path / name, 4)
        for which in ("ema", "model"):
            for k, v in reference[which].items():
                torch.testing.assert_close(other[which][k], v, atol=1e-5, rtol=0, msg=name)
    assert len(losses(tmp_path / "ddp")) == 4  # only rank 0 logs


def test_refuses_to_clobber_a_run_and_to_resume_with_other_settings(tmp_path):
    config = write_config(tmp_path, training={"total_steps": 2})
    train(load_config(config), progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint.*--resume"):
        train(load_config(config), progress=False)
    with pytest.raises(ValueError, match="differs .* in training.lr"):
        train(load_config(config, ["training.lr=0.5"]), resume=True, progress=False)
    result = train(load_config(config, ["training.total_steps=3"]), resume=True, progress=False)
    assert result.step == 3


def test_completed_run_exports_ema_weights_and_samples(tmp_path):
    config = write_config(
        tmp_path,
        training={
            "total_steps": 2,
            "sample_every": 2,
            "num_samples": 6,
            "sample_steps": 5,
            "precision": "bf16",
        },
    )
    train(load_config(config), progress=False)
    out = tmp_path / "run"
    net, sched = load_pretrained(out / "ema.safetensors")
    assert sched.num_timesteps == 100 and not net.training
    with torch.no_grad():
        assert torch.isfinite(net(torch.zeros(2, 1, 8, 8), torch.tensor([0, 99]))).all()
    with Image.open(out / "samples" / "step_0000002.png") as grid:
        assert grid.size == (3 * 10 + 2, 2 * 10 + 2) and grid.mode == "L"
    assert load_config(out / "config.yaml") == load_config(config)  # rerun from the run folder


# ------------------------------------------------------------------ pure pieces


def test_data_order_is_a_fresh_permutation_per_epoch_from_any_position():
    order = DataOrder(10, seed=3)
    stream = order.indices(0, 30)
    for epoch in range(3):
        assert sorted(stream[10 * epoch : 10 * epoch + 10].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:20])
    assert torch.equal(DataOrder(10, seed=3).indices(7, 9), stream[7:16])  # across epochs


def test_step_batch_depends_only_on_seed_and_step():
    config = load_config_dict()
    data = ArraySet(torch.linspace(-1, 1, 50 * 64).reshape(50, 1, 8, 8), "ramp")
    a = step_batch(data, DataOrder(50, 0), 7, config, 100)
    b = step_batch(data, DataOrder(50, 0), 7, config, 100)
    c = step_batch(data, DataOrder(50, 0), 8, config, 100)
    assert a[3] is None and b[3] is None  # an unconditional run draws no labels
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    assert not torch.equal(a[2], c[2])


def load_config_dict():
    return config_from_dict({**TINY, "out_dir": "unused"})


def test_antithetic_timesteps_pair_t_with_T_minus_1_minus_t():
    t = sample_timesteps(9, 1000, torch.Generator().manual_seed(0), antithetic=True)
    assert t.shape == (9,) and t.min() >= 0 and t.max() <= 999
    assert torch.equal(t[:4] + t[5:9], torch.full((4,), 999))
    plain = sample_timesteps(1000, 10, torch.Generator().manual_seed(0), antithetic=False)
    assert set(plain.tolist()) == set(range(10))


def test_learning_rate_warmup():
    assert [learning_rate(s, 1e-3, 4) for s in (1, 2, 4, 9)] == [2.5e-4, 5e-4, 1e-3, 1e-3]
    assert learning_rate(1, 1e-3, 0) == 1e-3


def test_learning_rate_cooldown_by_hand():
    """Warm-up over 2 updates, cooldown over the last 3 of 10: steps of lr / 4 down to lr / 4."""
    rates = [learning_rate(s, 1.0, 2, 3, 10) for s in range(1, 11)]
    assert rates == [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert learning_rate(2, 1.0, 4, 2, 3) == 0.5  # the lower of warm-up and cooldown
    with pytest.raises(ValueError, match="training.cooldown_steps=7 exceeds total_steps=6"):
        config_from_dict({**TINY, "training": {**TINY["training"], "cooldown_steps": 7}})


def test_a_cooldown_added_on_resume_is_the_run_planned_with_it(tmp_path):
    """A constant-rate run resumed with a cooldown that starts after the resumed step gives
    the weights of a run planned with that cooldown from the start; once a cooldown has
    begun, its plan may not change."""
    cool = {"total_steps": 6, "cooldown_steps": 3}
    once = write_config(tmp_path, "once", training=cool)
    train(load_config(once), progress=False)
    split = write_config(tmp_path, training={"total_steps": 3})
    train(load_config(split), progress=False)
    resumed = ["training.total_steps=6", "training.cooldown_steps=3"]
    train(load_config(split, resumed), resume=True, progress=False)
    assert_identical(final_states(tmp_path / "once"), final_states(tmp_path / "run"))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="cannot resume at step 6 .*cooldown begins at step 4"):
        train(load_config(split, ["training.total_steps=8", "training.cooldown_steps=3"]),
              resume=True, progress=False)  # fmt: skip


# ------------------------------------------------------------------ configs


def test_overrides_are_typed_and_unknown_keys_named(tmp_path):
    config = write_config(tmp_path)
    cfg = load_config(
        config,
        [
            "training.lr=5e-4",
            "model.ch_mult=[1, 2]",
            "training.total_steps=1e4",
            "out_dir=elsewhere",
        ],
    )
    assert cfg.training.lr == 5e-4 and cfg.model.ch_mult == (1, 2)
    assert cfg.training.total_steps == 10_000 and cfg.out_dir == "elsewhere"
    with pytest.raises(ValueError, match="unknown config key 'training.lrr'"):
        load_config(config, ["training.lrr=1"])
    with pytest.raises(ValueError, match="unknown config key 'optim.lr'"):
        load_config(config, ["optim.lr=1"])
    with pytest.raises(ValueError, match="'training.total_steps' .* must be int"):
        load_config(config, ["training.total_steps=2.5"])
    with pytest.raises(ValueError, match="training.batch_size=8 is not divisible by grad_accum=3"):
        load_config(config, ["training.grad_accum=3"])
    raw = yaml.safe_load(config.read_text())
    raw["data"]["flip"] = True
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=f"unknown config key 'data.flip' in {config}"):
        load_config(config)


def test_shipped_configs():
    cifar = load_config(REPO / "configs" / "cifar10.yaml")
    celeba = load_config(REPO / "configs" / "celeba.yaml")
    for cfg in (cifar, celeba):
        tc = cfg.training
        assert (tc.lr, tc.batch_size, tc.ema_decay, tc.grad_clip) == (2e-4, 128, 0.9999, 1.0)
        assert (cfg.model.ch, cfg.model.num_res_blocks, cfg.model.dropout) == (128, 2, 0.1)
        assert cfg.model.attn_resolutions == (16,) and cfg.data.random_flip
        assert (cfg.diffusion.schedule, cfg.diffusion.num_timesteps) == ("linear", 1000)
        assert (cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1e-4, 0.02)
    assert cifar.model.ch_mult == (1, 2, 2, 2) and cifar.model.image_size == 32
    assert celeba.model.ch_mult == (1, 2, 2, 2, 4) and celeba.model.image_size == 64

    mnist = load_config(REPO / "configs" / "mnist.yaml")
    assert (mnist.data.kind, mnist.data.start, mnist.data.stop) == ("mnist", 0, 9000)
    assert (mnist.model.in_channels, mnist.model.image_size) == (1, 28)
    assert not mnist.data.random_flip
    with torch.device("meta"):
        n_params = sum(p.numel() for p in UNet(mnist.model).parameters())
    assert n_params * 4 < 20e6
    assert math.isclose(mnist.diffusion.beta_end, 0.02) and mnist.diffusion.num_timesteps == 1000


def test_channels_last_trains_the_same_model_up_to_rounding(tmp_path):
    """channels_last changes the memory layout only: without dropout (whose masks follow the
    memory order) each step's loss matches the contiguous run's to float rounding, and a
    resumed channels_last run is bit-identical to an uninterrupted one."""
    no_dropout = {"dropout": 0.0}
    plain = write_config(tmp_path, "plain", model=no_dropout)
    train(load_config(plain), progress=False)
    config = write_config(
        tmp_path, model=no_dropout, training={"channels_last": True, "total_steps": 3}
    )
    train(load_config(config), progress=False)
    train(load_config(config, ["training.total_steps=6"]), resume=True, progress=False)
    cl, ref = losses(tmp_path / "run"), losses(tmp_path / "plain")
    assert [s for s, _ in cl] == [s for s, _ in ref] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(cl, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    once = write_config(tmp_path, "once", model=no_dropout, training={"channels_last": True})
    train(load_config(once), progress=False)
    assert_identical(final_states(tmp_path / "once"), final_states(tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("setting", [{"precision": "bf16"}, {"compile": True}])
def test_resume_is_bit_identical_within_a_speed_setting(tmp_path, setting):
    """Issue 9: bf16 autocast and torch.compile change the arithmetic, not the run: 3 steps
    and a resume to 6 give the weights of 6 uninterrupted steps, bit for bit (the master
    weights, EMA and loss stay in float32)."""
    once = write_config(tmp_path, "once", training=setting)
    train(load_config(once), progress=False)
    split = write_config(tmp_path, training={**setting, "total_steps": 3})
    train(load_config(split), progress=False)
    train(load_config(split, ["training.total_steps=6"]), resume=True, progress=False)
    a, b = final_states(tmp_path / "once"), final_states(tmp_path / "run")
    assert_identical(a, b)
    assert all(v.dtype == torch.float32 for v in a["model"].values() if v.is_floating_point())
    assert all(math.isfinite(loss) for _, loss in losses(tmp_path / "run"))


def test_a_run_may_resume_in_another_precision_and_layout(tmp_path, capsys):
    """A run started in fp32 may go on in bf16 and channels-last (the speed setting of
    another machine): the resume says so, the steps already taken are untouched, and the
    steps after it follow the fp32 run's losses up to bf16's rounding."""
    no_dropout = {"dropout": 0.0}
    plain = write_config(tmp_path, "plain", model=no_dropout)
    train(load_config(plain), progress=False)
    split = write_config(tmp_path, model=no_dropout, training={"total_steps": 3})
    train(load_config(split), progress=False)
    capsys.readouterr()
    faster = ["training.total_steps=6", "training.precision=bf16", "training.channels_last=true"]
    train(load_config(split, faster), resume=True, progress=False)
    said = capsys.readouterr().err
    assert "from step 3 (training.channels_last: False -> True; " in said
    assert "training.precision: fp32 -> bf16)" in said
    resumed, ref = losses(tmp_path / "run"), losses(tmp_path / "plain")
    assert [s for s, _ in resumed] == [s for s, _ in ref] == [1, 2, 3, 4, 5, 6]
    assert resumed[:3] == ref[:3]
    for (_, a), (_, b) in zip(resumed[3:], ref[3:], strict=True):
        assert a != b and a == pytest.approx(b, rel=2e-2)
    with pytest.raises(ValueError, match="differs .* in training.ema_decay"):
        train(load_config(split, ["training.ema_decay=0.5"]), resume=True, progress=False)


def test_unknown_training_precision_is_refused(tmp_path):
    config = write_config(tmp_path, training={"precision": "fp8"})
    with pytest.raises(ValueError, match="training.precision must be one of fp32, bf16"):
        load_config(config)


def test_min_snr_weights_by_hand():
    """At t = 0, alpha_bar = 1 - 1e-4, so SNR = 9999 and w = 5 / 9999; where SNR < 5 the
    weight is 1; the weighted loss is the batch mean of weight x per-sample MSE."""
    from ddim.schedule import NoiseSchedule
    from ddim.train.loss import diffusion_loss, loss_weights

    alpha_bar = NoiseSchedule.linear(1000, 1e-4, 0.02).alpha_bar
    t = torch.tensor([0, 300, 999])
    w = loss_weights(t, alpha_bar, "min-snr", 5.0)
    assert w[0].item() == pytest.approx(5 / 9999, rel=1e-6)
    assert alpha_bar[300] / (1 - alpha_bar[300]) < 5 and w[1:].tolist() == [1.0, 1.0]
    assert loss_weights(t, alpha_bar, "simple", 5.0) is None

    def zero(x, t):
        return torch.zeros_like(x)

    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    per_sample = noise.pow(2).flatten(1).mean(1)
    weighted = diffusion_loss(zero, x0, t, noise, alpha_bar, w)
    assert weighted.item() == pytest.approx((w * per_sample).mean().item(), rel=1e-6)
    plain = diffusion_loss(zero, x0, t, noise, alpha_bar)
    assert plain.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_min_snr_config_is_checked(tmp_path):
    config = write_config(tmp_path, training={"loss_weighting": "min-snr", "min_snr_gamma": 2})
    assert load_config(config).training.min_snr_gamma == 2.0
    with pytest.raises(ValueError, match="training.loss_weighting must be one of simple, min-snr"):
        load_config(write_config(tmp_path, "bad", training={"loss_weighting": "snr"}))


def test_the_official_eps_key_is_adams_epsilon():
    """Adam's epsilon is training.adam_eps; the official configs' training.eps still loads."""
    raw = {**TINY, "out_dir": "unused", "training": {**TINY["training"], "eps": 1e-6}}
    assert config_from_dict(raw).training.adam_eps == 1e-6
    both = {**raw, "training": {**raw["training"], "adam_eps": 1e-7}}
    with pytest.raises(ValueError, match="sets both training.eps and training.adam_eps"):
        config_from_dict(both)
