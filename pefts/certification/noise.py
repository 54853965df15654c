"""Seeded Gaussian noise streams.

The noise of image ``idx`` depends only on (seed, idx, stream), so results do not
depend on sharding, ordering or resuming.
"""

from __future__ import annotations

import hashlib

import torch

SELECTION = 0
ESTIMATION = 1


def stream_seed(seed: int, idx: int, stream: int) -> int:
    """A 63-bit seed for one (seed, image, stream) triple; hashing keeps nearby triples apart."""
    digest = hashlib.sha256(f"pefts:{seed}:{idx}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, idx: int, stream: int, device: torch.device | str) -> torch.Generator:
    """A torch generator living on ``device`` so noise is drawn where the model runs."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(stream_seed(seed, idx, stream))
    return gen
