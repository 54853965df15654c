"""The untuned base classifier under smoothing: the plain randomized-smoothing baseline."""

from __future__ import annotations

from torch import nn

from pefts.methods.base import Method, freeze
from pefts.models.classifier import PixelClassifier


class NoTuning(Method):
    name = "none"
    trains = False
    trains_head = False

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        return base
