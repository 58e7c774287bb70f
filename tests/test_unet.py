"""Tests for the DDPM U-Net: official layout, shapes, embedding values, config handling."""

import json
import re

import pytest
import torch

from ddim.models import UNet, UNetConfig, timestep_embedding

CIFAR10 = UNetConfig(
    in_channels=3,
    out_channels=3,
    ch=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    image_size=32,
)
MNIST_SMALL = UNetConfig(
    in_channels=1,
    out_channels=1,
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(7,),
    dropout=0.0,
    image_size=28,
)
TINY_RGB = UNetConfig(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0, image_size=32
)


def build(config: UNetConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(config).eval()


@pytest.fixture(scope="module")
def cifar_meta() -> UNet:
    with torch.device("meta"):
        return UNet(CIFAR10)


def test_official_cifar10_parameter_count(cifar_meta):
    assert sum(p.numel() for p in cifar_meta.parameters()) == 35_746_307


def test_official_cifar10_key_names(cifar_meta):
    keys = set(cifar_meta.state_dict())
    expected = [
        "temb.dense.0.weight",
        "temb.dense.1.bias",
        "conv_in.weight",
        "down.0.block.0.norm1.weight",
        "down.0.block.0.conv1.weight",
        "down.0.block.0.temb_proj.weight",
        "down.0.block.1.norm2.bias",
        "down.0.block.1.conv2.weight",
        "down.1.block.0.nin_shortcut.weight",
        "down.1.attn.0.norm.weight",
        "down.1.attn.1.q.weight",
        "down.1.attn.1.k.bias",
        "down.1.attn.0.v.weight",
        "down.1.attn.0.proj_out.weight",
        "down.0.downsample.conv.weight",
        "down.2.downsample.conv.bias",
        "mid.block_1.conv1.weight",
        "mid.attn_1.q.weight",
        "mid.block_2.temb_proj.bias",
        "up.0.block.2.nin_shortcut.weight",
        "up.1.attn.2.proj_out.bias",
        "up.3.block.0.conv1.weight",
        "up.1.upsample.conv.weight",
        "up.3.upsample.conv.weight",
        "norm_out.weight",
        "conv_out.bias",
    ]
    assert [k for k in expected if k not in keys] == []
    absent = [
        "down.3.downsample.conv.weight",
        "up.0.upsample.conv.weight",
        "down.0.attn.0.q.weight",
        "down.1.block.1.nin_shortcut.weight",
    ]
    assert [k for k in absent if k in keys] == []
    assert len(keys) == 328
    # Up-path input channels = previous output + the popped skip (official concatenation).
    in_channels = {
        "up.3.block.0": 256 + 256,
        "up.1.block.2": 256 + 128,
        "up.0.block.0": 256 + 128,
        "up.0.block.1": 128 + 128,
        "up.0.block.2": 128 + 128,
    }
    state = cifar_meta.state_dict()
    assert {k: state[k + ".conv1.weight"].shape[1] for k in in_channels} == in_channels


@pytest.mark.parametrize("config", [MNIST_SMALL, TINY_RGB], ids=["28x28x1", "32x32x3"])
def test_output_shape_matches_input(config):
    model = build(config)
    x = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = build(UNetConfig(**{**TINY_RGB.to_dict(), "dropout": 0.5}))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))
        model.train()
        assert not torch.allclose(model(x, t), model(x, t))


def test_channels_last_computes_the_same_eps():
    """``for_inference(channels_last=True)`` (``--channels-last``) changes the memory layout,
    not the U-Net's ε (to float rounding); the output stays contiguous, the config readable,
    and the model it was given untouched. (``--compile``: tests/test_cli_eval.py.)"""
    from ddim.speed import for_inference

    model = build(MNIST_SMALL)
    fast = for_inference(model, channels_last=True)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 400, 999])
    with torch.inference_mode():
        want, got = model(x, t), fast(x, t)
    assert got.is_contiguous()
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    assert fast.config == MNIST_SMALL
    assert all(p.is_contiguous() for p in model.parameters())


def test_timestep_changes_output():
    model = build(MNIST_SMALL)
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(2)).repeat(3, 1, 1, 1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 0, 500]))
    assert torch.equal(out[0], out[1])
    assert (out[0] - out[2]).abs().max() > 1e-3


def test_every_parameter_gets_a_gradient():
    model = build(MNIST_SMALL).train()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    model(x, torch.tensor([10, 20])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_timestep_embedding_by_hand():
    # dim 6: frequencies exp(-ln(1e4) * i / 2) = 1, 1e-2, 1e-4.
    emb = timestep_embedding(torch.tensor([0, 1, 100]), 6)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            [0.8414709848, 0.0099998333, 0.0001, 0.5403023059, 0.9999500004, 0.999999995],
            [-0.5063656411, 0.8414709848, 0.0099998333, 0.8623188723, 0.5403023059, 0.9999500004],
        ]
    )
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, expected, rtol=0, atol=2e-6)


def test_timestep_embedding_odd_dim_pads_a_zero_column():
    emb = timestep_embedding(torch.tensor([5]), 7)
    assert emb.shape == (1, 7)
    assert emb[0, 6] == 0.0
    torch.testing.assert_close(emb[:, :6], timestep_embedding(torch.tensor([5]), 6))


def test_timestep_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.tensor(3), 8)
    with pytest.raises(ValueError, match="at least 4"):
        timestep_embedding(torch.tensor([3]), 3)


def test_avgpool_variant_has_no_resample_convs():
    config = UNetConfig(**{**MNIST_SMALL.to_dict(), "resamp_with_conv": False})
    model = build(config)
    assert not [k for k in model.state_dict() if "sample.conv" in k]
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_forward_rejects_bad_shapes():
    model = build(MNIST_SMALL)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"t of shape \(2,\)"):
        model(torch.zeros(2, 1, 28, 28), torch.tensor([0]))


def test_config_round_trip_through_json():
    d = json.loads(json.dumps(CIFAR10.to_dict()))
    assert d["ch_mult"] == [1, 2, 2, 2]
    restored = UNetConfig.from_dict(d)
    assert restored == CIFAR10
    assert isinstance(restored.ch_mult, tuple) and isinstance(restored.attn_resolutions, tuple)
    assert UNetConfig.from_dict({}) == UNetConfig()


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown UNetConfig keys: colour, depth"):
        UNetConfig.from_dict({"ch": 64, "depth": 3, "colour": True})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ch": 48}, "divisible by 32"),
        ({"ch": 0}, "ch must be a positive integer"),
        ({"in_channels": 0}, "in_channels must be a positive integer"),
        ({"num_res_blocks": 1.5}, "num_res_blocks must be a positive integer"),
        ({"ch_mult": ()}, "ch_mult must be a non-empty"),
        ({"ch_mult": (1, 0)}, "ch_mult must be a non-empty"),
        ({"attn_resolutions": (-16,)}, "attn_resolutions must hold positive"),
        ({"dropout": 1.0}, re.escape("dropout must lie in [0, 1)")),
        ({"resamp_with_conv": 1}, "resamp_with_conv must be a bool"),
        ({"image_size": 30}, "image_size=30 must be divisible by 8"),
        ({"attn_resolutions": (16, 5)}, r"resolutions \[5\] match no level; .* \[32, 16, 8, 4\]"),
    ],
)
def test_bad_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**changes)


def _to_diffusers_key(key: str, num_levels: int) -> str:
    """Our (official) parameter name -> diffusers UNet2DModel name; a test-only mapping."""
    key = re.sub(r"^up\.(\d+)\.", lambda m: f"up.{num_levels - 1 - int(m[1])}.", key)
    for pattern, repl in [
        (r"^temb\.dense\.0\.", "time_embedding.linear_1."),
        (r"^temb\.dense\.1\.", "time_embedding.linear_2."),
        (r"^(down|up)\.(\d+)\.block\.", r"\1_blocks.\2.resnets."),
        (r"^(down|up)\.(\d+)\.attn\.", r"\1_blocks.\2.attentions."),
        (r"^(down|up)\.(\d+)\.(down|up)sample\.", r"\1_blocks.\2.\3samplers.0."),
        (r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}."),
        (r"^mid\.attn_1\.", "mid_block.attentions.0."),
        (r"^norm_out\.", "conv_norm_out."),
        (r"\.temb_proj\.", ".time_emb_proj."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"\.norm\.", ".group_norm."),
        (r"\.([qkv])\.", r".to_\1."),
        (r"\.proj_out\.", ".to_out.0."),
    ]:
        key = re.sub(pattern, repl, key)
    return key


def test_matches_diffusers_ddpm_unet_with_mapped_weights():
    diffusers = pytest.importorskip("diffusers")
    config = TINY_RGB
    ours = build(config, seed=3)
    theirs = diffusers.UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
        dropout=0.0,
    ).eval()
    target = theirs.state_dict()
    mapped = {}
    for key, value in ours.state_dict().items():
        name = _to_diffusers_key(key, len(config.ch_mult))
        mapped[name] = value.reshape(target[name].shape)
    theirs.load_state_dict(mapped, strict=True)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([17, 901])
    with torch.no_grad():
        expected = theirs(x, t).sample
        out = ours(x, t)
    assert expected.abs().mean() > 0.05
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
