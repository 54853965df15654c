"""Registry of PEFTSmoothing methods: each module in this package (but base) defines one
``Method`` subclass named like the file; adding a method is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefts.errors import PeftsError
from pefts.hparams import check_known
from pefts.methods.base import Method
from pefts.models.classifier import PixelClassifier, load_base, replace_head
from pefts.runtime.artifacts import load_artifact, load_meta
from pefts.runtime.verified import check_recorded, sha256

METHODS: dict[str, type[Method]] = {}


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__:
                # the file name is the method name, so the pipeline can list methods cheaply
                assert obj.name == info.name, f"method {obj.name!r} must live in {obj.name}.py"
                METHODS[obj.name] = obj


_discover()


def get_method(name: str, **hparams: Any) -> Method:
    check_known("method", name, METHODS)
    return METHODS[name](**hparams)


def build_model(method: Method, base: PixelClassifier, classes: list[str],
                base_classes: list[str], class_names: list[str] | None = None) -> nn.Module:
    """``method`` on ``base``. Data of other classes than the base was trained on (a
    downstream task) always gets a fresh head first, even with as many classes: the
    source task's head would map the new classes onto the old ones. ``class_names``
    (readable, defaults to ``classes``) is what a zero-shot query model reads."""
    method.class_names = list(class_names or classes)
    if list(classes) != list(base_classes):
        if method.keeps_base_head():
            raise PeftsError(
                f"method {method.name!r} keeps the base classifier's {base.spec.num_classes}-class "
                f"head (classes {', '.join(base_classes[:5])}...), so it cannot serve a downstream "
                f"task with other classes ({', '.join(classes[:5])}...); use a method that trains "
                "the head (e.g. lora or prompt)")
        replace_head(base, len(classes))
    try:
        return method.build(base)
    except PeftsError:  # already one line naming the problem (and a ValueError)
        raise
    except (ValueError, TypeError, AttributeError, AssertionError, KeyError) as err:
        # e.g. LoRA on a CNN: peft finds no attention to target; one line, not a traceback
        raise PeftsError(f"method {method.name!r} cannot wrap the base {base.spec.arch}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def check_base(weights: str | Path, meta: dict[str, Any], base_weights: str | Path) -> None:
    """A fine-tuned model only means something on the base it was trained on."""
    recorded = meta.get("base_sha256")
    if recorded is None:
        raise PeftsError(f"{weights} records no fingerprint of its base (made by an older "
                         "pefts?); fine-tune it again")
    if not Path(base_weights).is_file():
        raise PeftsError(f"weights file {base_weights} does not exist")
    if sha256(base_weights) != recorded:
        raise PeftsError(f"{weights} was fine-tuned on another base than {base_weights} "
                         f"(base sha256 {recorded[:12]}...); give the base it was trained on")


def load_model(weights: str | Path, base_weights: str | Path,
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned model: base classifier + method + its saved trainable weights."""
    tensors, meta = load_artifact(weights)
    if meta.get("kind") != "finetuned":
        raise PeftsError(f"{weights} is not a fine-tuned model (kind={meta.get('kind')!r})")
    method = get_method(meta["method"], **meta.get("hparams", {}))
    check_base(weights, meta, base_weights)
    # the encoder, CLIP or UNet it was trained with, not a file changed since
    check_recorded(method.hparams, meta.get("external_sha256") or {}, weights)
    base = load_base(base_weights)
    model = build_model(method, base, meta["classes"], load_meta(base_weights)["classes"],
                        meta.get("class_names"))
    method.load_trainable(model, tensors)
    return model.to(device).eval(), meta
