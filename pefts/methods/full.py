"""Full fine-tuning: every parameter trains (the paper's reference point)."""

from __future__ import annotations

from torch import nn

from pefts.methods.base import Method
from pefts.models.classifier import PixelClassifier


class FullFineTuning(Method):
    name = "full"

    def build(self, base: PixelClassifier) -> nn.Module:
        for p in base.parameters():
            p.requires_grad_(True)
        return base
