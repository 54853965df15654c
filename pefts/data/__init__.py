"""Datasets as [0,1] float images at native resolution, described by a prepared manifest.

``prepare`` writes ``manifest.json`` (and, for bundled data, the images themselves);
every later step reads the data through ``load_split(manifest, split)``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import Dataset

from pefts.data.grid import quantised
from pefts.errors import PeftsError
from pefts.hparams import Either, Int, IntList, Param, check_known, check_values
from pefts.runtime.artifacts import atomic_write_text

# imported on use: torchvision (cifar10, imagefolder) costs seconds every digits job would pay
DATASETS = ("cifar10", "digits", "imagefolder", "imagenet")

# `pefts prepare --images` (the config's dataset.resize, crop and augment: the schema says
# the same, tests/test_config_errors.py checks that it does)
IMAGE_SPECS: dict[str, Param] = {
    "resize": Either(Int(1), IntList(1, length=2), optional=True),
    "crop": Param(int, low=1, optional=True),
    "augment": Param(bool, optional=True),
}


def dataset_module(name: str) -> ModuleType:
    check_known("dataset", name, DATASETS)
    return importlib.import_module(f"pefts.data.{name}")


def prepare(name: str, out_dir: str | Path, classes: list[int] | None = None,
            **options: Any) -> dict[str, Any]:
    """Prepare ``name`` under ``out_dir`` and write its manifest; ``classes`` keeps only
    those labels (of the full dataset), numbered 0..k-1 in the given order."""
    check_values("image option {name}", IMAGE_SPECS, options.get("images") or {}, known_only=True)
    out_dir = Path(out_dir)
    module = dataset_module(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    # how many levels a pixel takes after any resize (8-bit images: 255, values k / 255);
    # sound certification needs the 8-bit grid and quantises images that are not on it
    manifest = {"dataset": name, "pixel_levels": getattr(module, "PIXEL_LEVELS", 255),
                **module.prepare(out_dir, **options)}
    if classes:
        unknown = sorted(set(classes) - set(range(manifest["num_classes"])))
        if unknown or len(set(classes)) != len(classes):
            raise PeftsError(f"classes must be distinct labels of {name} "
                             f"(0..{manifest['num_classes'] - 1}), got {classes}")
        manifest.update(class_subset=list(classes), num_classes=len(classes),
                        classes=[manifest["classes"][c] for c in classes],
                        class_names=[manifest["class_names"][c] for c in classes])
        located = {**manifest, "_dir": str(out_dir)}  # as read_manifest would return it
        for split in ("train", "test"):
            manifest[f"num_{split}"] = len(load_split(located, split))
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def class_names(manifest: dict[str, Any]) -> list[str]:
    """Readable class names (what a zero-shot model reads as text); manifests written
    before they were recorded fall back to the class labels themselves."""
    return list(manifest.get("class_names") or manifest["classes"])


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The one reader of a manifest: opened once per job, checked, and passed on with its
    folder (``_dir``) and the sha256 of the bytes read (``_sha256``, what provenance and
    checkpoints record), so no later step opens it again."""
    path = Path(path)
    if not path.is_file():
        raise PeftsError(f"data manifest {path} does not exist (run `pefts prepare` first)")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftsError(f"data manifest {path} is not valid JSON: {err}") from None
    check_manifest(path, manifest)
    manifest["_dir"] = str(path.parent)
    manifest["_sha256"] = hashlib.sha256(raw).hexdigest()
    return manifest


def check_manifest(path: Path, manifest: Any) -> None:
    """The keys every later step relies on, with sane values, before any is used."""
    if not isinstance(manifest, dict):
        raise PeftsError(f"data manifest {path} is not a JSON object")
    counts = {"num_classes": 1, "num_train": 0, "num_test": 0}
    for key, low in counts.items():
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PeftsError(f"data manifest {path}: {key} must be an integer >= {low}, got {value!r}")
    if manifest.get("dataset") not in DATASETS:
        raise PeftsError(f"data manifest {path}: unknown dataset {manifest.get('dataset')!r}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or len(classes) != manifest["num_classes"]:
        raise PeftsError(f"data manifest {path}: classes must list num_classes "
                         f"({manifest['num_classes']}) names")


def load_split(manifest: str | Path | dict[str, Any], split: str,
               on_grid: bool = False) -> Dataset:
    """The ``train`` or ``test`` split; items are (image in [0,1], label). ``on_grid``:
    images quantised to the 8-bit grid after the dataset's resize (sound certification;
    a no-op for 8-bit images, see the manifest's ``pixel_levels``)."""
    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    if split not in ("train", "test"):
        raise PeftsError(f"unknown split {split!r}; use train or test")
    data = dataset_module(manifest["dataset"]).load(manifest, split)
    if manifest.get("class_subset"):
        data = ClassSubset(data, manifest["class_subset"])
    return OnGrid(data) if on_grid else data


def labels_of(data: Dataset) -> list[int]:
    """Every label, without decoding an image (torchvision keeps them in ``targets``)."""
    if hasattr(data, "targets"):
        return [int(t) for t in data.targets]
    return [int(t) for t in data.tensors[1]]  # TensorDataset


class OnGrid(Dataset):
    """The images of ``data`` on the 8-bit grid: round(255 x) / 255."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        x, y = self.data[idx]
        return quantised(x), y


class ClassSubset(Dataset):
    """The images of some classes only, relabelled 0..k-1: a downstream task carved out
    of a dataset (two birds, one stone)."""

    def __init__(self, data: Dataset, classes: list[int]):
        relabel = {c: i for i, c in enumerate(classes)}
        self.data = data
        self.relabel = relabel
        self.indices = [i for i, y in enumerate(labels_of(data)) if y in relabel]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        x, y = self.data[self.indices[idx]]
        return x, self.relabel[int(y)]
