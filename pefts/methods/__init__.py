"""Registry of PEFTSmoothing methods: every module in this package that defines a
``Method`` subclass with a ``name`` is a method; adding a method is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefts.artifacts import load_artifact
from pefts.errors import PeftsError
from pefts.methods.base import Method
from pefts.models import load_base

METHODS: dict[str, type[Method]] = {}


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and getattr(obj, "name", None):
                METHODS[obj.name] = obj


_discover()


def get_method(name: str, **hparams: Any) -> Method:
    if name not in METHODS:
        raise PeftsError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](**hparams)


def load_model(weights: str | Path, base_weights: str | Path,
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned model: base classifier + method + its saved trainable weights."""
    tensors, meta = load_artifact(weights)
    if meta.get("kind") != "finetuned":
        raise PeftsError(f"{weights} is not a fine-tuned model (kind={meta.get('kind')!r})")
    method = get_method(meta["method"], **meta.get("hparams", {}))
    model = method.build(load_base(base_weights))
    method.load_trainable(model, tensors)
    return model.to(device).eval(), meta
