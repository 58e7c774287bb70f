"""The bundled distilled students: each loads from its name, samples with the plan it was
distilled for, records the chain's config, stores 16-bit weights, and keeps its recorded
FD-MNIST at its own few calls (against the held-out statistics in tests/data)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import ddim
from ddim.eval import metrics
from ddim.formats.checkpoint import BUNDLED, read_metadata
from ddim.train.distill_config import distill_config_from_dict, load_distill_config
from ddim.workflows import SamplerOptions, generate

REPO = Path(__file__).resolve().parent.parent
HELDOUT_STATS = REPO / "tests" / "data" / "mnist-heldout-stats.npz"


class Student(NamedTuple):
    """What a bundled student records: its round, its plan (from the top timestep), its
    teacher's plan, what it predicts, a bound on its FD-MNIST at n = 250, and the --set
    overrides of configs/mnist-distill.yaml it was made with. The bounds leave 5 % over the
    FD measured at n = 250 (seeds 0..249, against HELDOUT_STATS), which sits above the
    n = 1,000 figures of docs/models/students.md: mnist-4step 149.2 (91.3 at n = 1,000),
    mnist-2step 169.7 (106.5); the teacher at DDIM-10: 139.3 and 98.5."""

    round: int
    plan: list[int]
    teacher_plan: list[int]
    prediction: str
    fd_bound: float
    overrides: dict[str, object]


STUDENTS = {
    "mnist-4step": Student(1, [999, 749, 499, 249], [999, 874, 749, 624, 499, 374, 249, 124],
                           "eps", 157.0, {
        "distill.teacher": "training-state/mnist-distill/round-3-8steps/student.safetensors",
        "distill.teacher_steps": 8, "distill.student_steps": 4, "training.precision": "fp32",
        "training.total_steps": 3000, "training.cooldown_steps": 3000,
    }),
    "mnist-2step": Student(1, [999, 466], [999, 932, 866, 799, 733, 666, 599, 533, 466, 400,
                                           333, 266, 200, 133, 67, 0], "v", 178.5, {
        "distill.teacher_steps": 16, "distill.student_steps": 2, "distill.hops": 8,
        "distill.teacher_solver": "unipc", "distill.teacher_spacing": "linspace",
        "distill.init": "runs/exp/v-long/halve/round-1-2steps/student.safetensors",
        "distill.prediction": "v", "training.precision": "fp32", "training.total_steps": 2000,
        "training.cooldown_steps": 2000,
    }),
}  # fmt: skip


def test_every_bundled_student_is_tested_here() -> None:
    assert sorted(n for n in BUNDLED if "step" in n) == sorted(STUDENTS)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_is_small_and_records_its_round_and_plan(name: str) -> None:
    student = STUDENTS[name]
    asset = importlib.resources.files("ddim") / "assets" / f"{name}.safetensors"
    assert asset.stat().st_size < 6 * 2**20  # 2.73M parameters in 16 bits
    meta = read_metadata(name)
    assert meta["extra"]["weight_dtype"] == "fp16"
    record = meta["extra"]["distill"]
    assert record["round"] == student.round
    assert record["student_plan"] == student.plan
    assert record["teacher_plan"] == student.teacher_plan
    model, sched = ddim.load_pretrained(name)
    assert model.config.sampling_plan == tuple(student.plan)
    assert model.config.prediction == student.prediction
    assert sched.num_timesteps == 1000


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_was_distilled_by_configs_mnist_distill_yaml(name: str) -> None:
    """The chain's config with the overrides its card gives, the run folder aside (the
    rounds ran in training-state/ and runs/)."""
    trained = distill_config_from_dict(read_metadata(name)["extra"]["distill_config"]).to_dict()
    overrides = [f"{key}={value}" for key, value in STUDENTS[name].overrides.items()]
    shipped = load_distill_config(REPO / "configs" / "mnist-distill.yaml", overrides).to_dict()
    assert {**trained, "out_dir": None} == {**shipped, "out_dir": None}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_samples_its_own_plan_unless_told_otherwise(name: str) -> None:
    model, sched = ddim.load_pretrained(name)
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    own = ddim.sample(model, x_T, sched)
    torch.testing.assert_close(own, ddim.sample(model, x_T, sched,
                                                steps=model.config.sampling_plan),
                               rtol=0, atol=0)  # fmt: skip
    with pytest.warns(UserWarning, match="this model was distilled for"):
        ddim.sample(model, x_T, sched, steps=2 * len(model.config.sampling_plan))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_keeps_its_recorded_fd_at_its_own_calls(name: str) -> None:
    model, sched = ddim.load_pretrained(name)
    x = generate(model, sched, 250, (1, 28, 28), seed=0, batch_size=125,
                 options=SamplerOptions(steps=model.config.sampling_plan))  # fmt: skip
    stats = metrics.FeatureStats.from_features(metrics.feature_extractor("mnist")(x))
    fd = stats.frechet_distance(metrics.FeatureStats.load(HELDOUT_STATS))
    assert fd < STUDENTS[name].fd_bound
