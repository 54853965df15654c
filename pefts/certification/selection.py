"""Which test images a certification run covers, and how they split into shards."""

from __future__ import annotations

import re

from pefts.errors import PeftsError


def selected_indices(num_test: int, skip: int, max_count: int) -> list[int]:
    """Every ``skip``-th test image, then at most ``max_count`` of them (<= 0: no limit).

    The limit applies after skipping, so ``max`` counts certified images, not scanned ones.
    """
    if skip < 1:
        raise PeftsError(f"skip must be at least 1, got {skip}")
    selected = list(range(0, num_test, skip))
    return selected[:max_count] if max_count > 0 else selected


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise PeftsError(f"shard must look like K/N (e.g. 0/4), got {text!r}")
    k, n = int(match[1]), int(match[2])
    if n < 1 or k >= n:
        raise PeftsError(f"shard {text!r} is out of range: need 0 <= K < N")
    return k, n


def shard_indices(selected: list[int], k: int, n: int) -> list[int]:
    """The K-th of N interleaved slices, so every shard sees easy and hard images alike."""
    return selected[k::n]
