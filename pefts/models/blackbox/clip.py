"""Zero-shot CLIP as the black box (BlackVIP's and the paper's setting): the class names
become text prompts, their embeddings are computed once, and the model maps [0,1]
images at native resolution to logits (resize and CLIP's normalisation inside).

Weights come from a local file (safetensors or a torch state dict, read with
``weights_only``); ``clip_state`` is the one place that downloads them, by open_clip's
pretrained tag, called only by ``pefts fetch-weights`` (pefts.study.weights, kind open_clip).

The architecture follows the weights, not only the architecture's name: OpenAI trained
its CLIPs with QuickGELU (x * sigmoid(1.702 x)), open_clip's "ViT-B-16" config uses
GELU, and loading OpenAI's weights into it only warns and costs about 4 points of
zero-shot ImageNet accuracy (open_clip issue #1109). open_clip's pretrained config of a
tag says whether it needs QuickGELU; the fetch record beside a fetched file says it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pefts.errors import PeftsError
from pefts.runtime.verified import verified

ARCH = "ViT-B-16"
TEMPLATE = "a photo of a {}."
# CLIP's own normalisation (OpenAI's), used when the model's config names none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ZeroShotCLIP(nn.Module):
    """Images in [0,1] -> logit_scale.exp() * normalise(image_emb) @ W.T, where W holds
    the L2-normalised text embeddings of ``template`` filled with each class name."""

    def __init__(self, clip: nn.Module, tokenizer, class_names: list[str],
                 template: str = TEMPLATE):
        super().__init__()
        self.total_parameters = sum(p.numel() for p in clip.parameters())
        clip.eval()
        with torch.no_grad():
            tokens = tokenizer([template.format(name) for name in class_names])
            text = clip.encode_text(tokens).float()
            self.register_buffer("weights", F.normalize(text, dim=-1))
            self.scale = float(clip.logit_scale.exp())
        self.visual = clip.visual  # the text tower is not needed once W is known
        size = self.visual.image_size
        self.input_size = tuple(size) if isinstance(size, tuple | list) else (size, size)
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", CLIP_MEAN)).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", CLIP_STD)).view(1, -1, 1, 1),
                             persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.input_size:
            # CLIP's own preprocessing resizes bicubically; antialias only matters downwards
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False,
                              antialias=x.shape[-1] > self.input_size[-1])
        image = self.visual((x - self.mean) / self.std).float()
        return self.scale * F.normalize(image, dim=-1) @ self.weights.T


def _architecture(arch: str):
    import open_clip

    if arch not in open_clip.list_models():
        raise PeftsError(f"unknown open_clip architecture {arch!r} (blackbox hparam clip_arch)")
    return open_clip


def bare_model(arch: str = ARCH, quick_gelu: bool = False) -> nn.Module:
    """open_clip's ``arch`` with random weights (QuickGELU in every block when
    ``quick_gelu``, as OpenAI's weights need), without its "no pretrained weights"
    warning (the weights follow from a file, or the caller wants them random)."""
    open_clip = _architecture(arch)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(arch, pretrained=None, load_weights=False,
                                      force_quick_gelu=quick_gelu)
    finally:
        logging.disable(previous)


def tag_needs_quick_gelu(arch: str, tag: str) -> bool:
    """Whether open_clip's pretrained ``tag`` of ``arch`` was trained with QuickGELU."""
    open_clip = _architecture(arch)
    return bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))


def weights_need_quick_gelu(file: str | Path, arch: str, tag: str | None) -> bool:
    """QuickGELU or not for the weights in ``file``: what its fetch record says, else what
    open_clip's config of the pretrained ``tag`` says; the two must agree. Without either,
    ``arch`` decides alone (e.g. "ViT-B-16-quickgelu" for a local copy of OpenAI's)."""
    by_tag = tag_needs_quick_gelu(arch, tag) if tag else None
    record = Path(f"{file}.json")
    recorded = None
    if record.is_file():
        try:
            recorded = json.loads(record.read_text()).get("quick_gelu")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise PeftsError(f"the fetch record {record} is not a JSON object") from None
    if recorded is not None and by_tag is not None and bool(recorded) != by_tag:
        raise PeftsError(f"CLIP weights {file}: their fetch record says quick_gelu={recorded}, "
                         f"open_clip's pretrained tag {tag!r} says {by_tag}")
    return bool(recorded) if recorded is not None else bool(by_tag)


def load_clip(file: str | Path, class_names: list[str], arch: str = ARCH,
              template: str = TEMPLATE, pretrained: str | None = None) -> ZeroShotCLIP:
    """Zero-shot CLIP ``arch`` with the weights of a local ``file``; nothing is downloaded.
    ``pretrained`` names the open_clip tag the weights are (e.g. ``openai``): with the
    file's fetch record it decides the activation (``weights_need_quick_gelu``)."""
    open_clip = _architecture(arch)
    verified(file, "CLIP weights file (blackbox hparam clip_file)")
    model = bare_model(arch, weights_need_quick_gelu(file, arch, pretrained))
    try:
        open_clip.load_checkpoint(model, str(file), strict=True, weights_only=True)
    except Exception as err:  # safetensors, pickle and key mismatches all raise differently
        raise PeftsError(f"CLIP weights {file} do not fit {arch}: "
                         f"{str(err).splitlines()[0][:200]}") from None
    return ZeroShotCLIP(model, open_clip.get_tokenizer(arch), class_names, template)


def clip_state(tag: str, arch: str = ARCH) -> dict[str, torch.Tensor]:
    """Download open_clip's ``arch`` weights by pretrained ``tag`` (e.g. ``openai``,
    ``laion2b_s34b_b88k``), in the architecture the tag was trained with, and return
    them. Only ``pefts fetch-weights`` calls this, on a host that may reach the network;
    it writes them where ``clip_file`` reads them."""
    open_clip = _architecture(arch)
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in tags:
        raise PeftsError(f"open_clip has no pretrained tag {tag!r} for {arch}; known: {', '.join(tags)}")
    quick_gelu = tag_needs_quick_gelu(arch, tag)
    model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu)
    return model.state_dict()
