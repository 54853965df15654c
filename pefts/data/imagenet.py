"""ImageNet: an image folder (root/train, root/val of wnid folders) with the usual
resize to 256, centre crop to 224, and random resized crops for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pefts.data import imagefolder

DEFAULTS = {"resize": 256, "crop": 224, "augment": True}


def prepare(out_dir: Path, root: str | None = None, images: dict[str, Any] | None = None,
            **_: Any) -> dict[str, Any]:
    chosen = {k: v for k, v in (images or {}).items() if v is not None}
    return imagefolder.prepare(out_dir, root, {**DEFAULTS, **chosen}, label="ImageNet")


def load(manifest: dict[str, Any], split: str) -> imagefolder.ClassFolder:
    return imagefolder.open_split(manifest, split, label="ImageNet")
