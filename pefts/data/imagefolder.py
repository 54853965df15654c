"""Your own images: a folder with train/ and test/ (or val/), one sub-folder per class,
any image size; resize and crop are options stored in the manifest."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from pefts.errors import PeftsError

TEST_FOLDERS = ("test", "val")


# Pillow's modes of 16-bit greyscale PNGs (older Pillow: "I"): values up to 65535
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(path: str) -> Image.Image:
    """An RGB image; 16-bit greyscale is scaled by its bit depth (65535 -> 255), where a
    plain convert("RGB") would clip every value above 255 to white."""
    # Pillow warns about an image above MAX_IMAGE_PIXELS and raises above twice that: both
    # are refused, naming the file (a 20000 x 20000 PNG of a few KB decodes to 1.2 GB). Set
    # per call, not once at import: a caller's warnings context (pytest's, or a user's
    # catch_warnings around the API) would reset a module-level filter, and the bomb would decode
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:  # Image.open is where Pillow warns
            image.load()
            if image.mode in SIXTEEN_BIT:
                levels = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.round(levels / 65535 * 255).clip(0, 255).astype(np.uint8),
                                        "L")
            return image.convert("RGB")


def check_image(path: str) -> str | None:
    """What is wrong with an image file (decoded in full), or None."""
    try:
        if Path(path).stat().st_size == 0:
            return "is empty"
        load_image(path)
    except UnidentifiedImageError:
        return "is not an image Pillow can read"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return (f"is too large to decode safely ({str(err).split(',')[0]}; Pillow's "
                "MAX_IMAGE_PIXELS guards against decompression bombs)")
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        return f"does not decode ({err})"
    return None


def check_images(data: ClassFolder, label: str) -> None:
    """Decode every image once at prepare, so a bad file is named now and not hours into
    training. Decoding releases the GIL: threads make a large folder tolerable."""
    paths = [path for path, _ in data.samples]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for path, problem in zip(paths, pool.map(check_image, paths), strict=True):
            if problem:
                raise PeftsError(f"{label} image {path} {problem}; remove or replace it")


class ClassFolder(datasets.ImageFolder):
    """ImageFolder with the class list fixed by the manifest, so that a test folder that
    lacks a class still numbers the others as the train folder does."""

    def __init__(self, root: str, classes: list[str], **kwargs: Any):
        self._fixed = list(classes)
        super().__init__(root, allow_empty=True, loader=load_image, **kwargs)

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
    # checked against pefts.data.IMAGE_SPECS by pefts.data.prepare
    options = {k: v for k, v in (images or {}).items() if v is not None}
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
    train = open_split(manifest, "train", label) if train_dir.is_dir() else None
    for split in (test, train):
        if split is not None:
            check_images(split, label)
    check_same_size(test, options)
    if train is not None and not options.get("augment"):
        check_same_size(train, options)
    return {**manifest, "image_shape": list(test[0][0].shape),
            "num_train": len(train) if train is not None else 0, "num_test": len(test)}


def load(manifest: dict[str, Any], split: str) -> ClassFolder:
    return open_split(manifest, split)
