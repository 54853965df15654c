"""Base classifiers: a timm network behind an input layer that resizes and normalises.

Datasets yield [0,1] images at native resolution and noise is added there, so every
certified radius is an L2 distance in raw pixel space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pefts.errors import PeftsError


@dataclass
class BaseSpec:
    """Everything needed to rebuild the base classifier's architecture."""

    arch: str
    num_classes: int
    input_size: int  # side the network sees; images are resized to it inside the model
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseSpec:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


class InputLayer(nn.Module):
    """Resize (e.g. CIFAR 32 -> 224) and normalise: the first layers of every model."""

    def __init__(self, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class PixelClassifier(nn.Module):
    """Maps [0,1] images at native resolution to logits."""

    def __init__(self, net: nn.Module, spec: BaseSpec):
        super().__init__()
        self.spec = spec
        self.input_layer = InputLayer(spec.input_size, spec.mean, spec.std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_layer(x))


def create_net(spec: BaseSpec, pretrained: bool = False, pretrained_file: str | None = None) -> nn.Module:
    """Create the timm network; pretrained weights by timm name or from a local file."""
    kwargs: dict[str, Any] = dict(spec.model_kwargs, num_classes=spec.num_classes)
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise PeftsError(
                f"pretrained weights file {pretrained_file} does not exist (base.pretrained_file)"
            )
        # custom_load=False makes timm read a torch/safetensors state dict rather than a
        # JAX npz; the head is dropped when its size differs from num_classes.
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file), custom_load=False)
        pretrained = True
    try:
        return timm.create_model(spec.arch, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise PeftsError(f"unknown timm architecture {spec.arch!r} (base.arch)") from None
        raise


def build_classifier(
    spec: BaseSpec, pretrained: bool = False, pretrained_file: str | None = None
) -> PixelClassifier:
    return PixelClassifier(create_net(spec, pretrained, pretrained_file), spec)


def replace_head(model: PixelClassifier, num_classes: int) -> None:
    """A fresh ``num_classes``-way head, for a downstream task with other classes."""
    model.net.reset_classifier(num_classes)
    model.spec.num_classes = num_classes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_base(weights: str | Path, device: torch.device | str = "cpu") -> PixelClassifier:
    """Rebuild a base classifier saved by ``pefts train-base``."""
    from pefts.artifacts import load_artifact

    tensors, meta = load_artifact(weights)
    if meta.get("kind") != "base":
        raise PeftsError(f"{weights} is not a base classifier (kind={meta.get('kind')!r})")
    try:
        spec = BaseSpec.from_dict(meta["spec"])
    except (TypeError, KeyError) as err:
        raise PeftsError(f"metadata of {weights} has a malformed spec: {err}") from None
    model = build_classifier(spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise PeftsError(
            f"{weights} does not match its architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.to(device).eval()
