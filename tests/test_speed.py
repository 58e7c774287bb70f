"""The fastest measured setting (:func:`ddim.speed.fastest`): the choice against figures
worked out by hand, what it learns from a finished job, its record on disk, and that every
setting it can pick computes the same eps (rows split or padded, compiled) to rounding."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from ddim import speed, workflows
from ddim.speed import choice, record
from ddim.speed.prepared import Rows, Setting, prepare

JOB = choice.Job(rows=64, batch=64, calls=800)


def test_too_few_calls_run_eager_without_measuring() -> None:
    setting, why = choice.choose(choice.Job(64, 64, 50), choice.Measured())
    assert setting == Setting() and why == "50 model calls are too few to repay compiling"


def test_a_first_compilation_may_cost_a_tenth_of_the_eager_job_more_than_it_saves() -> None:
    # 800 x (0.15 - 0.92 * 0.15) = 9.6 s saved <= 30 s (prior cold compile) - 12 s (10 % of
    # the eager 120 s): eager.
    measured = choice.Measured(eager=0.15, eager_channels_last=0.34)
    setting, why = choice.choose(JOB, measured)
    assert setting == Setting()
    assert "800 calls x (0.150 - 0.138) s = 9.6 s saved <= 30.0 s to compile - 12.0 s" in why
    # 1300 calls save 15.6 s > 30 - 19.5 s.
    setting, _ = choice.choose(choice.Job(64, 64, 1300), measured)
    assert setting == Setting(channels_last=True, compile=True, rows=64)


def test_a_warm_cache_costs_its_measured_start() -> None:
    warm = choice.Measured(eager=0.15, compiled=0.14, compile_first=30.0, compile_again=3.0)
    setting, why = choice.choose(JOB, warm)  # 800 x 0.01 = 8 s > 3 s
    assert setting.compile and "8.0 s saved > 3.0 s to compile (measured here)" in why
    slow = choice.Measured(eager=0.15, compiled=0.149, compile_first=30.0, compile_again=3.0)
    assert not choice.choose(JOB, slow)[0].compile  # 0.8 s < 3 s
    unknown = choice.Measured(eager=0.15, compiled=0.14, compile_first=30.0)  # prior warm: 5 s
    assert "8.0 s saved > 5.0 s" in choice.choose(JOB, unknown)[1]


def test_eager_takes_the_faster_layout_and_the_faster_row_count() -> None:
    few = choice.Job(rows=128, batch=64, calls=10)
    cl = choice.Measured(eager=0.30, eager_channels_last=0.25, compile_first=1.0, compile_again=99)
    assert choice.choose(choice.Job(64, 64, 300), cl)[0] == Setting(channels_last=True)
    pieces = choice.Measured(eager=0.62, eager_channels_last=0.62, pieces=0.51)
    assert choice.choose(few, pieces)[0] == Setting(rows=64)
    assert choice.choose(few, choice.Measured(eager=0.5, pieces=0.6))[0] == Setting()


def test_learning_from_finished_jobs() -> None:
    setting = Setting(channels_last=True, compile=True, rows=64)
    first = choice.learn(choice.Measured(eager=0.15), setting, 31.0, 31.0 + 299 * 0.12, 300)
    assert first.compile_first == 31.0 and first.compile_again is None
    assert first.compiled == pytest.approx(0.12)
    again = choice.learn(first, setting, 2.5, 2.5 + 299 * 0.11, 300)
    assert (again.compile_first, again.compile_again) == (31.0, 2.5)
    assert again.compiled == pytest.approx(0.11)
    eager = choice.learn(first, Setting(), None, 45.0, 300)  # a whole job's time per call
    assert eager == dataclasses.replace(first, eager=0.15)
    pieces = choice.learn(first, Setting(rows=64), None, 30.0, 300)
    assert pieces.pieces == pytest.approx(0.1) and pieces.eager == 0.15
    assert choice.learn(first, Setting(), None, 99.0, 100) == first  # start-up dominates


def test_the_record_round_trips_and_survives_damage() -> None:
    m = choice.Measured(eager=0.1, pieces=0.2, compile_first=30.0)
    record.save("a", m)
    record.save("b", choice.Measured(eager=0.5))
    assert record.load("a") == m and record.load("b").eager == 0.5
    assert record.load("c") == choice.Measured()
    assert json.loads(record.path().read_text())["a"]["pieces"] == 0.2
    record.path().write_text("{not json")
    assert record.load("a") == choice.Measured()


def test_rows_split_and_pad_without_changing_eps(perturbed_unet) -> None:
    model = perturbed_unet().double()
    seen: list[int] = []

    def counted(x, t, *y):
        seen.append(x.shape[0])
        return model(x, t, *y)

    x = torch.randn(7, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 5, 99, 400, 999, 3, 750])
    with torch.no_grad():
        want = model(x, t)
        split = Rows(counted, 3)(x, t)
        assert seen == [3, 3, 1]
        padded = Rows(counted, 3, pad=True)(x, t)
        assert seen[3:] == [3, 3, 3]
    torch.testing.assert_close(split, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded, want, rtol=0, atol=1e-12)


def test_the_compiled_setting_computes_the_same_eps(perturbed_unet) -> None:
    model = perturbed_unet()
    fast = prepare(model, Setting(channels_last=True, compile=True, rows=4))
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 5, 99, 400, 999, 3])
    with torch.no_grad():
        want, got = model(x, t), fast(x, t)
    assert got.shape == want.shape and fast.seconds > 0 and fast.config == model.config
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_auto_measures_once_then_samples_like_eager(perturbed_unet, sched, monkeypatch) -> None:
    monkeypatch.setattr(choice, "MIN_CALLS", 1)
    model = perturbed_unet()
    options = workflows.SamplerOptions(steps=4)
    kwargs = {"options": options, "batch_size": 2, "seed": 3}
    want = workflows.generate(model, sched, 3, (1, 8, 8), **kwargs)
    auto = speed.fastest(model, sched, 3, (1, 8, 8), batch_size=2, options=options)
    start = time.perf_counter()
    got = workflows.generate(auto.model, sched, 3, (1, 8, 8), **kwargs)
    auto.learn(time.perf_counter() - start)  # the job's figures, for the next choice
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # either layout, to rounding
    (entry,) = json.loads(record.path().read_text()).values()
    assert entry["eager"] > 0 and entry["eager_channels_last"] > 0
    again = speed.fastest(model, sched, 3, (1, 8, 8), batch_size=2, options=options)
    assert again.measured == record.load(again.key) and "8 calls x" in again.why
    assert not again.setting.compile


def test_auto_runs_a_plain_function_as_given(sched, eps_model) -> None:
    def fn(x, t):
        return eps_model(x, t)

    assert speed.fastest(fn, sched, 1000, (3, 4, 4)).model is fn


def test_compiled_kernels_go_to_the_ddim_cache_unless_the_user_chose(monkeypatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from ddim import cache
    from ddim.speed.prepared import INDUCTOR_CACHE, compile_cache_dir

    monkeypatch.setenv(INDUCTOR_CACHE, default_cache_dir())  # what inductor writes there
    assert compile_cache_dir() == cache.cache_dir() / "inductor"
    monkeypatch.setenv(INDUCTOR_CACHE, "/somewhere/else")
    assert str(compile_cache_dir()) == "/somewhere/else"


def test_a_guided_job_of_any_size_measures_whether_to_split_its_rows(
    perturbed_unet, tiny_config, sched
) -> None:
    model = perturbed_unet(dataclasses.replace(tiny_config, num_classes=3))
    options = workflows.SamplerOptions(steps=4, guidance=2.0)
    labels = torch.tensor([0, 1, 2, 0])
    auto = speed.fastest(model, sched, 4, (1, 8, 8), batch_size=4, options=options)
    assert auto.calls == 4 < choice.MIN_CALLS and auto.measured.pieces is not None
    assert auto.setting.rows in (None, 4) and not auto.setting.compile
    kwargs = {"options": options, "labels": labels, "batch_size": 4}
    want = workflows.generate(model, sched, 4, (1, 8, 8), **kwargs)
    got = workflows.generate(auto.model, sched, 4, (1, 8, 8), **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
