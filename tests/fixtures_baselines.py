"""Local stand-ins for the paper baselines' pretrained weights, so tests download nothing:
a random UNet in a diffusers folder, a random-weight timm encoder and a random CLIP
ViT-B/16 in weights files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# google/ddpm-cifar10-32's UNet2DModel config (35.7M parameters), written out so a
# realistic UNet can be built with random weights and no download
DDPM_CIFAR10_UNET: dict[str, Any] = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, dropout=0.1,
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, act_fn="silu")

TINY_UNET: dict[str, Any] = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)


def unet_folder(path: str | Path, seed: int = 0, pipeline_layout: bool = True,
                **config: Any) -> Path:
    """A random UNet2DModel plus a default DDPMScheduler (1000 linear-beta steps, as
    google/ddpm-cifar10-32) saved where ``diffusion``'s ``weights`` hparam can point:
    unet/ and scheduler/ subfolders like a saved pipeline, or both at the top."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DModel(**{**TINY_UNET, **config})
    unet.save_pretrained(path / "unet" if pipeline_layout else path)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(
        path / "scheduler" if pipeline_layout else path)
    return path


def timm_weights_file(path: str | Path, arch: str = "vit_base_patch16_224.mae",
                      seed: int = 0) -> Path:
    """Random weights of a timm model in a safetensors file, as the black box's
    ``encoder_file`` reads them (the paper's MAE ViT-B/16 by default)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return Path(path)


def paper_baseline_overrides(folder: str | Path, image_size: int = 32) -> dict[str, Any]:
    """``method_params`` entries that point a paper preset's diffusion and black-box runs
    at local random stand-ins built under ``folder`` (a tiny diffusers UNet at the data's
    ``image_size`` in place of the released checkpoint and the base as its classifier,
    a random MAE ViT-B/16 file); merge them into the preset's own. The released
    checkpoints at their real sizes are run by tests/test_baselines_realsize.py: on a
    CPU one pass of the 552M ImageNet UNet takes minutes, too slow for a whole pipeline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # no attention blocks: the pipeline runs this stand-in on the 224 crop, where
    # TINY_UNET's attention over 112 x 112 positions took 19 s a sample on a CPU
    unet = unet_folder(folder / "ddpm", sample_size=image_size,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    mae = timm_weights_file(folder / "mae_vitb16.safetensors")
    clip = clip_weights_file(folder / "clip_vitb16.safetensors")
    return {"diffusion": {"hparams": {"weights": str(unet), "release": None, "classifier": None}},
            "blackbox": {"hparams": {"encoder_file": str(mae), "clip_file": str(clip)}}}


# a CLIP small enough for unit tests, registered with open_clip under its own name
TINY_CLIP = "pefts-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(folder: str | Path) -> str:
    """Make ``TINY_CLIP`` an open_clip architecture (in this process) and return its name."""
    import json

    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        path = Path(folder) / f"{TINY_CLIP}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


def clip_weights_file(path: str | Path, arch: str = "ViT-B-16", seed: int = 0) -> Path:
    """Random weights of open_clip's ``arch`` (the paper's CLIP ViT-B/16 by default) in a
    safetensors file, as the black box's ``clip_file`` reads them; nothing is downloaded."""
    from safetensors.torch import save_file

    from pefts.models.blackbox.clip import bare_model

    torch.manual_seed(seed)
    model = bare_model(arch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)


def preset_blackbox(preset: str | Path) -> dict[str, Any]:
    """The black box's hyper-parameters in a paper preset, the method's defaults filled in."""
    import yaml

    from pefts.methods import get_method

    with open(preset) as f:
        hparams = yaml.safe_load(f)["method_params"]["blackbox"]["hparams"]
    return get_method("blackbox", **hparams).hparams
