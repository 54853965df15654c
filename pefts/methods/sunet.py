"""Denoised smoothing with SUNet (Fan, Liu & Liu, ISCAS 2022): a Swin-Transformer UNet
denoiser in front of the frozen base classifier, trained like the DnCNN (MSE, then the
stability objective) by the same code.

The Swin stages are timm's (``SwinTransformerStage``, whose patch merging halves the
resolution on the way down); the way up uses SUNet's "dual up-sample" (pixel shuffle
beside bilinear) and Swin-UNet's skip fusion (concatenate, then a linear layer).
Differences from the original: the output is residual (z minus a predicted noise, the
last conv zeroed so an untrained SUNet is the identity, like our DnCNN), and timm's
attention uses the usual 1/sqrt(head_dim) scale where SUNet fixed qk_scale = 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.swin_transformer import SwinTransformerStage
from torch import nn

from pefts.errors import PeftsError
from pefts.hparams import Choice, Float, Int, IntList
from pefts.methods.denoiser import OBJECTIVES, DenoisedSmoothing

# SUNet's released configuration (training.yaml of FanChiMao/SUNet): 256x256 crops,
# patch 4, window 8, embedding 96, four stages of 8 blocks with 8 heads, MLP ratio 4,
# stochastic depth 0.1
PAPER = {"img_size": 256, "patch_size": 4, "embed_dim": 96, "depths": [8, 8, 8, 8],
         "heads": [8, 8, 8, 8], "window": 8, "mlp_ratio": 4.0, "drop_path": 0.1}


class DualUpsample(nn.Module):
    """SUNet's up-sampler on channels-last maps: a pixel-shuffle branch and a bilinear
    branch, concatenated and mixed by a 1x1 conv."""

    def __init__(self, dim_in: int, dim_out: int, factor: int):
        super().__init__()
        self.shuffle = nn.Sequential(
            nn.Conv2d(dim_in, dim_out * factor ** 2, 1, bias=False), nn.PReLU(),
            nn.PixelShuffle(factor), nn.Conv2d(dim_out, dim_out, 1, bias=False))
        self.bilinear = nn.Sequential(
            nn.Conv2d(dim_in, dim_in, 1), nn.PReLU(),
            nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
            nn.Conv2d(dim_in, dim_out, 1, bias=False))
        self.merge = nn.Conv2d(2 * dim_out, dim_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.merge(torch.cat([self.shuffle(x), self.bilinear(x)], dim=1))
        return x.permute(0, 2, 3, 1)


class SUNet(nn.Module):
    """Shallow conv -> patch embedding -> Swin encoder (patch merging) -> Swin decoder
    (dual up-sample, skip fusion) -> dual up-sample to full size -> conv; residual output."""

    def __init__(self, channels: int = 3, img_size: int = 32, patch_size: int = 4,
                 embed_dim: int = 96, depths: Sequence[int] = (8, 8, 8, 8),
                 heads: Sequence[int] = (8, 8, 8, 8), window: int = 8, mlp_ratio: float = 4.0,
                 drop_path: float = 0.1):
        super().__init__()
        levels = len(depths)
        if levels < 1 or len(heads) != levels:
            raise PeftsError(f"SUNet needs as many heads as depths, got {list(heads)} and {list(depths)}")
        if min(img_size, patch_size, embed_dim, window, *depths, *heads) < 1:
            raise PeftsError("SUNet sizes, depths and heads must all be positive")
        if img_size % (patch_size * 2 ** (levels - 1)):
            raise PeftsError(f"SUNet img_size {img_size} must be a multiple of patch_size x "
                             f"2^(stages - 1) = {patch_size * 2 ** (levels - 1)}")
        dims = [embed_dim * 2 ** i for i in range(levels)]
        for dim, head in zip(dims, heads, strict=True):
            if dim % head:
                raise PeftsError(f"SUNet stage width {dim} is not divisible by its {head} heads")
        self.img_size = img_size
        side = img_size // patch_size
        total = sum(depths)
        # stochastic depth rising linearly over the encoder's blocks (plain floats: the
        # model may be built on the meta device, only to count its parameters)
        drop = [drop_path * i / max(total - 1, 1) for i in range(total)]

        def stage(dim_in: int, level: int, down: bool, rates: list[float]) -> nn.Module:
            resolution = side >> max(level - int(down), 0)  # before timm's patch merging
            return SwinTransformerStage(
                dim_in, dims[level], (resolution, resolution), depths[level], downsample=down,
                num_heads=heads[level], window_size=window, mlp_ratio=mlp_ratio,
                drop_path=rates)

        self.shallow = nn.Conv2d(channels, embed_dim, 3, padding=1)
        self.patch_embed = nn.Conv2d(embed_dim, embed_dim, patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.encoder = nn.ModuleList()
        start = 0
        for level in range(levels):
            rates = drop[start:start + depths[level]]
            start += depths[level]
            self.encoder.append(stage(dims[max(level - 1, 0)], level, level > 0, rates))
        self.bottleneck_norm = nn.LayerNorm(dims[-1])
        self.up, self.fuse, self.decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels - 1)):
            self.up.append(DualUpsample(dims[level + 1], dims[level], 2))
            self.fuse.append(nn.Linear(2 * dims[level], dims[level]))
            # the decoder mirrors the encoder's stochastic depth
            rates = drop[sum(depths[:level]):sum(depths[:level + 1])]
            self.decoder.append(stage(dims[level], level, False, rates))
        self.out_norm = nn.LayerNorm(embed_dim)
        self.final_up = DualUpsample(embed_dim, embed_dim, patch_size)
        self.output = nn.Conv2d(embed_dim, channels, 3, padding=1, bias=False)
        # zero noise estimate at the start: an untrained SUNet is the identity
        nn.init.zeros_(self.output.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-2:] != (self.img_size, self.img_size):
            raise PeftsError(f"this SUNet denoises {self.img_size}x{self.img_size} images, "
                             f"got {z.shape[-2]}x{z.shape[-1]}: set the sunet img_size hparam")
        x = self.embed_norm(self.patch_embed(self.shallow(z)).permute(0, 2, 3, 1))
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck_norm(x)
        for up, fuse, stage, skip in zip(self.up, self.fuse, self.decoder, reversed(skips[:-1]),
                                             strict=True):
            x = stage(fuse(torch.cat([up(x), skip], dim=-1)))
        x = self.final_up(self.out_norm(x)).permute(0, 3, 1, 2)
        return z - self.output(x)


class SUNetSmoothing(DenoisedSmoothing):
    name = "sunet"
    # the released SUNet's sizes (PAPER) at CIFAR-10's 32x32; img_size must be the data's side
    defaults = {**PAPER, "img_size": 32, "objective": "mse", "stability_epochs": 0.0,
                "stability_lr": 1e-5}
    specs = {"img_size": Int(1), "patch_size": Int(1), "embed_dim": Int(1), "depths": IntList(1),
             "heads": IntList(1), "window": Int(1), "mlp_ratio": Float(0, low_open=True),
             "drop_path": Float(0, 1, high_open=True), "objective": Choice(*OBJECTIVES),
             "stability_epochs": Float(0), "stability_lr": Float(0, low_open=True)}

    def make_denoiser(self, channels: int) -> nn.Module:
        h = self.hparams
        return SUNet(channels, int(h["img_size"]), int(h["patch_size"]), int(h["embed_dim"]),
                     [int(d) for d in h["depths"]], [int(n) for n in h["heads"]],
                     int(h["window"]), float(h["mlp_ratio"]), float(h["drop_path"]))
