"""The released diffusion checkpoints Carlini et al. certify with, as data: where the
authors put them, the UNet settings they were trained with and their noise schedule.

Free of torch: ``pefts fetch-weights`` and the Snakefile read it on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pefts.errors import PeftsError

BLOB = "https://openaipublic.blob.core.windows.net/diffusion"


@dataclass(frozen=True)
class Release:
    name: str
    url: str
    schedule: str  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal)
    steps: int  # diffusion steps of the schedule
    # improved-diffusion's rescale_timesteps: the model is fed t * 1000 / steps
    rescale_timesteps: bool
    # the UNet's settings (pefts.models.diffusion.unet.UNetConfig), as in the authors' script_util
    unet: dict[str, Any] = field(default_factory=dict)

    @property
    def timestep_scale(self) -> float:
        return 1000.0 / self.steps if self.rescale_timesteps else 1.0


RELEASES = {r.name: r for r in (
    # guided-diffusion (Dhariwal & Nichol 2021), the ImageNet model of Carlini et al.'s
    # imagenet/DRM.py: 552,814,086 parameters
    Release("guided-diffusion-256-uncond", f"{BLOB}/jul-2021/256x256_diffusion_uncond.pt",
            "linear", 1000, False,
            dict(image_size=256, model_channels=256, num_res_blocks=2,
                 channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(32, 16, 8),
                 num_heads=4, num_head_channels=64, resblock_updown=True,
                 use_scale_shift_norm=True, dropout=0.0, learn_sigma=True)),
    # improved-diffusion (Nichol & Dhariwal 2021), L_hybrid, the CIFAR-10 model of
    # Carlini et al.'s cifar10/DRM.py: 52,546,438 parameters (the paper's "52.5M")
    Release("improved-diffusion-cifar10-uncond", f"{BLOB}/march-2021/cifar10_uncond_50M_500K.pt",
            "cosine", 4000, True,
            dict(image_size=32, model_channels=128, num_res_blocks=3,
                 channel_mult=(1, 2, 2, 2), attention_resolutions=(16, 8), num_heads=4,
                 num_head_channels=-1, resblock_updown=False, use_scale_shift_norm=True,
                 dropout=0.3, learn_sigma=True)),
)}


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise PeftsError(f"unknown diffusion release {name!r} "
                         f"(method_params.diffusion.hparams.release); known: {', '.join(RELEASES)}")
    return RELEASES[name]
