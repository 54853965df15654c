"""ImageNet: an image folder (root/train, root/val of wnid folders) with the usual
resize to 256, centre crop to 224, and random resized crops for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pefts.data import imagefolder

DEFAULTS = {"resize": 256, "crop": 224, "augment": True}


def readable_names(wnids: list[str]) -> list[str] | None:
    """The 1,000 ILSVRC classes' names as CLIP's authors wrote them, in sorted-wnid order
    (open_clip ships the list); None for any other set of folders."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    standard = len(wnids) == len(IMAGENET_CLASSNAMES) and all(
        w.startswith("n") and w[1:].isdigit() and len(w) == 9 for w in wnids)
    return list(IMAGENET_CLASSNAMES) if standard and wnids == sorted(wnids) else None


def prepare(out_dir: Path, root: str | None = None, images: dict[str, Any] | None = None,
            **_: Any) -> dict[str, Any]:
    chosen = {k: v for k, v in (images or {}).items() if v is not None}
    manifest = imagefolder.prepare(out_dir, root, {**DEFAULTS, **chosen}, label="ImageNet")
    names = readable_names(manifest["classes"])
    return {**manifest, "class_names": names} if names else manifest


def load(manifest: dict[str, Any], split: str) -> imagefolder.ClassFolder:
    return imagefolder.open_split(manifest, split, label="ImageNet")
