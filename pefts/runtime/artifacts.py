"""Weights as safetensors beside a small JSON of metadata; nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pefts.errors import PeftsError
from pefts.runtime.files import atomic_write_text, durable_path, file_digest
from pefts.runtime.verified import sha256

__all__ = ["atomic_write_text", "file_digest", "load_artifact", "load_meta", "save_artifact"]


def meta_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_artifact(weights: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save ``tensors`` to ``weights`` (.safetensors) and ``meta`` to the .json beside it;
    the metadata records the weights' sha256, so weights beside another run's metadata
    (replaced by hand, or a save killed between the two files) are refused when read."""
    with durable_path(weights) as tmp:
        # safetensors refuses shared or non-contiguous storage; a PEFT state is small, copy it
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
        # the metadata before the weights are renamed into place: weights without their
        # metadata would be refused, metadata alone is inert
        record = {**meta, "weights_sha256": file_digest(tmp)}
        atomic_write_text(meta_path(weights), json.dumps(record, indent=2, sort_keys=True) + "\n")


def load_meta(weights: str | Path) -> dict[str, Any]:
    path = meta_path(weights)
    if not path.is_file():
        raise PeftsError(f"metadata file {path} is missing (it belongs beside {weights})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftsError(f"metadata file {path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("base", "finetuned"):
        raise PeftsError(f"metadata file {path} has no kind 'base' or 'finetuned'")
    # classes: a downstream task is told from the base's task by them (fresh head)
    checks = {"base": {"spec": dict, "classes": list},
              "finetuned": {"method": str, "hparams": dict, "classes": list}}[meta["kind"]]
    for key, kind in checks.items():
        if not isinstance(meta.get(key), kind):
            raise PeftsError(f"metadata file {path}: {key} must be a JSON {kind.__name__}, "
                             f"got {meta.get(key)!r}")
    return meta


def load_artifact(weights: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights and metadata, with a one-line error for a missing or corrupt file."""
    weights = Path(weights)
    if not weights.is_file():
        raise PeftsError(f"weights file {weights} does not exist")
    meta = load_meta(weights)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftsError(f"weights file {weights} is corrupt or not safetensors: {err}") from None
    recorded = meta.get("weights_sha256")  # absent in metadata written by older pefts
    if recorded is not None and (actual := sha256(weights)) != recorded:
        raise PeftsError(f"weights file {weights} is not the one its metadata {meta_path(weights)} "
                         f"describes: recorded sha256 {recorded}, actual {actual} (replaced "
                         "after it was written?); write both again")
    return tensors, meta
