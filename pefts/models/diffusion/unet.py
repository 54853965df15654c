"""The ADM UNet (Dhariwal & Nichol's guided-diffusion, grown from Nichol & Dhariwal's
improved-diffusion), written so that its state-dict keys are those of the authors'
unet.py: the released checkpoints load into it strictly, key for key.

diffusers' UNet2DModel cannot express this network (scale-shift norm, residual up- and
downsampling blocks, attention at several levels with per-head channels), hence a
module of our own. improved-diffusion's UNet is the same network with convolutional
up- and downsampling and a fixed head count, so one class serves both checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    image_size: int  # the side it was trained at (it runs on any multiple of downsampling)
    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]  # image sides with self-attention, e.g. 32, 16, 8
    num_heads: int = 4
    num_head_channels: int = -1  # when set, heads = channels // num_head_channels
    resblock_updown: bool = False
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    learn_sigma: bool = True  # 6 output channels: the noise, then the variance's interpolation
    in_channels: int = 3

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos before sin, of possibly fractional timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """32 groups, computed in float32 whatever the activations' precision."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class Resample(nn.Module):
    """Nearest 2x upsampling or stride-2 downsampling, with a 3x3 conv (keys ``conv`` /
    ``op`` like the authors') or, inside a residual block, without parameters."""

    def __init__(self, channels: int, up: bool, conv: bool):
        super().__init__()
        self.up = up
        if conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if hasattr(self, "conv") else x
        return self.op(x) if hasattr(self, "op") else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, cfg: UNetConfig,
                 resample: str | None = None):
        super().__init__()
        self.scale_shift = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = resample
        if resample:
            self.h_upd = Resample(channels, resample == "up", conv=False)
            self.x_upd = Resample(channels, resample == "up", conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if self.scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(cfg.dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over positions; heads are split before q, k, v (the authors'
    "legacy" order, which both checkpoints were trained with)."""

    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.heads = (channels // cfg.num_head_channels if cfg.num_head_channels > 0
                      else cfg.num_heads)
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, -1).transpose(1, 2).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(channels per head)) v
        h = self.proj_out(h.transpose(1, 2).reshape(b, c, -1))
        return (x + h).reshape(b, c, *spatial)


class Block(nn.ModuleList):
    """The authors' TimestepEmbedSequential: layers in order, residual blocks also
    reading the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """eps-prediction UNet: (x_t, t) -> the noise (and, with learn_sigma, the variance
    interpolation in the last channels)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        attention_ds = {cfg.image_size // side for side in cfg.attention_resolutions}

        def level_blocks(ch: int, out: int, ds: int, skip: int = 0) -> list[nn.Module]:
            layers: list[nn.Module] = [ResBlock(ch + skip, emb, out, cfg)]
            if ds in attention_ds:
                layers.append(AttentionBlock(out, cfg))
            return layers

        def resample(ch: int, up: bool) -> nn.Module:
            if cfg.resblock_updown:
                return ResBlock(ch, emb, ch, cfg, "up" if up else "down")
            return Resample(ch, up, conv=True)

        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(Block(level_blocks(ch, mc * mult, ds)))
                ch = mc * mult
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Block([resample(ch, up=False)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Block([ResBlock(ch, emb, ch, cfg), AttentionBlock(ch, cfg),
                                   ResBlock(ch, emb, ch, cfg)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = level_blocks(ch, mc * mult, ds, skip=skips.pop())
                ch = mc * mult
                if level and i == cfg.num_res_blocks:
                    layers.append(resample(ch, up=True))
                    ds //= 2
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(mc * cfg.channel_mult[0], cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
