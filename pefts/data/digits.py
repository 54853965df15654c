"""scikit-learn's bundled 8x8 digits (no download), as 3-channel images in [0,1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

TENSORS = "digits.safetensors"


def prepare(out_dir: Path, seed: int = 0, test_fraction: float = 0.25,
            **_: Any) -> dict[str, Any]:
    """Split once with a fixed seed and store the split indices with the images."""
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
    save_file({
        "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
        "train_index": torch.from_numpy(train_idx), "test_index": torch.from_numpy(test_idx),
    }, str(out_dir / TENSORS))
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
    tensors = load_file(str(Path(manifest["_dir"]) / manifest["tensors"]))
    return TensorDataset(tensors[f"{split}_x"], tensors[f"{split}_y"])
