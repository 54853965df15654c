"""Diffusion denoised smoothing (Carlini, Tramer et al., ICLR 2023): one denoising step
of a pretrained DDPM at the timestep whose noise level matches sigma, then the frozen
base classifier. Nothing trains; "fitting" to a sigma only picks that timestep.

The noisy image z = x + d in [0,1] becomes 2z - 1 = (2x - 1) + 2d in the DDPM's [-1,1]
space, so its noise level there is 2 sigma. The first timestep t* with
sqrt((1 - abar_t) / abar_t) >= 2 sigma matches it, and sqrt(abar_t*) (2z - 1) has the
law of the forward process at t*. Unlike the authors' code (which re-noises the clean
image), the denoiser here is a deterministic function of z, which is what the
certificate for x needs.

The UNet is convolutional: like Carlini et al.'s ImageNet code (224 crops into the
256x256 model), it runs on the image as it is whenever the image's sides are multiples
of its total downsampling. Only where they are not is the noisy image resized to the
UNet's size and back; resizing scales the noise's std (and correlates neighbours), so t*
is then matched to the noise level the UNet actually sees, measured once per image size
by resizing a fixed-seed white-noise probe the same way.

Two kinds of weights: a released checkpoint of guided-diffusion or improved-diffusion
(``release``, the file that ``pefts fetch-weights`` makes; pefts.models.diffusion), each with
its own schedule, as Carlini et al. ran them; or a local diffusers folder (UNet2DModel +
DDPMScheduler, e.g. google/ddpm-cifar10-32). The classifier after the denoiser is the
base classifier, or (``classifier``) a timm model of its own, as Carlini et al.'s
BEiT-L/16 at 512.
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
from pefts.hparams import Param, Text
from pefts.methods.base import Method, freeze
from pefts.methods.denoiser import DenoisedClassifier
from pefts.models.classifier import PixelClassifier, count_parameters
from pefts.runtime.verified import verified
from pefts.training.loop import TrainConfig

WEIGHTS_KEY = "method_params.diffusion.hparams.weights"
# the names of pefts.models.diffusion.releases.RELEASES, as a literal: the dry run reads the
# specs from this file without importing it
RELEASE_NAMES = ("guided-diffusion-256-uncond", "improved-diffusion-cifar10-uncond")


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The first t >= 1 whose DDPM noise level sqrt((1 - abar_t) / abar_t) reaches 2 sigma.

    t = 0 is never picked, as in Carlini et al.'s certify.py (their loop increments t
    before its first test): the two differ only for sigma at or below t = 0's level (0.0016
    on the CIFAR-10 model's cosine schedule, 0.005 on ImageNet's linear one)."""
    ratio = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    hits = torch.nonzero(ratio[1:] >= 2 * sigma).flatten()
    if len(hits) == 0:
        raise PeftsError(f"sigma {sigma} is beyond the diffusion model's noise schedule "
                         f"(its largest level is sigma {float(ratio[-1]) / 2:.3g})")
    return int(hits[0]) + 1


def unet_folder(weights: str | Path) -> tuple[Path, Path]:
    """The UNet's and the scheduler's config folders inside a local diffusers folder:
    a saved pipeline has unet/ and scheduler/ subfolders, a bare model has both files at
    its top (the layout of google/ddpm-cifar10-32 on the hub)."""
    root = Path(weights)
    if root.is_file():
        raise PeftsError(f"diffusion weights {root} is a file, not a diffusers folder "
                         f"({WEIGHTS_KEY}); a released checkpoint file needs its release "
                         f"(method_params.diffusion.hparams.release: {', '.join(RELEASE_NAMES)})")
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

    verified(weights, f"diffusion weights folder ({WEIGHTS_KEY})")
    unet_dir, scheduler_dir = unet_folder(weights)
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise PeftsError(f"cannot load the diffusion model from {weights}: "
                         f"{str(err).splitlines()[0]}") from None
    return unet, scheduler.alphas_cumprod.to(torch.float32)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased when shrinking: the one resize used on images and probes."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False,
                         antialias=size[-1] < x.shape[-1])


def noise_gain(native: tuple[int, int], size: tuple[int, int], channels: int = 16) -> float:
    """Std of white noise after the resize from ``native`` to ``size``, per unit of std
    before it (a fixed-seed probe: the same number on every call)."""
    probe = torch.randn(1, channels, *native, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    return float(resize(probe, size).std() / probe.std())


def downsampling(unet: nn.Module) -> int | None:
    """The UNet's total downsampling factor (2 per level after the first); None when its
    config does not say (then only its own sample size is known to fit)."""
    if getattr(unet.config, "downsampling", None):  # the released checkpoints' UNet
        return unet.config.downsampling
    levels = getattr(unet.config, "block_out_channels", None)
    return 2 ** (len(levels) - 1) if levels else None


class DiffusionDenoiser(nn.Module):
    """z in [0,1] -> one-step DDPM estimate of the clean image in [0,1]."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, timestep_scale: float = 1.0):
        """timestep_scale: what the UNet is fed per timestep (improved-diffusion's
        rescale_timesteps feeds t * 1000 / steps)."""
        super().__init__()
        self.unet = unet.eval()
        freeze(self.unet)
        # t* is picked on the schedule's own float64 numbers, as the authors' code does
        self.schedule = alphas_cumprod.to(torch.float64)
        self.timestep_scale = float(timestep_scale)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32), persistent=False)
        # -1 until a sigma is set; saved with the fine-tuned artifact so certification
        # rebuilds the same denoiser (the timestep follows from it and the image size)
        self.register_buffer("sigma", torch.tensor(-1.0, dtype=torch.float64))
        self._timesteps: dict[tuple[int, int], int] = {}

    def sample_size(self) -> tuple[int, int]:
        """The size the UNet was trained at (its config's sample_size)."""
        config = self.unet.config
        side = getattr(config, "sample_size", None) or config.image_size
        return (side, side) if isinstance(side, int) else tuple(side)

    def unet_size(self, native: tuple[int, int]) -> tuple[int, int]:
        """The size the UNet runs at: the image's own when it fits the downsampling."""
        factor = downsampling(self.unet)
        if factor and all(s % factor == 0 for s in native):
            return tuple(native)
        return self.sample_size()

    def timestep(self, native: tuple[int, int]) -> int:
        """t* for the noise the UNet sees on images of size ``native``: 2 sigma, times the
        resize's gain on the noise where a resize is unavoidable."""
        if float(self.sigma) <= 0:
            raise PeftsError("the diffusion denoiser has no noise level: call set_sigma first")
        native = tuple(int(s) for s in native)
        if native not in self._timesteps:
            size = self.unet_size(native)
            gain = 1.0 if size == native else noise_gain(native, size)
            self._timesteps[native] = timestep_for_sigma(self.schedule, float(self.sigma) * gain)
        return self._timesteps[native]

    def set_sigma(self, sigma: float, native: tuple[int, int] | None = None) -> int:
        """Match ``sigma``; returns t* for images of size ``native`` (the UNet's own by default)."""
        self.sigma.fill_(sigma)
        self._timesteps.clear()
        return self.timestep(native or self.sample_size())

    def train(self, mode: bool = True) -> DiffusionDenoiser:
        # frozen and pretrained: dropout inside the UNet must never switch on
        super().train(False)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        native = tuple(z.shape[-2:])
        t = self.timestep(native)
        abar = self.alphas_cumprod[t]
        size = self.unet_size(native)
        x = z * 2 - 1
        if native != size:
            x = resize(x, size)
        x_t = abar.sqrt() * x
        if self.timestep_scale == 1:
            steps = torch.full((len(z),), t, device=z.device, dtype=torch.long)
        else:
            steps = torch.full((len(z),), t * self.timestep_scale, device=z.device)
        eps = self.unet(x_t, steps)
        eps = getattr(eps, "sample", eps)  # diffusers wraps its output
        # guided-diffusion style models also predict a variance: the noise is the first half
        eps = eps[:, :x.shape[1]]
        x0 = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        if native != size:
            x0 = resize(x0, native).clamp(-1, 1)
        return (x0 + 1) / 2


def classifier_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """The denoised image at the classifier's input side, as Carlini et al.'s DRM.py
    hands it over on CIFAR-10 (32 -> 224) and ImageNet (224 -> 512): bicubic with
    antialiasing (PIL's bicubic kernel, also when enlarging), whatever the classifier's
    own input layer would do."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


class DiffusionClassifier(DenoisedClassifier):
    """f(resize(D(z))): the classifier sees the denoised image at its own input size,
    resized as the authors resize it (the base's input layer resizes bilinearly, which
    moves a CIFAR-10 classifier input by up to 0.5 on random-weight outputs)."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, input_size: int):
        super().__init__(denoiser, classifier)
        self.input_size = int(input_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(classifier_resize(self.denoiser(z), self.input_size))


class DiffusionSmoothing(Method):
    name = "diffusion"
    trains_head = False
    # release: a released checkpoint (pefts.models.diffusion.releases) whose file ``weights``
    # names (by default the copy `pefts fetch-weights` makes); without it, ``weights`` is
    # a local diffusers folder (UNet2DModel + DDPMScheduler config), e.g.
    # google/ddpm-cifar10-32 saved with save_pretrained. classifier: a timm model to
    # classify the denoised image instead of the base (weights in classifier_file, by
    # default the fetched copy). Nothing is downloaded.
    defaults = {"weights": None, "release": None, "classifier": None, "classifier_file": None}
    specs = {"weights": Text(optional=True),  # None is refused below, naming the config key
             "release": Param(str, choices=RELEASE_NAMES, optional=True),
             "classifier": Text(optional=True), "classifier_file": Text(optional=True)}

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if not self.hparams["weights"]:
            what = "checkpoint file" if self.hparams["release"] else "diffusers folder"
            raise PeftsError(f"method 'diffusion' needs a local {what}: set {WEIGHTS_KEY}")

    def load_denoiser(self) -> DiffusionDenoiser:
        release = self.hparams["release"]
        if release:
            from pefts.models.diffusion.loading import load_release

            return DiffusionDenoiser(*load_release(self.hparams["weights"], release))
        return DiffusionDenoiser(*load_unet(self.hparams["weights"]))

    def build(self, base: PixelClassifier) -> nn.Module:
        freeze(base)
        denoiser = self.load_denoiser()
        config = denoiser.unet.config
        channels, unet_channels = len(base.spec.mean), config.in_channels
        if unet_channels != channels:
            raise PeftsError(f"the diffusion UNet takes {unet_channels} channels, "
                             f"the images have {channels}")
        classifier: nn.Module = base
        size = base.spec.input_size
        if self.hparams["classifier"]:
            from pefts.models.diffusion.classifier import load_classifier

            classifier = load_classifier(self.hparams["classifier"], self.hparams["classifier_file"],
                                         base.spec.num_classes)
            freeze(classifier)
            size = classifier.size
        return DiffusionClassifier(denoiser, classifier, size)

    def fit(self, model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
            device: torch.device | str) -> dict[str, Any]:
        """Nothing trains: the pretrained DDPM is only matched to sigma."""
        model.to(device)
        native = tuple(data[0][0].shape[-2:]) if data is not None and len(data) else None
        t = model.denoiser.set_sigma(sigma, native)
        abar = float(model.denoiser.schedule[t])
        size = model.denoiser.unet_size(native) if native else None
        return {"timestep": t, "timestep_sigma": math.sqrt((1 - abar) / abar) / 2,
                "unet_size": list(size) if size else None, "resized": bool(native and size != native)}

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # the one thing a run adds to the pretrained weights: the sigma it was matched to
        # (t* follows from it and each image size)
        return {"denoiser.sigma": model.denoiser.sigma.detach()}

    def frozen_parts(self, model: nn.Module) -> dict[str, int]:
        parts = {"diffusion UNet": count_parameters(model.denoiser.unet)}
        if self.hparams["classifier"]:
            parts["classifier"] = count_parameters(model.classifier)
        return parts
