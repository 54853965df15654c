"""scikit-learn's bundled 8x8 digits (no download), as 3-channel images in [0,1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from pefts.errors import PeftsError
from pefts.runtime.files import durable_path

TENSORS = "digits.safetensors"
PIXEL_LEVELS = 16  # values k / 16: off the 8-bit grid, quantised for sound certification


def prepare(out_dir: Path, seed: int = 0, test_fraction: float = 0.25,
            **_: Any) -> dict[str, Any]:
    """Split once with a fixed seed and store the split indices with the images."""
    # scikit-learn costs 1.2 s to import: only `pefts prepare` needs it, not every job
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    class_list = sorted(int(c) for c in np.unique(labels))

    def split(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images[idx]).unsqueeze(1).repeat(1, 3, 1, 1)
        return x.contiguous(), torch.from_numpy(labels[idx])

    (train_x, train_y), (test_x, test_y) = split(train_idx), split(test_idx)
    with durable_path(out_dir / TENSORS) as tmp:
        save_file({
            "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "train_index": torch.from_numpy(train_idx), "test_index": torch.from_numpy(test_idx),
        }, str(tmp))
    return {
        "num_classes": len(class_list),
        "classes": [str(c) for c in class_list],
        "class_names": [str(c) for c in class_list],
        "image_shape": [3, 8, 8],
        "seed": seed,
        "test_fraction": test_fraction,
        "num_train": len(train_idx),
        "num_test": len(test_idx),
        "tensors": TENSORS,
    }


def load(manifest: dict[str, Any], split: str) -> TensorDataset:
    """The split's images and labels; a missing, cut-short or foreign tensor file is
    named in one line (before any training or certification starts)."""
    path = Path(manifest["_dir"]) / str(manifest.get("tensors"))
    if not path.is_file():
        raise PeftsError(f"data tensors {path} (named by the manifest in {path.parent}) do not "
                         "exist; run `pefts prepare` again")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftsError(f"data tensors {path} are corrupt or cut short ({err}); run "
                         "`pefts prepare` again") from None
    x, y = tensors.get(f"{split}_x"), tensors.get(f"{split}_y")
    if x is None or y is None or x.ndim != 4 or len(x) != len(y):
        raise PeftsError(f"data tensors {path} lack a well-formed {split} split "
                         f"({split}_x images and {split}_y labels of the same length)")
    if not manifest.get("class_subset") and len(x) != manifest.get(f"num_{split}"):
        raise PeftsError(f"data tensors {path} hold {len(x)} {split} images, the manifest "
                         f"says {manifest.get(f'num_{split}')}")
    return TensorDataset(x, y)
