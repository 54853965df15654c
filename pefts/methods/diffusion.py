"""Diffusion denoised smoothing (Carlini, Tramer et al., ICLR 2023): one denoising step
of a pretrained DDPM at the timestep whose noise level matches sigma, then the frozen
base classifier. Nothing trains; "fitting" to a sigma only picks that timestep.

The noisy image z = x + d in [0,1] becomes 2z - 1 = (2x - 1) + 2d in the DDPM's [-1,1]
space, so its noise level there is 2 sigma. The first timestep t* with
sqrt((1 - abar_t) / abar_t) >= 2 sigma matches it, and sqrt(abar_t*) (2z - 1) has the
law of the forward process at t*. Unlike the authors' code (which re-noises the clean
image), the denoiser here is a deterministic function of z, which is what the
certificate for x needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pefts.errors import PeftsError
from pefts.hparams import Text
from pefts.methods.base import Method, freeze
from pefts.methods.denoiser import DenoisedClassifier
from pefts.models import PixelClassifier, count_parameters
from pefts.training import TrainConfig

WEIGHTS_KEY = "method_params.diffusion.hparams.weights"


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The first t whose DDPM noise level sqrt((1 - abar_t) / abar_t) reaches 2 sigma."""
    ratio = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    hits = torch.nonzero(ratio >= 2 * sigma).flatten()
    if len(hits) == 0:
        raise PeftsError(f"sigma {sigma} is beyond the diffusion model's noise schedule "
                         f"(its largest level is sigma {float(ratio[-1]) / 2:.3g})")
    return int(hits[0])


def unet_folder(weights: str | Path) -> tuple[Path, Path]:
    """The UNet's and the scheduler's config folders inside a local diffusers folder:
    a saved pipeline has unet/ and scheduler/ subfolders, a bare model has both files at
    its top (the layout of google/ddpm-cifar10-32 on the hub)."""
    root = Path(weights)
    if not root.is_dir():
        raise PeftsError(f"diffusion weights folder {root} does not exist ({WEIGHTS_KEY})")
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    scheduler = root / "scheduler" if (root / "scheduler" / "scheduler_config.json").is_file() else root
    if not (unet / "config.json").is_file():
        raise PeftsError(f"{root} holds no diffusers UNet (config.json at its top or in unet/)")
    if not (scheduler / "scheduler_config.json").is_file():
        raise PeftsError(f"{root} holds no scheduler_config.json (at its top or in scheduler/)")
    return unet, scheduler


def load_unet(weights: str | Path) -> tuple[nn.Module, torch.Tensor]:
    """UNet2DModel and its scheduler's alphas_cumprod, from local files only."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet_dir, scheduler_dir = unet_folder(weights)
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise PeftsError(f"cannot load the diffusion model from {weights}: "
                         f"{str(err).splitlines()[0]}") from None
    return unet, scheduler.alphas_cumprod.to(torch.float32)


class DiffusionDenoiser(nn.Module):
    """z in [0,1] -> one-step DDPM estimate of the clean image in [0,1]."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet.eval()
        freeze(self.unet)
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        # -1 until a sigma is set; saved with the fine-tuned artifact so certification
        # rebuilds the same denoiser
        self.register_buffer("timestep", torch.tensor(-1, dtype=torch.long))

    def set_sigma(self, sigma: float) -> int:
        t = timestep_for_sigma(self.alphas_cumprod, sigma)
        self.timestep.fill_(t)
        return t

    def train(self, mode: bool = True) -> DiffusionDenoiser:
        # frozen and pretrained: dropout inside the UNet must never switch on
        super().train(False)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = int(self.timestep)
        if t < 0:
            raise PeftsError("the diffusion denoiser has no noise level: call set_sigma first")
        abar = self.alphas_cumprod[t]
        side = self.unet.config.sample_size
        size = (side, side) if isinstance(side, int) else tuple(side)
        x = z * 2 - 1
        native = x.shape[-2:]
        if native != size:
            # Carlini et al. resize ImageNet's 224 crops to the 256x256 model and back
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        x_t = abar.sqrt() * x
        steps = torch.full((len(z),), t, device=z.device, dtype=torch.long)
        eps = self.unet(x_t, steps).sample
        # guided-diffusion style models also predict a variance: the noise is the first half
        eps = eps[:, :x.shape[1]]
        x0 = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        if native != size:
            x0 = F.interpolate(x0, size=native, mode="bicubic", align_corners=False).clamp(-1, 1)
        return (x0 + 1) / 2


class DiffusionSmoothing(Method):
    name = "diffusion"
    trains_head = False
    # weights: a local diffusers folder (UNet2DModel + DDPMScheduler config), e.g.
    # google/ddpm-cifar10-32 saved with save_pretrained; nothing is downloaded
    defaults = {"weights": None}
    specs = {"weights": Text(optional=True)}  # None is refused below, naming the config key

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not self.hparams["weights"]:
            raise PeftsError(f"method 'diffusion' needs a local diffusers folder: set {WEIGHTS_KEY}")

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        unet, alphas_cumprod = load_unet(self.hparams["weights"])
        channels = len(base.spec.mean)
        if unet.config.in_channels != channels:
            raise PeftsError(f"the diffusion UNet takes {unet.config.in_channels} channels, "
                             f"the images have {channels}")
        return DenoisedClassifier(DiffusionDenoiser(unet, alphas_cumprod), base)

    def fit(self, model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
            device: torch.device | str) -> dict[str, Any]:
        """Nothing trains: the pretrained DDPM is only matched to sigma."""
        model.to(device)
        t = model.denoiser.set_sigma(sigma)
        abar = float(model.denoiser.alphas_cumprod[t])
        return {"timestep": t, "timestep_sigma": math.sqrt((1 - abar) / abar) / 2}

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # the one thing a run adds to the pretrained folder: the timestep chosen for sigma
        return {"denoiser.timestep": model.denoiser.timestep.detach()}

    def frozen_parts(self, model: nn.Module) -> dict[str, int]:
        return {"diffusion UNet": count_parameters(model.denoiser.unet)}
