"""Interoperability with diffusers: an adapter and exact conversion of weights.

- :func:`from_diffusers` wraps a diffusers ``UNet2DModel`` as an eps-model, so every
  sampler here runs it: ``ddim.sample(from_diffusers(unet), x_T, sched)``.
- :func:`to_diffusers_unet` / :func:`unet_from_diffusers` convert our U-Net to the
  equivalent ``UNet2DModel`` and back. The architectures match exactly when diffusers is
  configured like the DDPM code: sinusoidal embedding with ``flip_sin_to_cos=False``,
  ``freq_shift=1``; GroupNorm(32, eps=1e-6); stride-2 downsampling convs after padding
  right/bottom (``downsample_padding=0``); single-head attention (``attention_head_dim=None``)
  at the configured resolutions. Attention q/k/v/out are 1x1 convs here and Linear layers
  there; their weights are reshaped. A class-conditional U-Net (``num_classes = K``) is a
  ``UNet2DModel`` with ``class_embed_type=None`` and ``num_class_embeds = K + 1`` (the last
  label is the null label of classifier-free guidance), its ``class_embedding`` our
  ``label_emb``: both add the label's embedding to the time embedding.
- :mod:`ddim.formats.diffusers_folder` writes and reads whole diffusers folders.

diffusers is an optional dependency (``pip install 'ddim[diffusers]'``), imported only
inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ddim.models.unet import GROUPS, UNet, UNetConfig

NORM_EPS = 1e-6
_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {
    "temb.dense.0": "time_embedding.linear_1",
    "temb.dense.1": "time_embedding.linear_2",
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out": "conv_out",
    "label_emb": "class_embedding",
}
_MID = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}
# UNet2DModel settings that must hold for the architectures to match (besides the ones
# derived from a UNetConfig); None means "absent or None".
_REQUIRED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "norm_num_groups": GROUPS,
    "attn_norm_num_groups": None,
    "norm_eps": NORM_EPS,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
}


def import_diffusers() -> ModuleType:
    """The ``diffusers`` package, or an ImportError saying how to install it (the
    ``ddim[diffusers]`` extra)."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            f"this needs diffusers, which is not installed ({e}); "
            f"install it with: pip install 'ddim[diffusers]'"
        ) from None
    return diffusers


class DiffusersEps(nn.Module):
    """An eps-model ``(x_t, t) -> eps`` around a diffusers ``UNet2DModel``; one with
    ``num_class_embeds = K + 1`` is a class-conditional model ``(x_t, t, y) -> eps`` with
    ``num_classes = K`` (``y=None`` is the null label ``K``)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        embeds = getattr(unet.config, "num_class_embeds", None)
        self.num_classes = embeds - 1 if embeds else 0

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``unet(x_t, t, class_labels=y).sample``, ``x`` cast to the U-Net's dtype and
        a conditional model's ``y=None`` made the null label."""
        if self.num_classes and y is None:
            y = torch.full_like(t, self.num_classes)
        return self.unet(x.to(self.unet.dtype), t, class_labels=y).sample


def from_diffusers(unet: nn.Module) -> nn.Module:
    """Make a diffusers ``UNet2DModel`` an eps-model for :func:`ddim.sample` (the
    ``lambda x, t: unet(x, t).sample`` adapter as a module, so ``.to(device)`` works)."""
    return DiffusersEps(unet)


# ---------------------------------------------------------------- configs


def _attn_levels(config: UNetConfig) -> list[bool]:
    """Whether each resolution level (highest first) has attention after its res-blocks."""
    return [
        config.image_size // 2**i in config.attn_resolutions for i in range(len(config.ch_mult))
    ]


def diffusers_unet_config(config: UNetConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` keyword arguments of the network equivalent to ``config``."""
    if config.ch_mult[0] != 1:
        raise ValueError(
            f"diffusers' UNet2DModel has no equivalent of ch_mult[0]={config.ch_mult[0]} "
            f"(its first level always has the input width); only ch_mult[0]=1 converts"
        )
    if not config.resamp_with_conv:
        raise ValueError(
            "diffusers' UNet2DModel has no equivalent of resamp_with_conv=False "
            "(it always resamples with convs)"
        )
    attn = _attn_levels(config)
    return {
        **{k: v for k, v in _REQUIRED.items() if v is not None},
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "attention_head_dim": None,
        "dropout": float(config.dropout),
        "num_class_embeds": config.num_classes + 1 if config.num_classes else None,
    }


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """Our :class:`UNetConfig` for a ``UNet2DModel`` config; a ValueError lists every
    setting that has no exact equivalent here."""
    widths = [int(c) for c in config["block_out_channels"]]
    ch = widths[0]
    equivalent = {"time_embedding_dim": 4 * ch, "attn_norm_num_groups": GROUPS}
    problems = [
        f"{key}={config.get(key)!r} (needs {want!r})"
        for key, want in _REQUIRED.items()
        if config.get(key) != want and config.get(key) != equivalent.get(key, want)
    ]
    if any(w % ch for w in widths):
        problems.append(f"block_out_channels={widths} (each must be a multiple of the first)")
    down = list(config["down_block_types"])
    attn = [kind == "AttnDownBlock2D" for kind in down]
    if any(kind not in ("DownBlock2D", "AttnDownBlock2D") for kind in down):
        problems.append(f"down_block_types={down} (only DownBlock2D and AttnDownBlock2D)")
    mirrored = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    if list(config["up_block_types"]) != mirrored:
        problems.append(f"up_block_types={list(config['up_block_types'])} (needs {mirrored})")
    head_dim = config.get("attention_head_dim")
    attn_widths = {w for w, a in zip(widths, attn, strict=True) if a} | {widths[-1]}
    if head_dim is not None and attn_widths != {head_dim}:
        problems.append(f"attention_head_dim={head_dim} (single-head attention needs None)")
    embeds = config.get("num_class_embeds")
    if embeds is not None and int(embeds) < 2:
        problems.append(f"num_class_embeds={embeds} (needs K + 1 >= 2: K classes and the null)")
    size = config["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            problems.append(f"sample_size={list(size)} (images must be square)")
        size = size[0]
    if problems:
        raise ValueError("the diffusers UNet has no exact equivalent here: " + "; ".join(problems))
    return UNetConfig(
        in_channels=int(config["in_channels"]),
        out_channels=int(config["out_channels"]),
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=int(config["layers_per_block"]),
        attn_resolutions=tuple(int(size) // 2**i for i, a in enumerate(attn) if a),
        dropout=float(config.get("dropout", 0.0)),
        resamp_with_conv=True,
        image_size=int(size),
        num_classes=int(embeds) - 1 if embeds else 0,
    )


# ---------------------------------------------------------------- weights


def diffusers_key(key: str, levels: int) -> str:
    """The ``UNet2DModel`` parameter name of our parameter ``key`` for a U-Net with
    ``levels`` resolution levels (diffusers numbers its up-blocks from the lowest one)."""
    module, _, param = key.rpartition(".")
    parts = module.split(".")
    if parts[0] in ("down", "up"):
        i, kind = int(parts[1]), parts[2]
        block = f"down_blocks.{i}" if parts[0] == "down" else f"up_blocks.{levels - 1 - i}"
        if kind == "block":
            return f"{block}.resnets.{parts[3]}.{_RESNET[parts[4]]}.{param}"
        if kind == "attn":
            return f"{block}.attentions.{parts[3]}.{_ATTN[parts[4]]}.{param}"
        return f"{block}.{kind}rs.0.conv.{param}"  # downsample(r)s / upsample(r)s
    if parts[0] == "mid":
        sub = _ATTN if parts[1].startswith("attn") else _RESNET
        return f"mid_block.{_MID[parts[1]]}.{sub[parts[2]]}.{param}"
    return f"{_TOP[module]}.{param}"


def _reshaped(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A 1x1 conv weight as a Linear weight or back; other tensors pass unchanged."""
    return value.reshape(shape) if value.shape != shape else value


def to_diffusers_unet(model: UNet) -> nn.Module:
    """The diffusers ``UNet2DModel`` that computes the same eps as ``model`` (eval mode)."""
    diffusers = import_diffusers()
    unet = diffusers.UNet2DModel(**diffusers_unet_config(model.config))
    theirs = unet.state_dict()
    levels = len(model.config.ch_mult)
    state = {}
    for key, value in model.state_dict().items():
        name = diffusers_key(key, levels)
        state[name] = _reshaped(value, theirs[name].shape)
    unet.load_state_dict(state)
    return unet.eval()


def unet_from_diffusers(unet: nn.Module, prediction: str = "eps") -> UNet:
    """Our :class:`UNet` equivalent to a diffusers ``UNet2DModel`` (eval mode), declaring
    that it predicts ``prediction`` (diffusers keeps that in the scheduler config)."""
    config = replace(unet_config_from_diffusers(unet.config), prediction=prediction)
    model = UNet(config)
    theirs = unet.state_dict()
    names = {key: diffusers_key(key, len(config.ch_mult)) for key in model.state_dict()}
    missing = sorted(set(names.values()) - set(theirs))
    unexpected = sorted(set(theirs) - set(names.values()))
    if missing or unexpected:
        raise ValueError(
            f"the diffusers UNet's weights do not fit: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    ours = model.state_dict()
    model.load_state_dict({k: _reshaped(theirs[name], ours[k].shape) for k, name in names.items()})
    return model.eval()


# ---------------------------------------------------------------- schedules
