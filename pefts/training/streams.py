"""Random streams keyed by where a run stands, not by what ran before.

Training draws its randomness from generators seeded by a key: the augmentation of
sample i in epoch e by (seed, stream, e, i), the noise and dropout of step k by
(seed, stream, k). Nothing random is carried from one step to the next, so a run
resumed at any step, with any number of loader workers, on another GPU or on the CPU,
draws what an uninterrupted run draws, and a checkpoint holds no generator state.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch
from torch.utils.data import Dataset


def keyed_seed(*key: Any) -> int:
    """A 63-bit seed that depends only on ``key`` (any str/int parts)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_step(seed: int, stream: str, step: int) -> None:
    """Seed every global generator (CPU, each GPU, Python) for step ``step``: dropout and
    anything a method draws during the step follows from (seed, stream, step)."""
    value = keyed_seed(seed, stream, "step", step)
    torch.manual_seed(value)
    random.seed(value)


def noise_like(x: torch.Tensor) -> torch.Tensor:
    """Standard Gaussian noise of x's shape from the CPU generator (seeded per step by
    seed_step), moved to x's device: the same numbers whatever device trains."""
    return torch.randn(x.shape, dtype=x.dtype).to(x.device, non_blocking=True)


class KeyedSamples(Dataset):
    """``data`` read by (epoch, index): each sample's random transforms (crops, flips)
    come from torch's and Python's generators seeded by (seed, stream, epoch, index),
    in whichever process loads it; the caller's generators are left as they were."""

    def __init__(self, data: Dataset, seed: int, stream: str) -> None:
        self.data, self.seed, self.stream = data, seed, stream

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        value = keyed_seed(self.seed, self.stream, "sample", epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(value)
            random.seed(value)
            try:
                return self.data[index]
            finally:
                random.setstate(python_state)
