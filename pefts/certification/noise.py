"""Seeded Gaussian noise streams.

The noise of image ``idx`` depends only on (seed, idx, stream), so results do not
depend on sharding, ordering or resuming.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch

from pefts.certification.sequences import union_bound_looks

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


DRAW = 1024  # noise is drawn in pieces of at most this many samples (part of the stream)


def piece_ends(total: int) -> np.ndarray:
    """Where the noise pieces of a stream of ``total`` samples end: at the union-bound
    checkpoints up to ``total`` (they depend on ``total`` only, not on alpha), cut at DRAW.

    Every sampler draws a stream in exactly these pieces, so a fixed-n run at n = N, an
    adaptive run with n_max = N (whose looks fall on these checkpoints) and ``Smooth``
    see the same noise for the same (seed, image, stream); torch's Gaussian sampler gives
    different values for the same generator state when the draw is split differently.
    """
    counts = union_bound_looks(total, 1.0).counts
    ends: list[int] = []
    for start, end in zip((0, *counts[:-1]), counts, strict=True):
        ends.extend(range(start + DRAW, end, DRAW))
        ends.append(end)
    return np.array(ends)


def gaussian(count: int, shape: tuple[int, ...], gen: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """Standard normal noise, to be scaled by sigma."""
    return torch.randn((count, *shape), generator=gen, device=device)


Draw = Callable[[int, tuple[int, ...], "torch.Generator | None", torch.device], torch.Tensor]


class NoiseStream:
    """The ``total`` noise samples of one stream, handed out in any slicing but always
    drawn in the pieces ``ends`` (default: ``piece_ends(total)``), by ``draw`` (default:
    standard normal; sound mode: integer levels of the discretised Gaussian)."""

    def __init__(self, gen: torch.Generator | None, shape: tuple[int, ...], total: int,
                 device: torch.device | str, ends: np.ndarray | None = None,
                 draw: Draw = gaussian):
        self.gen, self.shape, self.device = gen, tuple(shape), torch.device(device)
        self.ends = piece_ends(total) if ends is None else ends
        self.draw = draw
        self.drawn = 0
        self.pending: list[torch.Tensor] = []  # drawn, not yet handed out

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` samples (k may cross piece ends)."""
        have = sum(len(p) for p in self.pending)
        while have < k:
            end = int(self.ends[np.searchsorted(self.ends, self.drawn, side="right")])
            self.pending.append(self.draw(end - self.drawn, self.shape, self.gen, self.device))
            have += end - self.drawn
            self.drawn = end
        noise = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [noise[k:]] if len(noise) > k else []
        return noise[:k]
