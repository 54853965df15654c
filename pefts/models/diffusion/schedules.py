"""The noise schedules of the released checkpoints, as improved-diffusion and
guided-diffusion define them (gaussian_diffusion.get_named_beta_schedule), in float64
like theirs so that t* is picked on the same numbers."""

from __future__ import annotations

import math

import torch

from pefts.errors import PeftsError


def betas(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "linear":
        # Ho et al.'s 1e-4 .. 0.02 over 1000 steps, stretched to other step counts
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999)
                             for i in range(steps)], dtype=torch.float64)
    raise PeftsError(f"unknown noise schedule {schedule!r}; known: linear, cosine")


def alphas_cumprod(schedule: str, steps: int) -> torch.Tensor:
    return torch.cumprod(1 - betas(schedule, steps), 0)
