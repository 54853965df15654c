"""Datasets as [0,1] float images at native resolution, described by a prepared manifest.

``prepare`` writes ``manifest.json`` (and, for bundled data, the images themselves);
every later step reads the data through ``load_split(manifest, split)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from pefts.artifacts import atomic_write_text
from pefts.data import cifar10, digits, imagenet
from pefts.errors import PeftsError

DATASETS = {"digits": digits, "cifar10": cifar10, "imagenet": imagenet}


def dataset_module(name: str):
    if name not in DATASETS:
        raise PeftsError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def prepare(name: str, out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Prepare ``name`` under ``out_dir`` and write its manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"dataset": name, **dataset_module(name).prepare(out_dir, **options)}
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PeftsError(f"data manifest {path} does not exist (run `pefts prepare` first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PeftsError(f"data manifest {path} is not valid JSON: {err}") from None
    manifest["_dir"] = str(path.parent)
    return manifest


def load_split(manifest: str | Path | dict[str, Any], split: str) -> Dataset:
    """The ``train`` or ``test`` split; items are (image in [0,1], label)."""
    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    if split not in ("train", "test"):
        raise PeftsError(f"unknown split {split!r}; use train or test")
    return dataset_module(manifest["dataset"]).load(manifest, split)
