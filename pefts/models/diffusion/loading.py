"""A released checkpoint into our UNet, strictly: every key of the authors' file in its
place with its shape, nothing missing, nothing left over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pefts.errors import PeftsError
from pefts.models.classifier import read_state_dict
from pefts.models.diffusion.releases import Release, get_release
from pefts.models.diffusion.schedules import alphas_cumprod
from pefts.models.diffusion.unet import UNet, UNetConfig
from pefts.runtime.verified import verified


def build_unet(release: Release | str, device: torch.device | str = "cpu") -> UNet:
    """The release's UNet with fresh weights; on the meta device it costs no memory."""
    release = get_release(release) if isinstance(release, str) else release
    with torch.device(device):
        return UNet(UNetConfig(**release.unet))


def load_state(unet: UNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``unet``, refusing any key or shape that is not the model's.
    On a meta-device model the tensors are taken as they are (assign)."""
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                 f"{len(wrong)} of another shape (file vs model: {'; '.join(wrong[:3])})" if wrong else ""]
        raise PeftsError(f"{source} is not the checkpoint this UNet expects: "
                         + "; ".join(p for p in parts if p))
    meta = next(iter(expected.values())).is_meta
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=meta)


def load_release(weights: str | Path | None, release: str) -> tuple[UNet, torch.Tensor, float]:
    """The UNet of ``release`` with the weights of the local file ``weights`` (our
    fetched safetensors copy, or the authors' .pt read with weights_only; None: fresh
    random weights, for timing), the schedule's alphas_cumprod (float64) and the factor
    timesteps are fed to it with."""
    spec = get_release(release)
    if weights is None:
        unet = build_unet(spec)
    else:
        verified(weights, "diffusion weights file (method_params.diffusion.hparams.weights)")
        unet = build_unet(spec, "meta")
        load_state(unet, read_state_dict(weights), f"diffusion weights file {weights} ({release})")
    return unet.eval(), alphas_cumprod(spec.schedule, spec.steps), spec.timestep_scale


def download_release(name: str) -> dict[str, Any]:
    """The authors' checkpoint from their blob storage, read without unpickling code
    (weights_only), checked against our UNet before it is kept."""
    spec = get_release(name)
    state = torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", weights_only=True,
                                               check_hash=False, progress=True)
    load_state(build_unet(spec, "meta"), state, spec.url)
    return state
