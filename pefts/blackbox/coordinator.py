"""BlackVIP's coordinator, shrunk, and the prompted black-box classifier it feeds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pefts.blackbox.encoder import CONV, build_encoder
from pefts.blackbox.query import QueryModel


class Coordinator(nn.Module):
    """Frozen encoder -> features z; learnable decoder g(z, trigger) -> prompt in [-1, 1].

    The encoder is never the base model: a fixed random conv drawn from ``seed`` (the
    default) or a timm model (``encoder`` by name, weights from ``encoder_file`` or
    timm's pretrained ones), so rebuilding the method reproduces it and only the
    decoder and trigger need saving. A conv encoder's features are pooled to a ``grid``
    x ``grid`` map; a timm encoder's feature vector (the CLS token of a ViT) goes
    through a learnable linear projection to ``features`` channels spread over the grid,
    as BlackVIP's decoder reads the whole vector. The decoder's output is resized to the
    image, so the parameter count does not grow with resolution.
    """

    def __init__(self, image_channels: int = 3, features: int = 8, trigger: int = 8,
                 hidden: int = 16, grid: int = 8, seed: int = 0, encoder: str = CONV,
                 encoder_file: str | None = None, encoder_pretrained: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trigger = nn.Parameter(torch.rand(trigger, generator=gen) * 0.1)  # BlackVIP's U(0, 0.1)
        self.encoder = build_encoder(encoder, image_channels, features, grid, gen,
                                     encoder_file, encoder_pretrained)
        self.grid = grid
        self.project = None
        if encoder != CONV:
            self.project = nn.Linear(self.encoder.out_features, features)
        self.mix = nn.Conv2d(features + trigger, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, image_channels, 3, padding=1)
        with torch.no_grad():
            for layer in (self.mix, self.project):
                if layer is None:
                    continue
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                layer.bias.zero_()
            # a zero prompt at the start: training begins from the base classifier itself
            self.out.weight.zero_()
            self.out.bias.zero_()

    def learnable(self) -> list[nn.Parameter]:
        """The decoder and trigger, in a fixed order (SPSA flattens them into one vector)."""
        project = list(self.project.parameters()) if self.project is not None else []
        return [self.trigger, *project, *self.mix.parameters(), *self.out.parameters()]

    def train(self, mode: bool = True) -> Coordinator:
        super().train(mode)
        self.encoder.eval()  # frozen: its dropout and norm statistics never change
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.encoder(x)
        if self.project is not None:
            z = self.project(z).view(len(x), -1, 1, 1).expand(-1, -1, self.grid, self.grid)
        trigger = self.trigger.view(1, -1, 1, 1).expand(len(x), -1, *z.shape[-2:])
        h = F.gelu(self.mix(torch.cat([z, trigger], dim=1)))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(self.out(h))


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
