"""Your own images: a folder with train/ and test/ (or val/), one sub-folder per class,
any image size; resize and crop are options stored in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import datasets, transforms

from pefts.errors import PeftsError

TEST_FOLDERS = ("test", "val")
OPTIONS = ("resize", "crop", "augment")


class ClassFolder(datasets.ImageFolder):
    """ImageFolder with the class list fixed by the manifest, so that a test folder that
    lacks a class still numbers the others as the train folder does."""

    def __init__(self, root: str, classes: list[str], **kwargs: Any):
        self._fixed = list(classes)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._fixed, {c: i for i, c in enumerate(self._fixed)}


def split_folder(root: str | None, split: str, label: str = "image folder") -> Path:
    if not root:
        raise PeftsError(f"{label} dataset needs a data folder: set dataset.root in the config")
    names = ("train",) if split == "train" else TEST_FOLDERS
    for name in names:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise PeftsError(f"{label} folder {Path(root) / names[0]} does not exist; set dataset.root in "
                     f"the config to a folder with train/ and {' or '.join(TEST_FOLDERS)}/ of class folders")


def transform(options: dict[str, Any], split: str) -> transforms.Compose:
    """Resize, then centre crop; with ``augment`` a random resized crop and flip when training."""
    resize, crop = options.get("resize"), options.get("crop")
    side = crop or (resize if isinstance(resize, int) else None)
    steps: list[Any] = []
    if split == "train" and options.get("augment"):
        if side is None:
            raise PeftsError("dataset.augment needs dataset.crop (or an integer dataset.resize): "
                             "the side of the random crops")
        steps += [transforms.RandomResizedCrop(side), transforms.RandomHorizontalFlip()]
    else:
        if resize:
            steps.append(transforms.Resize(resize if isinstance(resize, int) else tuple(resize)))
        if crop:
            steps.append(transforms.CenterCrop(crop))
    return transforms.Compose([*steps, transforms.ToTensor()])


def open_split(manifest: dict[str, Any], split: str, label: str = "image folder") -> ClassFolder:
    folder = split_folder(manifest["root"], split, label)
    # the folder's own classes: a class subset (two birds) renames "classes" only
    return ClassFolder(str(folder), manifest["folder_classes"],
                       transform=transform(manifest["images"], split))


def check_same_size(data: ClassFolder, options: dict[str, Any]) -> None:
    """Without a crop or a [height, width] resize, images batch only if they share a size."""
    resize = options.get("resize")
    if options.get("crop") or isinstance(resize, list | tuple):
        return
    sizes = set()
    for path, _ in data.samples:
        with Image.open(path) as image:  # reads the header only
            sizes.add(image.size)
        if len(sizes) > 1:
            raise PeftsError(f"images in {data.root} differ in size ({sorted(sizes)[:2]}); set "
                             "dataset.crop or dataset.resize: [height, width] in the config")


def prepare(out_dir: Path, root: str | None = None, images: dict[str, Any] | None = None,
            label: str = "image folder", **_: Any) -> dict[str, Any]:
    options = {k: v for k, v in (images or {}).items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PeftsError(f"unknown image option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    test_dir = split_folder(root, "test", label)
    train_dir = Path(root) / "train"
    class_dir = train_dir if train_dir.is_dir() else test_dir
    classes = sorted(p.name for p in class_dir.iterdir() if p.is_dir())
    if not classes:
        raise PeftsError(f"{label} folder {class_dir} has no class folders")
    manifest = {"root": str(Path(root).resolve()), "classes": classes, "folder_classes": classes,
                "class_names": [c.replace("_", " ") for c in classes],
                "num_classes": len(classes), "images": options}
    test = open_split(manifest, "test", label)
    if not len(test):
        raise PeftsError(f"{label} folder {test_dir} has no images of the classes {classes[:3]}...")
    check_same_size(test, options)
    train = open_split(manifest, "train", label) if train_dir.is_dir() else None
    if train is not None and not options.get("augment"):
        check_same_size(train, options)
    return {**manifest, "image_shape": list(test[0][0].shape),
            "num_train": len(train) if train is not None else 0, "num_test": len(test)}


def load(manifest: dict[str, Any], split: str) -> ClassFolder:
    return open_split(manifest, split)
