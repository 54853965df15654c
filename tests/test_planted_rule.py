"""Two formulas of the stopping rule at a few points, each against the realistic bug that
would break it unnoticed by the validity tests (issue 29, item 6): the futility margin
shrunk by (1 - t/n_max) instead of its square root, and the look budgets split in
proportion to the count instead of its square root. Both bugs keep the rule valid (the
budgets still sum to alpha; futility only decides when to give up), so only the formula
itself catches them. The points are far past the futility waits, whatever they are."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.sequences import final_look_share, spread_looks


@pytest.mark.parametrize("t,misses", [(50_000, 10_000), (90_000, 2_000)])
def test_futility_margin_shrinks_by_the_square_root_of_the_share_left(t, misses):
    """U = rate + (CP upper at level ``futility`` - rate) sqrt(1 - t / n_max): the sd of
    what n_max samples would show, given the t already seen."""
    n_max = 100_000
    plan = AdaptivePlan(0.5, 0.001, n_max, (0.0, 0.5, 1.0))
    n_a = t - misses
    rate = n_a / t
    cp_upper = beta.ppf(1 - plan.futility, n_a + 1, t - n_a)  # one-sided Clopper-Pearson
    upper = float(plan.futility_upper(np.array(n_a), t))
    assert upper < 1.0  # futility is on here
    assert (upper - rate) / (cp_upper - rate) == pytest.approx(math.sqrt(1 - t / n_max), rel=1e-6)


@pytest.mark.parametrize("n_max,alpha", [(2_000, 0.001), (100_000, 0.001)])
def test_look_budgets_follow_the_square_root_of_the_count(n_max, alpha):
    """The last look holds its share of alpha (final_look_share: FINAL_SHARE at 100,000,
    more for smaller budgets); the others split the rest in proportion to the square root
    of their counts."""
    looks = spread_looks(n_max, alpha)
    share = final_look_share(n_max)
    counts, budgets = np.array(looks.counts[:-1], float), np.array(looks.budgets[:-1])
    assert len(counts) >= 3
    assert budgets / np.sqrt(counts) == pytest.approx(
        np.full(len(counts), alpha * (1 - share) / np.sqrt(counts).sum()), rel=1e-9)
    assert looks.budgets[-1] == pytest.approx(alpha * share, rel=1e-9)
