"""When to stop sampling an image: the stopping rule of adaptive certification.

The lower bound comes from a confidence sequence (``sequences.spread_looks``: Clopper-
Pearson at every look, alpha split over the looks by the union bound), so it is valid
whatever this rule decides. The rule only saves samples: it stops once more samples
cannot change the answer that matters.

* Grid mode: every radius r of the grid is settled, either certified (L >= Phi(r/sigma))
  or out of reach. A threshold is out of reach once an upper bound U on p falls below
  the p that n_max samples would need to certify it. U is a plain Clopper-Pearson bound
  at level ``futility`` at each look, its margin shrunk by sqrt(1 - t / n_max) (it bounds
  what fixed n's whole sample would show, and the t samples seen are part of it), not a
  sequence: it decides only when to give up, never what is certified, so when it errs it
  costs a certificate that n_max samples might have given. It waits for
  ``FUTILITY_FROM`` samples per ``FUTILITY_PER`` of n_max (300 at n_max = 100,000; a small
  budget waits in proportion, so it does not pay for the presets') and for
  ``FUTILITY_MISSES`` misses: before that, one or two early misses of an image near p = 1
  read as a rate far below the need of a high threshold that fixed n reaches (the misses
  are not scaled: a threshold near the cap of a small n_max allows only a few, and fewer
  misses would give it up on one unlucky one). Whatever the waits, a threshold whose need
  exceeds the hits seen plus the samples left is out of reach for certain. One certifying
  the largest radius has every threshold certified.
* Abstention (r = 0): besides that bound, Wald's one-sided sequential probability ratio
  test of p = 1/2 against q1 = (the need of 1/2 at n_max) + ``ABSTAIN_MARGIN``: the image
  abstains once the likelihood ratio of 1/2 over q1 reaches 1 / ``ABSTAIN_BETA``. That
  ratio is a nonnegative supermartingale under every p >= q1, so by Ville's inequality an
  image with p >= q1 is given up at r = 0 with probability at most ``ABSTAIN_BETA`` over
  all looks together. It needs no wait (misses, not hits, drive it) and catches images
  at p = 1/2, which no bound can show to be below 1/2, once they are clearly short of q1.

What spends alpha: only the lower bound, the confidence sequence's looks, whose budgets
sum to alpha. Both futility tests only stop an image, which then reports the valid lower
bound it has; an error of theirs costs a certificate, never a false one, so they spend no
alpha (``ABSTAIN_BETA`` and ``FUTILITY`` bound lost certificates, not over-claims).
* Tolerance mode (``rtol``): stop once the radius certified now is within a relative
  tolerance of the radius n_max samples would give if p were as large as U.
* Always: stop at n_max.

``settled_many`` is the rule itself, on arrays: the pool calls it for one image at a
look, the replay (``replay``) for many simulated images and every look at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from pefts.certification.bounds import lower_confidence_bounds
from pefts.certification.sequences import (
    Looks,
    cp_lower,
    lowest_count_reaching,
    spread_looks,
)

# chosen by replaying Cohen's logs (docs/certification.md): the loosest level that keeps
# certified counts within 1% of fixed n's on both grids, with a margin
FUTILITY = 0.18
# samples to wait for at n_max = FUTILITY_PER, scaled in proportion to n_max; misses as is
FUTILITY_FROM = 300
FUTILITY_MISSES = 8
FUTILITY_PER = 100_000
# the r = 0 test (chosen by the same replay): images at least 0.01 above the need of 1/2
# are lost at r = 0 at most 5% of the time; the band below (about 6 of fixed n's standard
# errors at n_max = 100,000) holds under 1% of Cohen's images
ABSTAIN_MARGIN = 0.01
ABSTAIN_BETA = 0.05
# recorded in every adaptive run's settings: a change of looks, budgets or futility is a
# new version, so a resume or merge never mixes rows of two rules
STOPPING_RULE = "spread-cp/4"


@dataclass
class AdaptivePlan:
    """Looks, budgets and stopping rule shared by every image of a run."""

    sigma: float
    alpha: float
    n_max: int
    radii: tuple[float, ...] = (0.0,)
    rtol: float | None = None
    futility: float = FUTILITY
    looks: Looks | None = None  # None: the spread Clopper-Pearson sequence at level alpha
    _needed: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.looks is None:
            self.looks = spread_looks(self.n_max, self.alpha)
        self.n_max = self.looks.counts[-1]
        self.thresholds = [float(norm.cdf(r / self.sigma)) for r in sorted(set(self.radii))]
        self._needed = np.array([self._needed_p(t) for t in self.thresholds])
        self._abstain_below = self._needed_p(0.5)
        self.futility_from = math.ceil(FUTILITY_FROM * self.n_max / FUTILITY_PER)
        self.futility_misses = FUTILITY_MISSES
        # per sample, the log likelihood ratio of p = 1/2 over q1, for a hit and a miss
        q1 = min(self._abstain_below + ABSTAIN_MARGIN, 1.0)
        self._abstain_llr = (math.log(0.5 / q1),
                             math.inf if q1 >= 1 else math.log(0.5 / (1 - q1)))

    @property
    def rule(self) -> str:
        """The stopping rule's name and version, as the settings record it."""
        return STOPPING_RULE

    def _needed_p(self, threshold: float) -> float:
        """The hit rate at which the last look certifies ``threshold`` (inf: never)."""
        count = lowest_count_reaching(threshold, self.n_max, self.looks.budgets[-1])
        return float("inf") if count is None else count / self.n_max

    def radius(self, lower: float) -> float:
        return float(self.sigma * norm.ppf(lower)) if lower >= 0.5 else 0.0

    def look(self, k: int, n_a: int, lower: float) -> tuple[float, bool]:
        """At look k with n_a hits: the running lower bound and whether to stop."""
        t = self.looks.counts[k]
        lower = max(lower, cp_lower(n_a, t, self.looks.budgets[k]))
        if k == len(self.looks.counts) - 1:
            return lower, True
        return lower, self.settled(lower, float(self.futility_upper(np.array(n_a), t)))

    def futility_upper(self, n_a: np.ndarray, t: np.ndarray | int) -> np.ndarray:
        """The optimistic hit rate at which to give up: what fixed n's whole sample would
        show, at level ``futility``. Its sd is the estimate's times sqrt(1 - t / n_max)
        (the t samples seen are part of n_max's), so the Clopper-Pearson upper bound's
        margin over n_a / t is shrunk by that factor. 1 (never give up on a reachable
        threshold) before ``futility_from`` samples and ``futility_misses`` misses. 1/2
        (no threshold reachable) once the r = 0 test abstains, whenever that is; never above
        the rate of n_max samples that hit every time from now on."""
        upper = 1 - lower_confidence_bounds(t - n_a, t, self.futility)
        rate = n_a / t
        shrunk = rate + (upper - rate) * np.sqrt(np.clip(1 - np.asarray(t) / self.n_max, 0, 1))
        early = (np.asarray(t) < self.futility_from) | (t - n_a < self.futility_misses)
        shrunk = np.minimum(np.where(early, 1.0, shrunk), (n_a + self.n_max - t) / self.n_max)
        hit, miss = self._abstain_llr
        with np.errstate(invalid="ignore"):  # 0 misses * inf (q1 = 1): no evidence, not nan
            llr = n_a * hit + np.where(t - n_a > 0, (t - n_a) * miss, 0.0)
        return np.where(llr >= math.log(1 / ABSTAIN_BETA), 0.5, shrunk)

    def settled(self, lower: float, upper: float) -> bool:
        return bool(self.settled_many(np.array([lower]), np.array([upper]))[0])

    def settled_many(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Whether images with these running lower and futility upper bounds may stop."""
        done = upper < self._abstain_below
        if self.rtol is None:
            reached = (lower[..., None] >= np.array(self.thresholds)) | \
                (upper[..., None] < self._needed)
            return done | reached.all(-1)
        best = lower_confidence_bounds(np.floor(upper * self.n_max), self.n_max,
                                       self.looks.budgets[-1])
        radius = self.radii_of(lower)
        return done | ((radius > 0) & (self.radii_of(best) <= radius * (1 + self.rtol)))

    def radii_of(self, lower: np.ndarray) -> np.ndarray:
        """``radius`` elementwise."""
        with np.errstate(divide="ignore"):
            return np.where(lower >= 0.5, self.sigma * norm.ppf(lower), 0.0)

    def replay(self, p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray]:
        """The rule on images of hit rates ``p``, hits drawn as binomial counts per look
        chunk (the tallies the pool sees): per image the estimation samples used, the
        lower bound it stopped with, and the hits it would have had at n_max (fixed n's
        hits on the same noise)."""
        counts, budgets = np.array(self.looks.counts), np.array(self.looks.budgets)
        hits = np.cumsum(rng.binomial(np.array(self.looks.chunks), np.asarray(p)[:, None]), 1)
        lower = np.maximum.accumulate(lower_confidence_bounds(hits, counts, budgets), 1)
        upper = self.futility_upper(hits, counts)
        stop = self.settled_many(lower, upper)
        stop[:, -1] = True
        k = stop.argmax(1)
        rows = np.arange(len(hits))
        return counts[k], lower[rows, k], hits[:, -1]


def fixed_plan(sigma: float, alpha: float, n: int) -> AdaptivePlan:
    """Cohen's fixed n as a plan: one look at n with the whole alpha, so its bound is
    Cohen's Clopper-Pearson bound exactly (one look needs no union bound)."""
    return AdaptivePlan(sigma, alpha, n, looks=Looks((n,), (alpha,)))
