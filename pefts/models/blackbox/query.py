"""Probability-only access to a classifier, the way a prediction API exposes a model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _oracle(classifier: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                             Callable[[Callable], None]]:
    """Close over the classifier so no attribute, submodule or state_dict entry of the
    caller leads to it: only these two functions can touch it."""
    for p in classifier.parameters():
        p.requires_grad_(False)
    classifier.eval()

    def query(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(classifier(x).float(), dim=-1).detach()

    def move(fn: Callable) -> None:
        classifier._apply(fn)

    return query, move


class QueryModel(nn.Module):
    """Maps images to class probabilities and nothing else.

    It has no parameters, buffers or submodules of its own, no gradient ever reaches
    the wrapped classifier (its outputs never require grad), and every call is
    counted: ``calls`` forward passes covering ``images`` images.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self._query, self._move = _oracle(classifier)
        self.images = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self._query(x)
        self.images += len(x)
        self.calls += 1
        return probs

    def reset_counts(self) -> None:
        self.images = self.calls = 0

    def _apply(self, fn: Callable, recurse: bool = True) -> QueryModel:
        # .to(device) / .half() on an enclosing model must still reach the hidden classifier
        self._move(fn)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"images={self.images}, calls={self.calls}"
