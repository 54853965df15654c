"""What one forward pass of each method's certified network costs, for `pefts plan`.

The certifier runs the whole certified function once per noise sample: the base ViT with
the method's changes (a prompt adds its tokens to every layer), a denoiser's own network
in front of the classifier, the diffusion UNet in front of it, or the black box's encoder,
decoder and the queried CLIP. Only ViT-B/16 (+ LoRA) is measured on a GPU (an NVIDIA
H200, one figure per path: fp32, bf16 unmerged, merged, merged and compiled;
pefts.study.plan.PATH_RATES, docs/cost.md); every other method's rate is its path's figure
scaled by its FLOPs relative to LoRA's, the FLOPs counted by torch's FlopCounterMode on
the meta device (no weights, no memory), so a method that does more work per sample is
priced so. FLOPs do not see memory-bound layers, so the scaled rates are estimates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEASURED_METHOD = "lora"  # the method the H200 rates were measured with
# GFLOP of the measured network (ViT-B/16 + LoRA rank 2 at 224x224), as
# pefts.study.plan.reference_gflop() counts it (tests/test_plan.py): every rate scales by it
REFERENCE_GFLOP = 35.155
# the images' native side, where the noise is added (a config's dataset.crop overrides)
NATIVE_SIZE = {"cifar10": 32, "imagenet": 224, "digits": 8}

# google/ddpm-cifar10-32 (Ho et al., 35.7M parameters): the CIFAR-10 preset's UNet, whose
# config is needed to count its FLOPs when the weights folder is not on this machine
DDPM_CIFAR10_32 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6,
    "norm_num_groups": 32, "attention_head_dim": None, "mid_block_scale_factor": 1}
KNOWN_UNETS = {"ddpm-cifar10-32": DDPM_CIFAR10_32}

# GFLOP per forward of the presets' runs, written by `record()` (tests/test_forward_cost.py
# recomputes each and fails on any drift); key: forward_key(). Runs not listed are counted
# when planned.
RECORDED: dict[str, float] = {
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "adapter", {"bottleneck": 9'
    '1}]':
        36.448,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "blackbox", {"clip_arch": "'
    'ViT-B-16", "encoder": "vit_base_patch16_224.mae", "grid": 7, "query": "clip", "trigger":'
    ' 800, "widths": [64, 64, 32, 32, 16]}]':
        67.422,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "denoiser", {"channels": 64'
    ', "depth": 17}]':
        90.964,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "diffusion", {"classifier":'
    ' "beit_large_patch16_512.in22k_ft_in22k_in1k", "release": "guided-diffusion-256-uncond"}'
    ']':
        2436.556,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "full", {}]':
        35.126,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "lora", {"alpha": 1, "rank"'
    ': 1}]':
        35.141,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "lora", {"alpha": 16, "rank'
    '": 16}]':
        35.359,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "lora", {"alpha": 2, "rank"'
    ': 2}]':
        35.155,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "lora", {"alpha": 4, "rank"'
    ': 4}]':
        35.184,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "lora", {"alpha": 8, "rank"'
    ': 8}]':
        35.242,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "none", {}]':
        35.126,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "prompt", {"length": 100}]':
        53.934,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "prompt", {"length": 10}]':
        36.974,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "prompt", {"length": 1}]':
        35.311,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "prompt", {"length": 50}]':
        44.438,
    '["vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, {}, 224, "sunet", {"depths": [8, 8, '
    '8, 8], "embed_dim": 96, "heads": [8, 8, 8, 8], "img_size": 224, "mlp_ratio": 4.0, "patch'
    '_size": 4, "window": 8}]':
        86.943,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "adapter", {"bottleneck": 91}]':
        36.448,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "blackbox", {"clip_arch": "ViT-B-16",'
    ' "encoder": "vit_base_patch16_224.mae", "grid": 7, "query": "clip", "trigger": 800, "wid'
    'ths": [64, 64, 32, 32, 16]}]':
        67.422,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "denoiser", {"channels": 64, "depth":'
    ' 17}]':
        36.266,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "diffusion", {"release": "improved-di'
    'ffusion-cifar10-uncond"}]':
        51.9,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "full", {}]':
        35.126,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "lora", {"alpha": 1, "rank": 1}]':
        35.141,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "lora", {"alpha": 16, "rank": 16}]':
        35.359,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "lora", {"alpha": 2, "rank": 2}]':
        35.155,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "lora", {"alpha": 4, "rank": 4}]':
        35.184,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "lora", {"alpha": 8, "rank": 8}]':
        35.242,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "none", {}]':
        35.126,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "prompt", {"length": 100}]':
        53.934,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "prompt", {"length": 10}]':
        36.974,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "prompt", {"length": 1}]':
        35.311,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "prompt", {"length": 50}]':
        44.438,
    '["vit_base_patch16_224.augreg_in21k", 224, {}, 32, "sunet", {"depths": [8, 8, 8, 8], "em'
    'bed_dim": 96, "heads": [8, 8, 8, 8], "img_size": 32, "mlp_ratio": 4.0, "patch_size": 4, '
    '"window": 8}]':
        36.115,
}


@dataclass(frozen=True)
class ForwardCost:
    gflop: float | None  # None: the network cannot be built here (lower bound given)
    source: str


def native_size(config: dict[str, Any]) -> int:
    dataset = config["dataset"]
    return int(dataset.get("crop") or NATIVE_SIZE.get(dataset["name"], config["base"]["input_size"]))


def forward_key(config: dict[str, Any], method: str, hparams: dict[str, Any]) -> str:
    base = config["base"]
    return json.dumps([base["arch"], base["input_size"], base.get("model_kwargs") or {},
                       native_size(config), method, _cost_hparams(method, hparams)], sort_keys=True)


def _cost_hparams(method: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters that change a forward pass (files only by their UNet's name)."""
    drop = {"dropout", "objective", "stability_epochs", "stability_lr", "drop_path", "seed",
            "clip_file", "encoder_file", "clip_pretrained", "a", "c", "p", "gamma", "o",
            "momentum", "perturbations", "steps", "eps", "lr", "classifier_file"}
    kept = {k: v for k, v in hparams.items() if k not in drop}
    if method == "diffusion" and kept.get("release"):
        kept.pop("weights", None)  # a release names its UNet; weights is its fetched copy
    elif method == "diffusion" and kept.get("weights"):
        kept["weights"] = Path(str(kept["weights"])).name
    return kept


def count_gflop(module, *inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 1e9


def _classifier(config: dict[str, Any], method: str, hparams: dict[str, Any]):
    from pefts.methods import build_model, get_method
    from pefts.models.classifier import BaseSpec, build_classifier

    base = config["base"]
    spec = BaseSpec(base["arch"], 10, int(base["input_size"]),
                    model_kwargs=dict(base.get("model_kwargs") or {}))
    classes = [str(c) for c in range(10)]
    return build_model(get_method(method, **hparams), build_classifier(spec), classes, classes)


def _diffusion_classifier(config: dict[str, Any], hparams: dict[str, Any]):
    """What classifies the denoised image: the base, or the row's own classifier (e.g.
    Carlini's BEiT-L/16 at 512, fed the denoised image resized to its size)."""
    if not hparams.get("classifier"):
        return _classifier(config, "none", {})
    import timm

    from pefts.models.diffusion.classifier import ResizedClassifier

    net = timm.create_model(str(hparams["classifier"]), pretrained=False)
    size = net.pretrained_cfg["input_size"][-1]
    return ResizedClassifier(net, size, (0.5,) * 3, (0.5,) * 3)


def _unet(hparams: dict[str, Any]):
    """The diffusion UNet: a released checkpoint's (pefts.models.diffusion.releases), the
    weights folder's config, or a known one by the folder's name."""
    from diffusers import UNet2DModel

    if hparams.get("release"):
        from pefts.models.diffusion.loading import build_unet

        return build_unet(str(hparams["release"]), "meta")
    weights = hparams.get("weights")
    if weights:
        from pefts.methods.diffusion import unet_folder

        try:
            unet_dir, _ = unet_folder(weights)
            return UNet2DModel.from_config(json.loads((unet_dir / "config.json").read_text()))
        except Exception:  # noqa: BLE001 - absent or unreadable: try the known configs
            known = KNOWN_UNETS.get(Path(weights).name)
            if known is not None:
                return UNet2DModel.from_config(known)
    return None


def forward_cost(config: dict[str, Any], method: str, hparams: dict[str, Any]) -> ForwardCost:
    """GFLOP of one forward pass of ``method`` (with ``hparams``) on one image, as the
    certifier runs it, recorded or counted on the meta device."""
    key = forward_key(config, method, hparams)
    if key in RECORDED:
        return ForwardCost(RECORDED[key], "FLOPs counted by code")
    if key not in _COUNTED:  # counted once per process (the Snakefile asks per sigma)
        _COUNTED[key] = count_forward(config, method, hparams)
    return _COUNTED[key]


_COUNTED: dict[str, ForwardCost] = {}


def count_forward(config: dict[str, Any], method: str, hparams: dict[str, Any]) -> ForwardCost:
    import torch

    side = native_size(config)
    if method == "blackbox":
        # open_clip moves its model to a real device: built on the CPU, and run with
        # gradients on, since the fused attention of inference escapes the FLOP counter
        return ForwardCost(_blackbox_gflop(config, hparams, torch.zeros(1, 3, side, side)),
                           "FLOPs counted by code")
    with torch.device("meta"):
        x = torch.zeros(1, 3, side, side)
        if method == "diffusion":
            classifier = count_gflop(_diffusion_classifier(config, hparams).eval(), x)
            unet = _unet(hparams)
            if unet is None:
                return ForwardCost(classifier, "lower bound: the classifier alone (the UNet's "
                                               "config is not on this machine)")
            t = torch.zeros(1, dtype=torch.long)
            return ForwardCost(classifier + count_gflop(unet.eval(), x, t), "FLOPs counted by code")
        return ForwardCost(count_gflop(_classifier(config, method, hparams).eval(), x),
                           "FLOPs counted by code")


def _blackbox_gflop(config: dict[str, Any], hparams: dict[str, Any], x) -> float:
    """The coordinator (encoder + decoder) on the noisy image, then the queried black box
    on the prompted one: CLIP's image tower (its text side is encoded once per task, not
    per sample) or the base classifier."""
    import torch

    from pefts.methods import get_method
    from pefts.models.blackbox.clip import bare_model
    from pefts.models.blackbox.coordinator import Coordinator

    h = {**get_method("blackbox").hparams, **hparams}  # the method's defaults filled in
    coordinator = Coordinator(x.shape[1], int(h["features"]), int(h["trigger"]), list(h["widths"]),
                              int(h["grid"]), 0, str(h["encoder"]), None, False)
    if h["query"] != "clip":
        # the prompt is written on the base's own input frame
        side = int(config["base"]["input_size"])
        frame = torch.zeros(1, x.shape[1], side, side)
        return (count_gflop(coordinator.eval(), frame)
                + count_gflop(_classifier(config, "none", {}).eval(), x))
    clip = bare_model(str(h["clip_arch"])).visual
    side = clip.image_size[0] if isinstance(clip.image_size, tuple) else clip.image_size
    # BlackVIP's coordinator reads CLIP's 224 frame, and CLIP the prompted frame
    frame = torch.zeros(1, 3, side, side)
    return count_gflop(coordinator.eval(), frame) + count_gflop(clip.eval(), frame)


def record(configs: list[dict[str, Any]]) -> dict[str, float]:
    """RECORDED's entries for every run of ``configs`` (to paste into this module)."""
    from pefts.study.experiments import Study

    table = {}
    for config in configs:
        study = Study(config, local_weights=False)
        for name in study.distinct_runs():
            run = study.runs[name]
            cost = count_forward(config, run.method, run.hparams)
            if cost.source == "FLOPs counted by code":
                table[forward_key(config, run.method, run.hparams)] = round(cost.gflop, 3)
    return table


def recorded_source(table: dict[str, float]) -> str:
    """``table`` as the RECORDED assignment of this module, keys cut to fit a line."""
    lines = ["RECORDED: dict[str, float] = {"]
    for key, gflop in sorted(table.items()):
        parts = [key[i:i + 88] for i in range(0, len(key), 88)]
        lines += [f"    {part!r}" for part in parts[:-1]] + [f"    {parts[-1]!r}:", f"        {gflop},"]
    return "\n".join([*lines, "}"])
