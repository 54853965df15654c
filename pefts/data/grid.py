"""The 8-bit pixel grid: the values k / 255 an image file holds.

Sound certification needs images on it (pefts.certification.sound); datasets whose
values lie off it (digits: k / 16) are put on it here, as part of the data.
"""

from __future__ import annotations

import torch

LEVELS = 255  # the 8-bit grid: pixel values k / 255


def quantised(x: torch.Tensor) -> torch.Tensor:
    """x on the 8-bit grid: round(255 x) / 255, clipped to [0, 1]."""
    return (x * LEVELS).round().clamp(0, LEVELS) / LEVELS
