"""The arguments of ``pefts.certify``, checked before any sample is drawn.

A certificate is only worth the question it answers: images off the [0, 1] pixel scale
the noise is added to, a label no class has, or a model whose logits are NaN would each
give a confident wrong number. The scalar arguments are described by the same
``pefts.hparams.Param`` rules as the CLI's options and the config's ``certify`` section
(``tests/test_api_arguments.py`` compares the three). A value of the wrong type raises
``PeftsTypeError`` (a TypeError), one out of range ``PeftsError`` (a ValueError); both
name the argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pefts.certification.guards import model_name
from pefts.errors import PeftsError, PeftsTypeError
from pefts.hparams import BOOL, Choice, Float, Int, Param

PRECISIONS = ("fp32", "bf16", "fp16")  # pefts.certification.fastpath.PRECISIONS
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed's range (the CLI's --seed)

CERTIFY_ARGUMENTS: dict[str, Param] = {
    "sigma": Float(0.0, low_open=True),
    "n": Int(1),
    "n0": Int(1),
    "alpha": Float(0.0, 1.0, low_open=True, high_open=True),
    "adaptive": BOOL,
    "grid": Param(list, items=Float(0.0), min_items=1),
    "rtol": Param(float, 0.0, low_open=True, optional=True),
    "precision": Choice(*PRECISIONS),
    "batch": Int(1),
    "pool": Int(1),
    "sound": BOOL,
    "seed": Int(0, SEED_MAX),
    "num_classes": Param(int, 2, optional=True),
    "progress": Param(bool, optional=True),
}


def plain(value: Any) -> Any:
    """numpy and 0-d torch scalars as the Python numbers they hold (np.int64(5) is 5)."""
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def right_type(value: Any, spec: Param) -> bool:
    """Whether ``value`` has the type ``spec`` wants, whatever its range (1000.5 for an
    int, a text for a number and True for a count have not)."""
    if value is None:
        return spec.optional
    if spec.kind is list:
        return isinstance(value, list) and all(right_type(v, spec.items) for v in value)
    if spec.kind is bool:
        return isinstance(value, bool)
    if spec.kind is str:
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral if spec.kind is int else numbers.Real)


def check_argument(name: str, value: Any, spec: Param | None = None) -> Any:
    """``value`` as a plain Python value, or the error naming ``name`` and what it must be."""
    spec = spec or CERTIFY_ARGUMENTS[name]
    must = spec.describe().replace("(or null)", "(or None)")  # Python's word for it
    value = plain(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    if not right_type(value, spec):
        raise PeftsTypeError(f"{name} must be {must}, got {value!r} "
                             f"({type(value).__name__})")
    if not spec.check(value):
        raise PeftsError(f"{name} must be {must}, got {value!r}")
    return value


def check_radius_cap(sigma: float, n: int, alpha: float, adaptive: bool) -> None:
    """Refuse settings whose largest possible radius, sigma x Phi^-1(best bound), is not a
    finite number (a sigma near the float limit): a radius of inf would be no answer."""
    from scipy.stats import norm

    from pefts.certification.feasibility import best_lower_bound

    if sigma * 10 > torch.finfo(torch.float32).max:  # noise 10 sd out: an inf pixel
        raise PeftsError(f"sigma {sigma:g} overflows the float32 noisy images; sigma is in "
                         "[0,1] pixel units (0.12 to 1 is usual)")
    cap = sigma * float(norm.ppf(best_lower_bound(n, alpha, adaptive)))
    if not math.isfinite(cap):
        raise PeftsError(f"sigma {sigma:g} with n {n} at alpha {alpha:g}: the largest radius "
                         f"they could certify (sigma x Phi^-1 of the best bound) is {cap}, not "
                         "a finite number; sigma is in [0,1] pixel units (0.12 to 1 is usual)")


PIXEL_SCALE = "pefts certifies on the [0,1] pixel scale the noise is added to"


def check_images(images: Any) -> torch.Tensor:
    """A float tensor (N, C, H, W) of finite values in [0, 1], or the error saying what
    was found instead."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise PeftsTypeError(f"images must be a float tensor (N, C, H, W) in [0, 1], got "
                             f"{type(images).__name__}")
    if images.dim() != 4:
        raise PeftsError(f"images must be a float tensor (N, C, H, W) in [0, 1], got shape "
                         f"{tuple(images.shape)}")
    if images.dtype == torch.uint8:
        raise PeftsTypeError(f"images are torch.uint8 (range 0..255): {PIXEL_SCALE}; "
                             "pass images.float() / 255")
    if not images.is_floating_point():
        raise PeftsTypeError(f"images must be a float tensor (N, C, H, W) in [0, 1], got "
                             f"{images.dtype}")
    if images.numel() == 0:
        return images
    # min and max propagate NaN and show inf: no (N, C, H, W) mask unless something is wrong
    low, high = float(images.min()), float(images.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        finite = torch.isfinite(images)
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise PeftsError(f"images hold {int((~finite).sum())} non-finite values (NaN or inf), "
                         f"in image(s) {', '.join(map(str, bad[:5]))}{'...' if len(bad) > 5 else ''}"
                         ": randomized smoothing needs finite pixels")
    if low < 0.0 or high > 1.0:
        if low >= 0.0 and high > 1.5:
            fix = "divide by 255" if high <= 255.0 else "scale them to [0, 1]"
        elif low < -0.5 or (low < -0.05 and high > 1.5):
            fix = "pass unnormalised images and put the normalisation inside the model"
        else:
            fix = "clamp them (images.clamp(0, 1)): resizing can overshoot"
        raise PeftsError(f"images range {low:g}..{high:g}: {PIXEL_SCALE}; {fix}")
    return images


def check_labels(labels: Any, count: int) -> torch.Tensor:
    """One integer class index per image, as a long tensor (range checked once the number
    of classes is known: ``check_label_range``)."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        if not isinstance(labels, Sequence) or isinstance(labels, str | bytes):
            raise PeftsTypeError(f"labels must be a sequence or tensor of class indices, got "
                                 f"{type(labels).__name__}")
        values = [plain(v) for v in labels]
        wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if wrong:
            raise PeftsTypeError(f"labels must be integer class indices, got {wrong[0]!r} "
                                 f"({type(wrong[0]).__name__})")
        try:
            labels = torch.tensor(values, dtype=torch.long)
        except (OverflowError, RuntimeError, ValueError):  # past int64: no class index anyway
            raise PeftsError(f"labels must be class indices, got {max(values, key=abs)}") from None
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        flat = labels.flatten()
        odd = flat[flat != flat.round()] if labels.is_floating_point() else flat
        example = (odd if len(odd) else flat)[0].item() if len(flat) else None
        raise PeftsTypeError(f"labels must be integer class indices, got {labels.dtype} "
                             f"values (e.g. {example!r})")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or len(labels) != count:
        raise PeftsError(f"labels must hold one class index per image ({count} images), got "
                         f"shape {tuple(labels.shape)}")
    return labels.long().cpu()


def check_label_range(labels: torch.Tensor, num_classes: int) -> list[int]:
    outside = ((labels < 0) | (labels >= num_classes)).nonzero().flatten().tolist()
    if outside:
        i = outside[0]
        raise PeftsError(f"labels must be class indices in [0, {num_classes}) for a "
                         f"{num_classes}-class model, got {int(labels[i])} (image {i})")
    return labels.tolist()


def check_logits(out: Any, count: int, num_classes: int | None, model: nn.Module) -> int:
    """The number of classes the model's output (on ``count`` clean images) has; refused
    unless it is finite logits of shape (count, classes) matching ``num_classes``."""
    name = f"the model ({model_name(model)})"
    if not isinstance(out, torch.Tensor):
        raise PeftsTypeError(f"{name} must return a tensor of logits (N, classes), got "
                             f"{type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != count:
        raise PeftsError(f"{name} returned shape {tuple(out.shape)} for {count} image(s): "
                         "it must return logits of shape (N, classes)")
    if not bool(torch.isfinite(out).all()):
        raise PeftsError(f"{name} returned non-finite logits (NaN or inf) on clean images: "
                         "they are no votes, so pefts cannot certify it")
    classes = int(out.shape[1])
    if classes < 2:
        raise PeftsError(f"{name} returns {classes} logit per image: smoothing votes by argmax, "
                         "so a binary classifier must return 2 logits")
    if num_classes is not None and num_classes != classes:
        raise PeftsError(f"num_classes={num_classes} but {name} returns {classes} logits per "
                         "image: leave num_classes out or make them agree")
    return classes


def certify_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """Where the certification runs: ``device``, or the model's device when None. A model
    none of whose weights lie on ``device`` is refused (every input goes there)."""
    from pefts.runtime.devices import resolve_device

    placed = {t.device for t in (*model.parameters(), *model.buffers())}
    if device is None:
        if len(placed) > 1:
            raise PeftsError(f"the model's weights lie on several devices "
                             f"({', '.join(sorted(map(str, placed)))}): pass device=, the one "
                             "its inputs go to")
        device = placed.pop() if placed else torch.device("cpu")
        placed = {device}
    if not isinstance(device, str | torch.device):
        raise PeftsTypeError(f"device must be a torch.device or a text such as 'cpu' or "
                             f"'cuda:0', got {device!r}")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise PeftsError(f"device must be 'cpu', 'cuda', 'cuda:N' (or None: the model's "
                         f"device), got {str(device)!r}")
    try:  # the pipeline's refusals: no CUDA, an index past the visible GPUs
        chosen = resolve_device(str(chosen))
    except PeftsError as err:
        raise PeftsError(f"device={str(device)!r}: {err}") from None
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", torch.cuda.current_device())
    if placed and chosen not in placed:
        where = ", ".join(sorted(map(str, placed)))
        raise PeftsError(f"the model is on {where} but device={str(device)!r}: move it "
                         f"(model.to({str(chosen)!r})) or pass device={where!r}")
    return chosen
