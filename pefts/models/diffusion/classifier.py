"""A classifier of its own after the diffusion denoiser, as Carlini et al. ran one: a timm
model at its own input size (BEiT-L/16 at 512 on ImageNet), fed the denoised image
resized bicubic with antialiasing and normalised as the model was trained."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pefts.errors import PeftsError
from pefts.models.classifier import read_state_dict
from pefts.runtime.verified import verified

CLASSIFIER_KEY = "method_params.diffusion.hparams.classifier"
CLASSIFIER_FILE_KEY = "method_params.diffusion.hparams.classifier_file"


class ResizedClassifier(nn.Module):
    """[0,1] images of any size -> logits of ``net`` at its pretrained input size."""

    def __init__(self, net: nn.Module, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            # their DRM.py: F.interpolate(imgs, (512, 512), mode="bicubic", antialias=True)
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True)
        return self.net((x - self.mean) / self.std)


def load_classifier(name: str, weights: str | Path | None, num_classes: int) -> ResizedClassifier:
    """timm's ``name`` with the weights of the local file ``weights`` (fetched by
    ``pefts fetch-weights``), strictly; it must answer for the data's ``num_classes``."""
    try:
        net = timm.create_model(name, pretrained=False)
    except RuntimeError as err:
        raise PeftsError(f"unknown timm classifier {name!r} ({CLASSIFIER_KEY}): "
                         f"{str(err).splitlines()[0]}") from None
    if net.num_classes != num_classes:
        raise PeftsError(f"classifier {name} has {net.num_classes} classes, the data "
                         f"{num_classes} ({CLASSIFIER_KEY})")
    verified(weights, f"classifier weights file ({CLASSIFIER_FILE_KEY})")
    try:
        missing, extra = net.load_state_dict(read_state_dict(weights), strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise PeftsError(f"classifier weights file {weights} does not fit {name}: "
                         f"{str(err).splitlines()[-1].strip()}") from None
    if missing or extra:
        raise PeftsError(f"classifier weights file {weights} does not fit {name}: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    cfg = net.pretrained_cfg
    return ResizedClassifier(net.eval(), int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
