"""t* of diffusion denoised smoothing picked on the schedule's float64 numbers, as the
authors' code picks it, against the realistic bug that would break it unnoticed by the
tests at round sigmas (issue 29, item 6): t* chosen in float32. At most sigmas the two
agree; the test finds, on each released schedule, sigmas where they do not."""

from __future__ import annotations

import pytest
import torch

from pefts.methods.diffusion import DiffusionDenoiser, timestep_for_sigma
from pefts.models.diffusion.loading import load_release
from pefts.models.diffusion.releases import get_release
from pefts.models.diffusion.schedules import alphas_cumprod
from tests.test_diffusion_releases import (  # noqa: F401  (small_releases: a fixture)
    RELEASES,
    carlini_timestep,
    hand_schedule,
    small_releases,
)


def split_sigma(abar: torch.Tensor, near: float) -> float:
    """The first sigma from ``near`` up at which t* on ``abar`` (float64) and on its
    float32 copy differ: halfway between the two precisions' noise levels of one t."""
    ratio64 = ((1 - abar) / abar).sqrt()
    single = abar.float()
    ratio32 = ((1 - single) / single).sqrt()
    for t in range(timestep_for_sigma(abar, near), len(abar)):
        sigma = (float(ratio64[t]) + float(ratio32[t])) / 4
        if timestep_for_sigma(abar, sigma) != timestep_for_sigma(single, sigma):
            return sigma
    raise AssertionError(f"float32 and float64 pick the same t* everywhere above sigma {near}")


@pytest.mark.usefixtures("small_releases")
@pytest.mark.parametrize("near", [0.25, 0.5])
def test_t_star_is_picked_in_float64_where_float32_would_pick_another(near):
    for name in RELEASES:
        spec = get_release(name)
        sigma = split_sigma(alphas_cumprod(spec.schedule, spec.steps), near)
        assert abs(sigma / near - 1) < 0.2, (name, sigma)
        expected = carlini_timestep(hand_schedule(name), sigma)  # numpy float64, by hand
        denoiser = DiffusionDenoiser(*load_release(None, name))
        assert denoiser.set_sigma(sigma) == expected, (name, sigma)
