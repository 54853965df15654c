"""ImageNet from ImageFolder roots (root/train, root/val), center-cropped to 224."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import datasets, transforms

from pefts.errors import PeftsError

FOLDERS = {"train": "train", "test": "val"}
TRANSFORMS = {
    "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor()]),
    "test": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                transforms.ToTensor()]),
}


def _open(root: str | None, split: str) -> datasets.ImageFolder:
    if not root:
        raise PeftsError("ImageNet needs a data folder: set dataset.root in the config")
    folder = Path(root) / FOLDERS[split]
    if not folder.is_dir():
        raise PeftsError(
            f"ImageNet folder {folder} does not exist; set dataset.root in the config to a "
            "folder with train/ and val/ in ImageFolder layout"
        )
    return datasets.ImageFolder(str(folder), transform=TRANSFORMS[split])


def prepare(out_dir: Path, root: str | None = None, **_: Any) -> dict[str, Any]:
    test = _open(root, "test")
    train_dir = Path(root) / FOLDERS["train"]
    return {
        "num_classes": len(test.classes),
        "classes": list(test.classes),
        "image_shape": [3, 224, 224],
        "root": str(Path(root).resolve()),
        "num_train": len(_open(root, "train")) if train_dir.is_dir() else 0,
        "num_test": len(test),
    }


def load(manifest: dict[str, Any], split: str) -> datasets.ImageFolder:
    return _open(manifest["root"], split)
