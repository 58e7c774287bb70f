"""diffusers interop: the adapter, exact weight conversion both ways, and pipeline folders."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import ddim
from ddim.formats import diffusers as interop
from ddim.formats import diffusers_folder
from ddim.guidance import guided as guided_eps
from ddim.models.oracle import GaussianMixture
from ddim.models.unet import UNetConfig
from ddim.parameterization import Reparameterized

diffusers = pytest.importorskip("diffusers")

CONFIG = UNetConfig(
    in_channels=3,
    out_channels=3,
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(8, 4),
    dropout=0.0,
    image_size=16,
)


def inputs(config: UNetConfig = CONFIG, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    return torch.randn(shape, generator=g), torch.tensor([0, 517, 999][:batch])


def test_diffusers_config_matches_the_paper_layout() -> None:
    kwargs = interop.diffusers_unet_config(CONFIG)
    assert kwargs["block_out_channels"] == [32, 64, 64]
    assert kwargs["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    assert kwargs["up_block_types"] == ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    assert kwargs["attention_head_dim"] is None
    assert (kwargs["flip_sin_to_cos"], kwargs["freq_shift"]) == (False, 1)
    assert (kwargs["norm_eps"], kwargs["downsample_padding"]) == (1e-6, 0)
    assert interop.unet_config_from_diffusers(kwargs) == CONFIG


def test_ours_to_diffusers_gives_the_same_eps(perturbed_unet) -> None:
    model = perturbed_unet(CONFIG)
    unet = interop.to_diffusers_unet(model)
    assert isinstance(unet, diffusers.UNet2DModel)
    x, t = inputs()
    with torch.no_grad():
        ours, theirs = model(x, t), interop.from_diffusers(unet)(x, t)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_diffusers_to_ours_gives_the_same_eps() -> None:
    torch.manual_seed(3)
    unet = diffusers.UNet2DModel(**interop.diffusers_unet_config(CONFIG)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = interop.unet_from_diffusers(unet)
    assert model.config == CONFIG
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), unet(x, t).sample, atol=1e-5, rtol=0)


def test_conditional_unets_convert_both_ways_with_their_class_embedding(perturbed_unet) -> None:
    """label_emb is diffusers' class_embedding with num_class_embeds = K + 1 (K the null
    label), and diffusers' CFG combination of the two halves is our guided eps."""
    cond = UNetConfig(**{**CONFIG.to_dict(), "num_classes": 4})
    model = perturbed_unet(cond)
    with torch.no_grad():
        model.label_emb.weight.normal_(0, 0.5)
    kwargs = interop.diffusers_unet_config(cond)
    assert kwargs["num_class_embeds"] == 5 and kwargs.get("class_embed_type") is None
    assert interop.unet_config_from_diffusers(kwargs) == cond
    unet = interop.to_diffusers_unet(model)
    adapter = interop.from_diffusers(unet)
    assert adapter.num_classes == 4
    # in float64, so that only the two libraries' float32 timestep embeddings differ (by
    # ~6e-7 at the output); in float32 the CPU's kernels add ~1e-5 (AVX2), as much as the
    # tolerance, while a wrong key or layout would be off by far more
    model, unet = model.double(), unet.double()
    x, t = inputs()
    x = x.double()
    y = torch.tensor([0, 3, 4])
    with torch.no_grad():
        ours = model(x, t, y)
        torch.testing.assert_close(unet(x, t, class_labels=y).sample, ours, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapter(x, t), model(x, t), atol=1e-5, rtol=0)
        back = interop.unet_from_diffusers(unet)
        assert back.config == cond
        assert torch.equal(back.double()(x, t, y), model(x, t, y))
        # a diffusers pipeline's classifier-free guidance: [uncond, cond] in one batch
        labels = torch.tensor([1, 2, 0])
        pair = unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat(
            [torch.full_like(labels, 4), labels])).sample  # fmt: skip
        e_null, e_cond = pair.chunk(2)
        theirs = e_null + 2.5 * (e_cond - e_null)
        guided = guided_eps(model, ddim.NoiseSchedule.linear(), 3, y=labels, guidance=2.5)
        torch.testing.assert_close(guided(x, t), theirs, atol=1e-5, rtol=0)


def test_adapter_drives_the_sampler(perturbed_unet) -> None:
    model = perturbed_unet(CONFIG)
    eps_model = interop.from_diffusers(interop.to_diffusers_unet(model))
    sched = ddim.NoiseSchedule.linear(1000)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ours = ddim.sample(model, x_T, sched, steps=4)
    theirs = ddim.sample(eps_model, x_T, sched, steps=4)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # float64 input: the adapter casts it to the UNet's dtype
    assert eps_model(x_T.double(), torch.tensor([3, 4])).dtype == torch.float32


@pytest.mark.parametrize(
    "schedule",
    [
        ddim.NoiseSchedule.linear(1000, 1e-4, 0.02),
        ddim.NoiseSchedule.cosine(200),
        ddim.NoiseSchedule.from_betas(torch.linspace(1e-3, 0.05, 50) ** 1.5),
    ],
    ids=["linear", "cosine", "custom"],
)
def test_pipeline_folder_round_trip(tmp_path, schedule, perturbed_unet) -> None:
    model = perturbed_unet(CONFIG)
    diffusers_folder.save_diffusers(model, schedule, tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == [
        "model_index.json",
        "scheduler",
        "unet",
    ]
    back, back_schedule = diffusers_folder.load_diffusers(tmp_path / "pipe")
    assert torch.equal(back_schedule.betas, schedule.betas)
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.scheduler.config.num_train_timesteps == schedule.num_timesteps
    with pytest.raises(FileExistsError, match="already exists"):
        diffusers_folder.save_diffusers(model, schedule, tmp_path / "pipe")
    diffusers_folder.save_diffusers(
        perturbed_unet(CONFIG, seed=1), schedule, tmp_path / "pipe", overwrite=True
    )
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("prediction", "theirs"), [("eps", "epsilon"), ("v", "v_prediction"), ("x", "sample")]
)
def test_the_parameterization_is_the_schedulers_prediction_type(
    tmp_path, perturbed_unet, prediction, theirs
) -> None:
    model = perturbed_unet(replace(CONFIG, prediction=prediction))
    schedule = ddim.NoiseSchedule.linear(1000)
    diffusers_folder.save_diffusers(model, schedule, tmp_path / "pipe")
    written = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert written["prediction_type"] == theirs
    back, _ = diffusers_folder.load_diffusers(tmp_path / "pipe")
    assert back.config == model.config
    # a plain UNet folder with a schedule given still reads the prediction beside it
    interop.to_diffusers_unet(model).save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "scheduler_config.json").write_text(json.dumps(written))
    plain, _ = diffusers_folder.load_diffusers(tmp_path / "plain", schedule=schedule)
    assert plain.config.prediction == prediction


@pytest.mark.parametrize("prediction", ["eps", "v", "x"])
def test_diffusers_samples_our_prediction_type_as_the_oracle(prediction) -> None:
    # diffusers' DDIMScheduler, configured by the scheduler config we write, reads the raw
    # output of an eps-oracle rewrapped as v or x as what it is: DDIM's path of the oracle.
    sched = ddim.NoiseSchedule.linear()
    means = torch.tensor([[1.5, -0.5, 0.0], [-1.0, 1.0, 0.5]], dtype=torch.float64)
    oracle = GaussianMixture(means, 0.3, torch.tensor([0.6, 0.4], dtype=torch.float64), sched)
    network = Reparameterized(oracle, sched, prediction)
    config = json.loads(json.dumps(diffusers_folder.scheduler_config(sched, prediction)))
    ref = diffusers.DDIMScheduler(
        **config, set_alpha_to_one=True, clip_sample=False, timestep_spacing="leading"
    )
    ref.set_timesteps(10)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x_T
    for t in ref.timesteps:
        x = ref.step(network(x, t.expand(8)), t, x).prev_sample
    want = ddim.sample(oracle, x_T, sched, steps=10)
    # diffusers keeps alpha_bar in float32, we in float64: equal to float32 rounding
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
    assert (want - x_T).abs().max().item() > 0.5


def test_plain_unet_folder_with_scheduler_config(tmp_path, perturbed_unet) -> None:
    model = perturbed_unet(CONFIG)
    interop.to_diffusers_unet(model).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json is missing"):
        diffusers_folder.load_diffusers(tmp_path)
    sched = ddim.NoiseSchedule.linear(500, 2e-4, 0.03)
    back, _ = diffusers_folder.load_diffusers(tmp_path, schedule=sched)
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(back(x, t), model(x, t), atol=0, rtol=0)
    (tmp_path / "scheduler_config.json").write_text(
        json.dumps(diffusers_folder.scheduler_config(sched))
    )
    assert torch.equal(diffusers_folder.load_diffusers(tmp_path)[1].betas, sched.betas)


def test_incompatible_diffusers_models_are_refused() -> None:
    unet = diffusers.UNet2DModel(
        sample_size=8,
        block_out_channels=(32, 64),
        norm_num_groups=32,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(ValueError) as info:
        interop.unet_from_diffusers(unet)
    message = str(info.value)
    for problem in ("flip_sin_to_cos=True", "freq_shift=0", "downsample_padding=1", "norm_eps"):
        assert problem in message
    with pytest.raises(ValueError, match="ch_mult"):
        interop.diffusers_unet_config(
            UNetConfig(ch=32, ch_mult=(2, 2), attn_resolutions=(), image_size=8)
        )
    with pytest.raises(ValueError, match="prediction_type is 'score'; ddim reads epsilon, "):
        diffusers_folder.prediction_from_scheduler_config({"prediction_type": "score"})


def test_missing_diffusers_is_a_clear_import_error(monkeypatch, perturbed_unet) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'ddim\[diffusers\]'"):
        interop.to_diffusers_unet(perturbed_unet(CONFIG))


@pytest.mark.slow
def test_core_package_never_imports_diffusers() -> None:
    code = (
        "import sys, ddim, ddim.cli, ddim.formats.diffusers, ddim.formats.diffusers_folder, "
        "ddim.workflows, "
        "ddim.formats.convert, ddim.formats.images; "
        "print('diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
