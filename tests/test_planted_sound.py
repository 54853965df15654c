"""The sound certifier's two small numbers, each against the realistic bug that would
break it unnoticed (issue 29, item 6): the total-variation margin not subtracted (the
real one, about 1e-16, sits under any float tolerance, so it is made large here) and the
8-bit grid's tolerance loosened from 1e-3 levels to a fraction of a level."""

from __future__ import annotations

import pytest
import torch

from pefts import certify
from pefts.certification import sound
from pefts.certification.bounds import lower_confidence_bound
from pefts.certification.sound import LEVELS, MARGIN, DiscreteGaussian
from pefts.errors import PeftsError
from tests.test_sound import Spy, grid_images

TV = 0.03  # a total variation the bound must visibly lose


@pytest.fixture
def large_tv(monkeypatch):
    """The sampled law's total variation to the rounded Gaussian, pretended to be TV."""
    table = sound._table
    monkeypatch.setattr(sound, "_table", lambda sigma: (*table(sigma)[:2], TV))


def test_the_total_variation_is_subtracted_from_the_bound(large_tv):
    assert DiscreteGaussian(0.25).tv == TV
    assert DiscreteGaussian(0.25).certified_lower(0.9) == pytest.approx(0.9 - TV - MARGIN, abs=1e-15)
    assert DiscreteGaussian(0.25).certified_lower(TV / 2) == 0.0
    sigma, n, alpha = 0.25, 400, 0.001
    rows = certify(Spy(48).eval(), grid_images(6), [0] * 6, sigma=sigma, n=n, n0=20, alpha=alpha,
                   adaptive=False, batch=200, sound=True, num_classes=3)
    assert (rows["nA"] > 0).all() and (rows["predict"] >= 0).any()
    for row in rows.itertuples():
        raw = lower_confidence_bound(int(row.nA), n, alpha)
        assert row.pA_lower == pytest.approx(max(0.0, raw - TV - MARGIN), abs=1e-12)
        assert row.radius == pytest.approx(DiscreteGaussian(sigma).radius(row.pA_lower), abs=0)


def off_grid(levels_off: float) -> torch.Tensor:
    """Every 8-bit level, ``levels_off`` of a level above the grid, in float32."""
    return ((torch.arange(LEVELS + 1, dtype=torch.float64) + levels_off) / LEVELS).float()


def test_the_grid_takes_float32_levels_and_nothing_a_fraction_of_a_level_off():
    # k / 255 in float32 is within 1e-5 levels of k: every level is on the grid
    assert torch.equal(DiscreteGaussian.levels(off_grid(0.0)), torch.arange(LEVELS + 1, dtype=torch.int32))
    for off in (0.002, 0.01, 0.2, -0.2):
        with pytest.raises(PeftsError, match="8-bit grid"):
            DiscreteGaussian.levels(off_grid(off))
    image = grid_images(2)
    image[1, 0, 0, 0] += 0.01 / LEVELS  # one pixel of one image a hundredth of a level off
    with pytest.raises(PeftsError, match="8-bit grid.*image 1"):
        certify(Spy(48).eval(), image, [0, 1], sigma=0.25, n=100, n0=16, adaptive=False,
                sound=True, num_classes=3)
