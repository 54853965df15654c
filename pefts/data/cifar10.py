"""CIFAR-10 through torchvision, from a local root (download only when allowed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import datasets, transforms

from pefts.errors import PeftsError


def _open(root: str | None, train: bool, download: bool = False) -> datasets.CIFAR10:
    if not root:
        raise PeftsError("CIFAR-10 needs a data folder: set dataset.root in the config")
    try:
        return datasets.CIFAR10(root, train=train, download=download,
                                transform=transforms.ToTensor())
    except RuntimeError as err:
        raise PeftsError(
            f"CIFAR-10 not found under {root} ({err}); set dataset.root in the config to the "
            "folder holding cifar-10-batches-py, or dataset.download: true to fetch it"
        ) from None


def prepare(out_dir: Path, root: str | None = None, download: bool = False,
            **_: Any) -> dict[str, Any]:
    train, test = _open(root, True, download), _open(root, False, download)
    return {
        "num_classes": 10,
        "classes": list(train.classes),
        "class_names": list(train.classes),
        "image_shape": [3, 32, 32],
        "root": str(Path(root).resolve()),
        "num_train": len(train),
        "num_test": len(test),
    }


def load(manifest: dict[str, Any], split: str) -> datasets.CIFAR10:
    return _open(manifest["root"], split == "train")
