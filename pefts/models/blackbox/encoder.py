"""The coordinator's frozen encoder: a fixed random conv (the embedded default) or any
timm model, by name or from a local weights file (the paper: an ImageNet-pretrained MAE
ViT-B/16, ``vit_base_patch16_224.mae``, read at the CLS token of its last hidden state,
BlackVIP's Hugging Face facebook/vit-mae-base)."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pefts.errors import PeftsError
from pefts.runtime.verified import verified

CONV = "conv"
# Hugging Face's ViT LayerNorm eps, with which BlackVIP runs facebook/vit-mae-base
# (its config.json: layer_norm_eps 1e-12); timm builds the same weights with 1e-6
HF_LAYER_NORM_EPS = 1e-12


class ConvEncoder(nn.Module):
    """A random conv drawn from ``gen`` and pooled to a ``grid`` x ``grid`` feature map."""

    def __init__(self, image_channels: int, features: int, grid: int, gen: torch.Generator):
        super().__init__()
        self.conv = nn.Conv2d(image_channels, features, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        with torch.no_grad():
            fan_in = self.conv.weight[0].numel()
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            self.conv.bias.zero_()
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.gelu(self.conv(x)))


class TimmEncoder(nn.Module):
    """A timm backbone seen as a feature vector. It reads images as the coordinator is
    given them (BlackVIP: the CLIP-normalised frame, not the encoder's own
    normalisation), resized only when their size is not the model's. A ViT gives the CLS
    token of its last block's output before the final norm: BlackVIP's
    ``hidden_states[-1][:, 0]`` of Hugging Face's ViT, whose final layernorm only
    ``last_hidden_state`` passes through."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        cfg = net.pretrained_cfg
        self.input_size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
        self.out_features = net.num_features
        self.cls = getattr(net, "num_prefix_tokens", 0) > 0 and hasattr(net, "norm")
        if self.cls:
            net.norm = nn.Identity()  # unused by the CLS of the last hidden state
        if cfg.get("tag") == "mae":
            # MAE weights as BlackVIP reads them, through HF's ViT: the feature moves by
            # about 2e-4 between the two eps on the ViT-B/16
            for module in net.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = HF_LAYER_NORM_EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        tokens = self.net.forward_features(x)
        if self.cls:
            return tokens[:, 0]
        return self.net.forward_head(tokens, pre_logits=True)


def build_encoder(name: str, image_channels: int, features: int, grid: int,
                  gen: torch.Generator, file: str | None = None,
                  pretrained: bool = True) -> nn.Module:
    """The frozen encoder: ``conv`` or a timm model name; ``file`` holds its weights
    locally (nothing is downloaded then), otherwise ``pretrained`` fetches timm's."""
    if name == CONV:
        encoder: nn.Module = ConvEncoder(image_channels, features, grid, gen)
    else:
        kwargs: dict = {"num_classes": 0}
        if file:
            verified(file, "coordinator encoder weights (blackbox hparam encoder_file)")
            # custom_load=False: read a torch/safetensors state dict, not a JAX npz
            kwargs["pretrained_cfg_overlay"] = dict(file=str(file), custom_load=False)
            pretrained = True
        try:
            net = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:  # timm's message for an unknown name or a bad file
            raise PeftsError(f"cannot build the coordinator encoder {name!r}: "
                             f"{str(err).splitlines()[0]}") from None
        encoder = TimmEncoder(net)
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder
