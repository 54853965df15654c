"""CIFAR-10 through torchvision, from a local root (download only when allowed). With
``augment`` the training split gets the field's augmentation (Cohen et al.'s training
included): random 32x32 crops of the 4-pixel zero-padded image and horizontal flips;
the test split is never augmented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import datasets, transforms

from pefts.errors import PeftsError

OPTIONS = ("augment",)


def transform(augment: bool, split: str) -> transforms.Compose:
    steps: list[Any] = []
    if augment and split == "train":
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*steps, transforms.ToTensor()])


def _open(root: str | None, train: bool, download: bool = False,
          augment: bool = False) -> datasets.CIFAR10:
    if not root:
        raise PeftsError("CIFAR-10 needs a data folder: set dataset.root in the config")
    try:
        return datasets.CIFAR10(root, train=train, download=download,
                                transform=transform(augment, "train" if train else "test"))
    except RuntimeError as err:
        raise PeftsError(
            f"CIFAR-10 not found under {root} ({err}); set dataset.root in the config to the "
            "folder holding cifar-10-batches-py, or dataset.download: true to fetch it"
        ) from None


def prepare(out_dir: Path, root: str | None = None, download: bool = False,
            images: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    options = {k: v for k, v in (images or {}).items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PeftsError(f"CIFAR-10 takes only the image option augment, not {', '.join(unknown)} "
                         "(its images are 32x32; the model resizes them)")
    train, test = _open(root, True, download), _open(root, False, download)
    return {
        "num_classes": 10,
        "classes": list(train.classes),
        "class_names": list(train.classes),
        "image_shape": [3, 32, 32],
        "root": str(Path(root).resolve()),
        "images": {"augment": bool(options.get("augment", False))},
        "num_train": len(train),
        "num_test": len(test),
    }


def load(manifest: dict[str, Any], split: str) -> datasets.CIFAR10:
    augment = bool(manifest.get("images", {}).get("augment", False))
    return _open(manifest["root"], split == "train", augment=augment)
