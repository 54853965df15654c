"""BlackVIP's coordinator and the prompted black-box classifier it feeds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pefts.blackbox.encoder import CONV, build_encoder
from pefts.blackbox.query import QueryModel


class Coordinator(nn.Module):
    """Frozen encoder -> features z; learnable decoder g(z, trigger) -> prompt in [-1, 1].

    BlackVIP's design: the decoder turns the encoder's features and a learnable trigger
    vector into a full-resolution, image-dependent prompt with transposed convolutions.
    A timm encoder's feature vector (the CLS token of a ViT, 768-d) is concatenated with
    the trigger and reshaped into a ``grid`` x ``grid`` map (BlackVIP: 768 + 800 = 32 x
    7 x 7), zero-padded to fill it; a conv encoder's feature map (pooled to ``grid``)
    gets the trigger as extra channels. ``stages`` transposed convolutions (kernel 4,
    stride 2) each double the map (BlackVIP: 5 stages, 7 -> 224); the prompt is then
    resized to the image when the sizes differ.

    The encoder is never the base model: a fixed random conv drawn from ``seed`` (the
    default) or a timm model (``encoder`` by name, weights from ``encoder_file`` or
    timm's pretrained ones), so rebuilding the method reproduces it and only the
    decoder and trigger need saving.
    """

    def __init__(self, image_channels: int = 3, features: int = 8, trigger: int = 8,
                 hidden: int = 16, grid: int = 8, seed: int = 0, encoder: str = CONV,
                 encoder_file: str | None = None, encoder_pretrained: bool = True,
                 stages: int = 2):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trigger = nn.Parameter(torch.rand(trigger, generator=gen) * 0.1)  # BlackVIP's U(0, 0.1)
        self.encoder = build_encoder(encoder, image_channels, features, grid, gen,
                                     encoder_file, encoder_pretrained)
        self.grid = grid
        self.vector = encoder != CONV  # a feature vector, not a feature map
        if self.vector:
            channels = math.ceil((self.encoder.out_features + trigger) / grid ** 2)
        else:
            channels = self.encoder.out_features + trigger
        widths = [channels] + [hidden] * (stages - 1) + [image_channels]
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1)
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True))
        with torch.no_grad():
            for layer in self.decoder[:-1]:
                fan_in = layer.weight.shape[0] * 4  # each output pixel sees 2 x 2 taps per input channel
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                layer.bias.zero_()
            # a zero prompt at the start: training begins from the black box itself
            self.decoder[-1].weight.zero_()
            self.decoder[-1].bias.zero_()

    def learnable(self) -> list[nn.Parameter]:
        """The decoder and trigger, in a fixed order (SPSA flattens them into one vector)."""
        return [self.trigger, *self.decoder.parameters()]

    def train(self, mode: bool = True) -> Coordinator:
        super().train(mode)
        self.encoder.eval()  # frozen: its dropout and norm statistics never change
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's input map: encoder features and trigger, ``grid`` x ``grid``."""
        with torch.no_grad():
            z = self.encoder(x)
        if self.vector:
            v = torch.cat([z, self.trigger.expand(len(x), -1)], dim=1)
            cells = self.decoder[0].in_channels * self.grid ** 2
            return F.pad(v, (0, cells - v.shape[1])).view(len(x), -1, self.grid, self.grid)
        trigger = self.trigger.view(1, -1, 1, 1).expand(len(x), -1, *z.shape[-2:])
        return torch.cat([z, trigger], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = F.gelu(h)
        if tuple(h.shape[-2:]) != tuple(x.shape[-2:]):
            # in fp32: under bf16 autocast the decoder's map is bf16, and torch's CPU
            # antialiased resize has no bf16 kernel (the CIFAR prompt shrinks 224 -> 32)
            h = F.interpolate(h.float(), size=x.shape[-2:], mode="bilinear", align_corners=False,
                              antialias=h.shape[-1] > x.shape[-1])
        return torch.tanh(h)


class PromptedClassifier(nn.Module):
    """z -> log P(y | clip(z + eps * h(z))) through the query interface only.

    The prompt is computed from the noisy input z itself, so smoothing this module
    certifies x. Log-probabilities are returned as logits: softmax gives back the
    black box's probabilities and cross-entropy on them is the usual loss.
    """

    def __init__(self, coordinator: Coordinator, query: QueryModel, eps: float = 1.0,
                 clip: bool = True):
        super().__init__()
        self.coordinator = coordinator
        self.query = query
        self.eps = eps
        self.clip = clip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        prompted = z + self.eps * self.coordinator(z)
        if self.clip:  # a prediction API takes valid images
            prompted = prompted.clamp(0.0, 1.0)
        return torch.log(self.query(prompted).clamp_min(1e-12))
