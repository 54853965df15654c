"""Randomized smoothing that stays sound in floating point (Voracek & Hein, ICLR 2023).

Standard smoothing adds float32 Gaussian noise to a float32 image; the rounding of
x + d then depends on x's low bits, and a classifier can read that pattern and get a
certificate around x that an adversarial example inside the ball contradicts
(tests/test_sound.py builds one). Sound mode removes the rounding from the argument:

* Images sit on the 8-bit grid: x = k / 255 with integer levels k.
* The noise is the Gaussian N(0, sigma^2) rounded to the nearest multiple of 1/255,
  kept as an integer number of levels d and drawn EXACTLY: a uniform 60-bit integer U
  against integer thresholds T_j = round(2^60 Phi(b_j)) at the cell boundaries b_j
  (computed with mpmath at 80 digits), d = #{j : T_j <= U} - K (a binary search).
* The network sees (k + d) / 255 in float32: a deterministic function of the integer
  k + d, so whatever it does with low bits is just part of the base classifier.

Why the continuous radius applies: rounding commutes with integer shifts, so
k + round(G) = round(k + G) for G ~ N(0, (255 sigma)^2 I) in level units. The smoothed
classifier of f with rounded-Gaussian noise at grid point x is therefore the ordinary
Gaussian smoothing of the base classifier f o round, whose certificate (Cohen et al.)
is sigma * PhiInv(p) in pixel units and holds for every x' in the ball, grid points
included. What we sample is not exactly the rounded Gaussian: the thresholds are
rounded to 2^-60 and the support is cut at K levels. The total-variation distance
``tv`` between the two, bounded in exact arithmetic here, is subtracted from the
Clopper-Pearson bound (any event's probability differs by at most ``tv``), plus
``MARGIN`` for the float64 evaluation of the bound and of PhiInv. So the certificate is
the radius of the distribution actually sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from scipy.stats import norm

from pefts.data.grid import LEVELS
from pefts.errors import PeftsError

BITS = 60  # uniform integers in [0, 2^60): 2^60 divides 2^64, so torch draws them exactly
TAIL = 10.0  # the support reaches 10 standard deviations: mass beyond is below 2^-60
MARGIN = 1e-12  # float64 slack of the Clopper-Pearson bound and of PhiInv (errors ~1e-15)
GRID_TOLERANCE = 1e-3  # in levels: float32 k/255 times 255 is within 1e-5 of k


@lru_cache(maxsize=16)
def _table(sigma: float) -> tuple[np.ndarray, int, float]:
    """Thresholds T_0..T_{2K-1}, K and the total-variation bound for ``sigma``."""
    import mpmath

    with mpmath.workdps(80):
        scale = mpmath.mpf(sigma) * LEVELS  # the noise's standard deviation in levels
        half = int(np.ceil(TAIL * float(scale)))  # K: values -K..K levels
        q = mpmath.mpf(2) ** BITS

        def cdf(level_edge: mpmath.mpf) -> mpmath.mpf:
            return mpmath.erfc(-level_edge / (scale * mpmath.sqrt(2))) / 2

        edges = [cdf(mpmath.mpf(j - half) + mpmath.mpf(1) / 2) for j in range(2 * half)]
        thresholds = [int(mpmath.nint(q * e)) for e in edges]
        # sampled law: value j - K has mass (T_j - T_{j-1}) / Q with T_{-1} = 0, T_{2K} = Q;
        # ideal law: the rounded Gaussian, Phi(upper edge) - Phi(lower edge), unbounded support
        cuts = [0, *thresholds, int(q)]
        ideal = [mpmath.mpf(0), *edges, mpmath.mpf(1)]
        lower_tail = cdf(mpmath.mpf(-half) - mpmath.mpf(1) / 2)
        ideal_mass = [ideal[j + 1] - ideal[j] for j in range(2 * half + 1)]
        ideal_mass[0] -= lower_tail  # the ideal's mass at -K is its cell, not the tail below
        ideal_mass[-1] -= lower_tail  # symmetric: the tail above K
        gap = sum(abs(mpmath.mpf(cuts[j + 1] - cuts[j]) / q - ideal_mass[j])
                  for j in range(2 * half + 1))
        tv = (gap + 2 * lower_tail) / 2
        tv_bound = float(tv) * (1 + 1e-6) + 1e-300  # rounded up into float64
    return np.array(thresholds, dtype=np.int64), half, tv_bound


@dataclass
class DiscreteGaussian:
    """The Gaussian of ``sigma`` (pixel units) discretised to the 1/255 grid."""

    sigma: float
    half: int = field(init=False)  # K: the noise takes -K..K levels
    tv: float = field(init=False)  # total variation to the exactly rounded Gaussian
    _thresholds: np.ndarray = field(init=False, repr=False)
    _on: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise PeftsError(f"sigma must be positive, got {self.sigma}")
        self._thresholds, self.half, self.tv = _table(float(self.sigma))

    def thresholds(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._on:
            self._on[key] = torch.as_tensor(self._thresholds, device=device)
        return self._on[key]

    def draw(self, count: int, shape: tuple[int, ...], gen: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
        """``count`` noise samples of ``shape`` in levels (int32), exactly from uniform integers."""
        uniform = torch.randint(0, 1 << BITS, (count, *shape), generator=gen, device=device,
                                dtype=torch.int64)
        levels = torch.searchsorted(self.thresholds(device), uniform, right=True, out_int32=True)
        return levels - self.half

    @staticmethod
    def levels(x: torch.Tensor, what: str = "the image") -> torch.Tensor:
        """The integer levels k of an image x = k / 255; refuses an image off the grid."""
        scaled = x.double() * LEVELS
        k = scaled.round()
        off = float((scaled - k).abs().max()) if x.numel() else 0.0
        if off > GRID_TOLERANCE:
            raise PeftsError(f"sound certification needs images on the 8-bit grid (multiples of "
                             f"1/255); {what} is {off / LEVELS:.2g} off it: quantise it first, "
                             "e.g. (x * 255).round() / 255")
        return k.to(torch.int32)

    @staticmethod
    def noisy(levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network sees: (k + d) / 255 in float32, a function of the integer k + d."""
        return (levels.unsqueeze(0) + noise).to(torch.float32) / LEVELS

    def certified_lower(self, lower: float) -> float:
        """A lower bound on the rounded Gaussian's p from one on the sampled law's p."""
        return max(0.0, lower - self.tv - MARGIN)

    def radius(self, certified_lower: float) -> float:
        """sigma * PhiInv(p), rounded towards zero; 0 below 1/2 (abstain)."""
        if certified_lower < 0.5:
            return 0.0
        return float(np.nextafter(self.sigma * norm.ppf(certified_lower), 0.0))
