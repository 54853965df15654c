"""Base classifiers: a timm network behind an input layer that resizes and normalises.

Datasets yield [0,1] images at native resolution and noise is added there, so every
certified radius is an L2 distance in raw pixel space.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pefts.errors import PeftsError
from pefts.runtime.verified import verified


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
    """Create the timm network; pretrained weights by timm name or from a local file
    (checked against the network first: timm would keep random weights with a warning
    for keys that do not match, and raise a traceback for shapes that do not)."""
    kwargs: dict[str, Any] = dict(spec.model_kwargs, num_classes=spec.num_classes)
    if pretrained_file:
        verified(pretrained_file, "pretrained weights file (base.pretrained_file)")
        check_fits(pretrained_file, timm_net(spec, False, kwargs))
        # custom_load=False makes timm read a torch/safetensors state dict rather than a
        # JAX npz; the head is dropped when its size differs from num_classes.
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file), custom_load=False)
        pretrained = True
    return timm_net(spec, pretrained, kwargs)


def timm_net(spec: BaseSpec, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(spec.arch, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise PeftsError(f"unknown timm architecture {spec.arch!r} (base.arch)") from None
        raise
    except (TypeError, ValueError, AssertionError) as err:
        # an option the architecture does not take, or values it cannot build with
        raise PeftsError(f"{spec.arch} rejects model kwargs {spec.model_kwargs} "
                         f"(base.model_kwargs / --model-kwargs): {err or type(err).__name__}") from None


# parameters timm adapts to the model when loading (position embeddings are resampled
# to another image size), so their shape may differ in the file
ADAPTED = ("pos_embed",)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file (safetensors, or a torch state dict read with weights_only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if str(path).endswith(".safetensors"):
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise PeftsError(f"pretrained weights file {path} is corrupt or not a state dict: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PeftsError(f"pretrained weights file {path} is not a state dict")
    return state


def check_fits(path: str | Path, net: nn.Module) -> None:
    """Refuse weights that do not fit the network (timm only warns and keeps the random
    initialisation), naming a few keys: every parameter but the classifier head must be
    in the file with its shape."""
    state = read_state_dict(path)
    head = getattr(net, "pretrained_cfg", {}).get("classifier") or "head"
    heads = (head,) if isinstance(head, str) else tuple(head)
    body = {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.startswith(tuple(f"{h}." for h in heads))}
    missing = [k for k in body if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {body[k]}" for k in body
             if k in state and tuple(state[k].shape) != body[k] and not k.startswith(ADAPTED)]
    if missing or wrong:
        found = len(body) - len(missing)
        raise PeftsError(
            f"pretrained weights file {path} does not fit the model: "
            + (f"{len(missing)} of its {len(body)} parameters missing (e.g. {', '.join(missing[:3])}; "
               f"{found} found)" if missing else "")
            + ("; " if missing and wrong else "")
            + (f"{len(wrong)} of another shape (file vs model: {'; '.join(wrong[:3])})" if wrong else ""))


def build_classifier(
    spec: BaseSpec, pretrained: bool = False, pretrained_file: str | None = None
) -> PixelClassifier:
    return PixelClassifier(create_net(spec, pretrained, pretrained_file), spec)


def check_input(model: PixelClassifier) -> None:
    """Refuse, before training, a network that cannot take what its input layer feeds it
    (a ViT built for 224 x 224 fed 8 x 8 images): timm would assert in the first batch."""
    spec = model.spec
    side = spec.input_size
    x = torch.zeros(1, len(spec.mean), side, side)
    training = model.net.training
    model.net.eval()
    try:
        with torch.no_grad():
            model.net(x)
    except (AssertionError, RuntimeError, ValueError) as err:
        built = getattr(getattr(model.net, "patch_embed", None), "img_size", None)
        takes = f"is built for {built[0]}x{built[1]} inputs" if built else "cannot take them"
        raise PeftsError(f"{spec.arch} {takes}, but its input layer feeds it the data at "
                         f"{side}x{side} (base.input_size / --input-size {side}; for a smaller "
                         f"input set img_size in base.model_kwargs): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    finally:
        model.net.train(training)


def replace_head(model: PixelClassifier, num_classes: int) -> None:
    """A fresh ``num_classes``-way head, for a downstream task with other classes."""
    model.net.reset_classifier(num_classes)
    model.spec.num_classes = num_classes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_base(weights: str | Path, device: torch.device | str = "cpu") -> PixelClassifier:
    """Rebuild a base classifier saved by ``pefts train-base``."""
    from pefts.runtime.artifacts import load_artifact

    tensors, meta = load_artifact(weights)
    if meta.get("kind") != "base":
        raise PeftsError(f"{weights} is not a base classifier (kind={meta.get('kind')!r})")
    try:
        spec = BaseSpec.from_dict(meta["spec"])
    except (TypeError, KeyError) as err:
        raise PeftsError(f"metadata of {weights} has a malformed spec: {err}") from None
    model = build_classifier(spec)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # tensors of other shapes: weights of another architecture
        wrong = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise PeftsError(f"{weights} does not match the architecture its metadata describes "
                         f"({spec.arch}, {spec.model_kwargs}): {len(wrong)} tensor(s) of another "
                         f"shape, e.g. {wrong[0] if wrong else str(err).splitlines()[0]}") from None
    if missing or unexpected:
        raise PeftsError(
            f"{weights} does not match its architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.to(device).eval()
