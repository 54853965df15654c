"""Anytime-valid confidence sequences for the top-class probability p.

A fixed-n Clopper-Pearson bound is valid only if the sample count is fixed in advance:
looking after every batch and stopping when it looks good over-claims (naive peeking).
A confidence sequence holds at every look at once, so any stopping rule is valid.

* Union-bound Clopper-Pearson (Voracek 2024, appendix C.2): look j at the first count
  t > 1.1 ** (11 + j) with error budget alpha_j = 5 alpha / ((j + 4)(j + 5)); the
  budgets sum to alpha, so by the union bound all looks hold together.
* Spread Clopper-Pearson (ours, the default): looks at the first counts above
  ``FIRST`` * ``SPREAD`` ** j, a share ``FINAL_SHARE`` of alpha on the last look at n_max
  and the rest split over the others in proportion to the square root of their counts.
  Voracek's schedule starts at 4 samples and gives its early looks most of alpha: by
  1,000 samples a look holds alpha / 884, which costs about twice the samples of a
  one-look test; a spread look there holds about alpha / 145, and later ones more.
* Betting (same paper): a plug-in likelihood ratio that is a martingale under p; by
  Ville's inequality it crosses 1/alpha with probability at most alpha, ever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pefts.certification.bounds import lower_confidence_bound

GROWTH = 1.1
OFFSET = 11
# chosen by replaying Cohen's logs (docs/certification.md): fewer early looks leave more
# of alpha for the counts where most images decide (100 hits of 100 at the first look's
# share give about 1.15 sigma, so an easy image still stops within a few looks). The look
# at n_max decides only the few images that run that far, each within a hair of a
# threshold: at n_max = 100,000, 5% of alpha there (z 3.89 against fixed n's 3.09 at alpha
# 0.001) moves fixed n's certified counts by under 1%, and the other 95% speed up every
# other image. The band of p it gives up is (z difference) / sqrt(n_max) wide, and at
# small budgets many images reach n_max: the share grows as 1 / sqrt(n_max), up to 30%
# (spread-cp/3's, from n_max = 2,778 down, the embedded default's 2,000 included)
FIRST = 100
SPREAD = 1.15
FINAL_SHARE = 0.05
FINAL_SHARE_AT = 100_000
FINAL_SHARE_MAX = 0.3


cp_lower = lower_confidence_bound  # the one Clopper-Pearson bound, fixed-n and per look


def cp_upper(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound."""
    return 1.0 - cp_lower(n - n_a, n, alpha)


@dataclass(frozen=True)
class Looks:
    """Cumulative sample counts of the looks and the error budget spent at each."""

    counts: tuple[int, ...]
    budgets: tuple[float, ...]

    @property
    def chunks(self) -> tuple[int, ...]:
        """Samples drawn between consecutive looks: an image's noise comes in these chunks."""
        return tuple(b - a for a, b in zip((0, *self.counts[:-1]), self.counts, strict=False))


def union_bound_looks(n_max: int, alpha: float) -> Looks:
    """Voracek's geometric checkpoints up to n_max, with the budgets of the union bound.

    Checkpoints that round to the same count pool their budgets (one event, the sum of
    their probabilities). No look happens after n_max, so the last look gets the whole
    unspent tail, sum over j >= J of alpha_j = 5 alpha / (J + 4): its bound is the
    tightest, and the budgets still sum to alpha.
    """
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    counts: list[int] = []
    budgets: list[float] = []
    j = 1
    while True:
        t = math.floor(GROWTH ** (OFFSET + j)) + 1
        if t >= n_max:
            counts.append(n_max)
            budgets.append(5 * alpha / (j + 4))
            return Looks(tuple(counts), tuple(budgets))
        a_j = 5 * alpha / ((j + 4) * (j + 5))
        if counts and counts[-1] == t:
            budgets[-1] += a_j
        else:
            counts.append(t)
            budgets.append(a_j)
        j += 1


def final_look_share(n_max: int) -> float:
    """The share of alpha on the look at n_max: ``FINAL_SHARE`` at ``FINAL_SHARE_AT``,
    in proportion to 1 / sqrt(n_max), at most ``FINAL_SHARE_MAX``."""
    return min(FINAL_SHARE_MAX, FINAL_SHARE * math.sqrt(FINAL_SHARE_AT / n_max))


def spread_looks(n_max: int, alpha: float, first: int = FIRST, growth: float = SPREAD,
                 final_share: float | None = None) -> Looks:
    """Geometric looks from ``first`` by ``growth`` up to n_max; the look at n_max holds
    ``final_share`` of alpha (default ``final_look_share(n_max)``: the look that decides
    images fixed n finds hard, so its bound stays close to fixed n's) and the others split
    the rest in proportion to the square root of their counts (a late look decides images
    near a threshold, where a smaller share costs most samples). The budgets sum to alpha,
    so by the union bound every look holds at once."""
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    if final_share is None:
        final_share = final_look_share(n_max)
    if not (first >= 1 and growth > 1 and 0 < final_share <= 1):
        raise ValueError(f"spread looks need first >= 1, growth > 1, 0 < final_share <= 1; got "
                         f"{first}, {growth}, {final_share}")
    counts: list[int] = []
    t = float(first)
    while math.ceil(t) < n_max:
        if not counts or math.ceil(t) > counts[-1]:
            counts.append(math.ceil(t))
        t *= growth
    if not counts:
        return Looks((n_max,), (alpha,))
    weights = [math.sqrt(c) for c in counts]
    shares = [alpha * (1 - final_share) * w / sum(weights) for w in weights]
    return Looks((*counts, n_max), (*shares, alpha - math.fsum(shares)))


def betting_lower_bounds(hits: np.ndarray, alpha: float, at: np.ndarray) -> np.ndarray:
    """Running lower bounds of the betting confidence sequence at sample counts ``at``.

    Before sample i the bettor predicts q_i = (H + 1/2) / (i + 1) from the H hits of the
    i samples so far; log W_t = sum of log q_i or log(1 - q_i). A value p is rejected
    once log W_t - [H_t log p + (t - H_t) log(1 - p)] > log(1 / alpha); checking only at
    the looks ``at`` is still valid (Ville's inequality holds for every stopping time).
    """
    hits = np.asarray(hits, dtype=np.float64)
    before = np.concatenate([[0.0], np.cumsum(hits)[:-1]])
    q = (before + 0.5) / (np.arange(len(hits)) + 1.0)
    log_w = np.cumsum(hits * np.log(q) + (1 - hits) * np.log1p(-q))
    at = np.asarray(at)
    h_t, w_t = np.cumsum(hits)[at - 1], log_w[at - 1]
    lo, hi = np.zeros(len(at)), h_t / at  # the statistic falls in p below the hit rate
    for _ in range(60):
        mid = (lo + hi) / 2
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log(0) at zero hits: nan, not rejected
            stat = w_t - (h_t * np.log(mid) + (at - h_t) * np.log1p(-mid))
        rejected = stat > math.log(1 / alpha)
        lo, hi = np.where(rejected, mid, lo), np.where(rejected, hi, mid)
    return np.maximum.accumulate(lo)


def lowest_count_reaching(threshold: float, n: int, alpha: float) -> int | None:
    """The fewest hits of n whose CP lower bound at alpha reaches ``threshold`` (None: none)."""
    if threshold <= 0:
        return 0
    if cp_lower(n, n, alpha) < threshold:
        return None
    lo, hi = 0, n  # invariant: bound(lo) < threshold <= bound(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cp_lower(mid, n, alpha) >= threshold:
            hi = mid
        else:
            lo = mid
    return hi
