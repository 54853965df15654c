"""Denoised smoothing (Salman et al., 2020): a DnCNN denoiser in front of the frozen
base classifier; only the denoiser trains.

The denoiser is part of the returned model, so the certifier smooths f(D(x + d)): D
sees the noisy input, which is what keeps the certificate valid for x.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pefts.errors import PeftsError
from pefts.hparams import Choice, Float, Int
from pefts.methods.base import Method, freeze
from pefts.models.classifier import PixelClassifier
from pefts.training.loop import TrainConfig, optimise
from pefts.training.streams import noise_like

OBJECTIVES = ("mse", "mse+stability")


class DnCNN(nn.Module):
    """Zhang et al. (2017): conv+ReLU, (depth - 2) x (conv, BN, ReLU), conv.

    The network predicts the noise and the output is the input minus that prediction
    (residual learning), in [0,1] pixel space like the rest of the pipeline.
    """

    def __init__(self, image_channels: int = 3, depth: int = 17, channels: int = 64):
        super().__init__()
        if depth < 2 or channels < 1:
            raise PeftsError(f"DnCNN needs depth >= 2 and channels >= 1, got {depth} and {channels}")
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels, 3, padding=1),
                                   nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            # BatchNorm follows, so a conv bias would be redundant
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        last = nn.Conv2d(channels, image_channels, 3, padding=1, bias=False)
        # zero noise estimate at the start: an untrained denoiser is the identity, so
        # training starts from the plain smoothed classifier instead of from garbage
        nn.init.zeros_(last.weight)
        self.body = nn.Sequential(*layers, last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.body(z)


class DenoisedClassifier(nn.Module):
    """f(D(z)) for a noisy image z."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(z))

    def train(self, mode: bool = True) -> DenoisedClassifier:
        # the classifier is frozen: its dropout and BatchNorm statistics must not change
        super().train(mode)
        self.classifier.eval()
        return self


class DenoisedSmoothing(Method):
    name = "denoiser"
    trains_head = False
    # Salman et al. train with MSE, then fine-tune with the stability objective at a much
    # smaller learning rate (their released commands: Adam, 1e-5); stability_lr is that rate
    defaults = {"depth": 17, "channels": 64, "objective": "mse+stability", "stability_epochs": 0.0,
                "stability_lr": 1e-5}
    specs = {"depth": Int(2), "channels": Int(1), "objective": Choice(*OBJECTIVES),
             "stability_epochs": Float(0), "stability_lr": Float(0, low_open=True)}

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        objective, stab = self.hparams["objective"], float(self.hparams["stability_epochs"])
        if objective == "mse" and stab > 0:
            raise PeftsError("stability_epochs > 0 needs objective 'mse+stability'")

    def make_denoiser(self, channels: int) -> nn.Module:
        """The denoiser network for images with ``channels`` channels; subclasses swap it."""
        return DnCNN(channels, int(self.hparams["depth"]), int(self.hparams["channels"]))

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        return DenoisedClassifier(self.make_denoiser(len(base.spec.mean)), base)

    def stability_epochs(self, cfg: TrainConfig) -> float:
        """Epochs of the stability fine-tune: 0 when off; 'mse+stability' without a count
        fine-tunes as long as the MSE phase trained."""
        if self.hparams["objective"] != "mse+stability":
            return 0.0
        return float(self.hparams["stability_epochs"]) or float(cfg.epochs)

    def fit(self, model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
            device: torch.device | str) -> dict[str, Any]:
        model.to(device)
        denoiser, classifier = model.denoiser, model.classifier

        def mse(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            noisy = x + noise_like(x) * sigma
            loss = F.mse_loss(denoiser(noisy), x)
            n = len(x)
            return loss, {"mse_denoised": float(loss.detach()) * n,
                          "mse_noisy": float(F.mse_loss(noisy, x)) * n}

        def stability(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            # Salman et al.'s Stab objective: the classifier's own clean prediction is the label
            with torch.no_grad():
                target = classifier(x).argmax(1)
            logits = classifier(denoiser(x + noise_like(x) * sigma))
            loss = F.cross_entropy(logits, target)
            pred = logits.argmax(1)
            return loss, {"stability_loss": float(loss.detach()) * len(x),
                          "stability_agreement": float((pred == target).sum()),
                          "train_accuracy": float((pred == y).sum())}

        metrics = optimise(model, data, cfg, cfg.epochs, mse, device, f"{self.name} mse sigma={sigma}")
        metrics["train_loss"] = metrics["mse_denoised"]
        stab_epochs = self.stability_epochs(cfg)
        if stab_epochs > 0:
            stab_cfg = replace(cfg, lr=float(self.hparams["stability_lr"]))
            stab = optimise(model, data, stab_cfg, stab_epochs, stability, device,
                            f"{self.name} stability sigma={sigma}", stream="stability")
            metrics.update(stab, train_loss=stab["stability_loss"])
        return metrics

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # BatchNorm running statistics are buffers, not parameters, and the denoiser is
        # wrong without them
        return {f"denoiser.{k}": v.detach() for k, v in model.denoiser.state_dict().items()}


