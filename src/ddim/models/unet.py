"""The DDPM U-Net of Ho et al. (2020) in the layout of the official DDIM code.

Module and parameter names match the official PyTorch port (``temb.dense.0``,
``down.{i}.block.{j}.conv1``, ``mid.attn_1.q``, ``up.{i}.upsample.conv``, ...), so its
checkpoints load by key. The network predicts the noise ``eps`` (or, as its config says,
``v`` or ``x``: :mod:`ddim.parameterization`) from ``(x_t, t)`` and
knows nothing about the noise schedule: ``t`` is only fed to a sinusoidal embedding.

A class-conditional network (``num_classes = K > 0``) also takes labels ``y`` in
``0 .. K``, where ``K`` is the null label ("no class") of classifier-free guidance; the
label's learned embedding is added to the time embedding, as in ADM (Dhariwal & Nichol
2021) and diffusers' ``UNet2DModel(num_class_embeds=K + 1)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.checks import dataclass_kwargs, is_int
from ddim.names import PREDICTIONS

GROUPS = 32


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyperparameters; the defaults are the official CIFAR-10 model.

    ``attn_resolutions`` lists the feature-map sizes (in pixels) at which single-head
    self-attention follows each residual block; ``image_size`` fixes where those sizes
    occur and must be divisible by ``2 ** (len(ch_mult) - 1)``. ``num_classes`` is 0 for
    an unconditional model, else the number of classes ``K`` (labels ``0 .. K-1``, and
    ``K`` the null label).

    ``prediction`` is what the network's output means (``eps``, ``v`` or ``x``;
    :mod:`ddim.parameterization`). ``sampling_plan`` is the timesteps a distilled student
    was trained to step between, largest first (:mod:`ddim.train.distill`), else ``None``.
    Both are left out of :meth:`to_dict` at their defaults, so the description (and the
    digest) of an ε-model without a plan is what it always was.
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    image_size: int = 32
    num_classes: int = 0
    prediction: str = "eps"
    sampling_plan: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"UNetConfig.prediction must be one of {', '.join(PREDICTIONS)}, "
                f"got {self.prediction!r}"
            )
        if self.sampling_plan is not None:
            plan = self.sampling_plan
            if not isinstance(plan, (list, tuple)) or not plan:
                raise ValueError(
                    f"UNetConfig.sampling_plan must be a list of timesteps, got {plan!r}"
                )
            object.__setattr__(self, "sampling_plan", tuple(plan))
            steps = self.sampling_plan
            if not all(is_int(t) and t >= 0 for t in steps) or list(steps) != sorted(
                set(steps), reverse=True
            ):
                raise ValueError(
                    f"UNetConfig.sampling_plan must hold distinct timesteps >= 0, largest "
                    f"first, got {list(steps)!r}"
                )
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"UNetConfig.{name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("in_channels", "out_channels", "ch", "num_res_blocks", "image_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if not is_int(self.num_classes) or self.num_classes < 0:
            raise ValueError(
                f"UNetConfig.num_classes must be a non-negative integer, got {self.num_classes!r}"
            )
        if self.ch % GROUPS:
            raise ValueError(
                f"UNetConfig.ch must be divisible by {GROUPS} (GroupNorm groups), got {self.ch}"
            )
        if not self.ch_mult or not all(is_int(m) and m >= 1 for m in self.ch_mult):
            raise ValueError(
                f"UNetConfig.ch_mult must be a non-empty tuple of positive integers, "
                f"got {self.ch_mult!r}"
            )
        if not all(is_int(r) and r >= 1 for r in self.attn_resolutions):
            raise ValueError(
                f"UNetConfig.attn_resolutions must hold positive integers, "
                f"got {self.attn_resolutions!r}"
            )
        real = isinstance(self.dropout, numbers.Real) and not isinstance(self.dropout, bool)
        if not real or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.resamp_with_conv, bool):
            raise ValueError(
                f"UNetConfig.resamp_with_conv must be a bool, got {self.resamp_with_conv!r}"
            )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig.image_size={self.image_size} must be divisible by {factor} "
                f"for {len(self.ch_mult)} resolution levels"
            )
        sizes = [self.image_size // 2**i for i in range(len(self.ch_mult))]
        missing = [r for r in self.attn_resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"UNetConfig.attn_resolutions {missing} match no level; the levels are {sizes}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists) that :meth:`from_dict` reads back."""
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        if self.prediction == "eps":
            del d["prediction"]
        if self.sampling_plan is None:
            del d["sampling_plan"]
        else:
            d["sampling_plan"] = list(self.sampling_plan)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Build a config from a dict; missing keys take defaults, unknown keys are an error."""
        return cls(**dataclass_kwargs(cls, d))


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of 1-D timesteps ``t`` as in the official code: float32 ``(B, dim)``.

    The first half holds ``sin(t * f_i)``, the second ``cos(t * f_i)`` with
    ``f_i = exp(-log(10000) * i / (dim // 2 - 1))``; an odd ``dim`` gets a zero last column.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(t.shape)}")
    if dim < 4:
        raise ValueError(f"timestep embedding dim must be at least 4, got {dim}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(i * (-math.log(10000.0) / (half - 1)))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two 3x3 convs with pre-activation GroupNorm/swish; the time embedding is added between."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """The block on ``x`` ``(B, in_ch, H, W)`` under the time embedding ``temb``
        ``(B, temb_ch)``: ``(B, out_ch, H, W)``, the shortcut a 1x1 conv where the widths differ."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, logits scaled by ``C ** -0.5``, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` plus the projected attention output, the same shape."""
        b, c, height, width = x.shape
        h = self.norm(x)

        def tokens(conv: nn.Conv2d) -> Tensor:
            return conv(h).reshape(b, 1, c, height * width).transpose(2, 3)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.transpose(2, 3).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: 3x3 stride-2 conv after zero padding right/bottom, or 2x2 avg-pool."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` at half the resolution, ``(B, C, H // 2, W // 2)``."""
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour repetition, then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` at twice the resolution, ``(B, C, 2H, 2W)``."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


def _level(blocks: list[ResnetBlock], attns: list[AttnBlock]) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


class UNet(nn.Module):
    """The U-Net: ``forward(x: (B, C, H, W), t: (B,), y=None) -> (B, C_out, H, W)``, an
    ε-model unless ``config.prediction`` says otherwise.

    ``t`` holds the official 0-based timesteps (``0 .. T-1``). ``up[i]`` mirrors ``down[i]``
    (the official code builds ``up`` from the lowest resolution and inserts at the front).
    A conditional model's ``label_emb`` starts at zero, so before training it predicts the
    same eps for every label: fine-tuned from unconditional weights, it starts as that model.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, mult, n_blocks = config.ch, config.ch_mult, config.num_res_blocks
        temb_ch = 4 * ch
        in_mult = (1, *mult)
        attn_at = set(config.attn_resolutions)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        if config.num_classes:
            self.label_emb = nn.Embedding(config.num_classes + 1, temb_ch)
            nn.init.zeros_(self.label_emb.weight)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        res = config.image_size
        block_in = ch
        self.down = nn.ModuleList()
        for i, m in enumerate(mult):
            blocks, attns = [], []
            block_in = ch * in_mult[i]
            for _ in range(n_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, temb_ch, config.dropout))
                block_in = ch * m
                if res in attn_at:
                    attns.append(AttnBlock(block_in))
            level = _level(blocks, attns)
            if i != len(mult) - 1:
                level.downsample = Downsample(block_in, config.resamp_with_conv)
                res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, config.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, config.dropout)

        up_levels: list[nn.Module] = []
        for i in reversed(range(len(mult))):
            blocks, attns = [], []
            for j in range(n_blocks + 1):
                skip_ch = ch * (in_mult[i] if j == n_blocks else mult[i])
                block = ResnetBlock(block_in + skip_ch, ch * mult[i], temb_ch, config.dropout)
                blocks.append(block)
                block_in = ch * mult[i]
                if res in attn_at:
                    attns.append(AttnBlock(block_in))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in, config.resamp_with_conv)
                res *= 2
            up_levels.insert(0, level)
        self.up = nn.ModuleList(up_levels)

        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict the noise in ``x`` of shape ``(B, in_channels, image_size, image_size)``.

        ``y`` (conditional models only) holds one label per sample in ``0 .. num_classes``;
        ``None`` means the null label ``num_classes`` for every sample.
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size,) * 2:
            raise ValueError(
                f"UNet expects x of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                f"{cfg.image_size}), got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNet expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")

        dense = self.temb.dense
        temb = timestep_embedding(t, cfg.ch).to(dense[0].weight.dtype)
        temb = dense[1](F.silu(dense[0](temb)))
        if cfg.num_classes:
            temb = temb + self.label_emb(self._labels(y, x.shape[0], t.device))
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes = 0); it takes no labels y")

        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if i != len(self.down) - 1:
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_1(hs[-1], temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))

    def _labels(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """``y`` checked to be ``(B,)`` integer labels in ``0 .. K`` (the range only on the
        CPU, to spare a GPU a device-to-host sync); ``None`` gives ``K``."""
        k = self.config.num_classes
        if y is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"labels y must be an integer tensor of shape ({batch},), "
                f"got {y.dtype} {tuple(y.shape)}"
            )
        if y.device.type == "cpu" and bool((y < 0).any() or (y > k).any()):
            raise ValueError(
                f"labels y must lie in 0..{k} ({k} is the null label), got {y.tolist()}"
            )
        return y.to(device=device, dtype=torch.long)
