"""The default stopping rule (spread Clopper-Pearson looks + futility) against the
closed-form truth, replayed with vectorised binomial hits: over-claims stay within alpha
at every look and at the rule's own stop, including where the rule decides."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from scipy.stats import norm

from pefts.certification.adaptive import (
    ABSTAIN_BETA,
    ABSTAIN_MARGIN,
    FUTILITY_FROM,
    FUTILITY_MISSES,
    AdaptivePlan,
)
from pefts.certification.bounds import lower_confidence_bounds
from pefts.certification.sequences import final_look_share, spread_looks

SIGMA, ALPHA, N_MAX, REPS = 0.5, 0.05, 2000, 20_000
RADII = (0.0, 0.25, 0.5)


def tolerance(alpha: float, reps: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


@pytest.mark.parametrize("n_max,alpha", [(1, 0.001), (29, 0.05), (31, 0.05), (2000, 0.05),
                                         (100_000, 0.001), (1_000_000, 1e-6)])
def test_spread_looks_spend_at_most_alpha(n_max, alpha):
    looks = spread_looks(n_max, alpha)
    assert looks.counts[-1] == n_max and sum(looks.chunks) == n_max
    assert all(a < b for a, b in zip(looks.counts, looks.counts[1:], strict=False))
    assert sum(looks.budgets) <= alpha * (1 + 1e-12) and min(looks.budgets) > 0
    if len(looks.counts) > 1:  # fixed n's look keeps its share of alpha
        assert looks.budgets[-1] == pytest.approx(alpha * final_look_share(n_max), rel=1e-9)


def test_the_look_at_n_max_holds_more_of_alpha_at_small_budgets():
    # 5% at the presets' 100,000; spread-cp/3's 30% at the default's 2,000 and below
    assert final_look_share(100_000) == pytest.approx(0.05)
    assert final_look_share(2000) == final_look_share(29) == 0.3
    assert 0.05 < final_look_share(10_000) < 0.3


def anytime_over_claims(p: float, plan: AdaptivePlan, rng: np.random.Generator) -> np.ndarray:
    """Per look, the fraction of replays whose running lower bound is above p by then."""
    counts, budgets = np.array(plan.looks.counts), np.array(plan.looks.budgets)
    hits = np.cumsum(rng.binomial(np.array(plan.looks.chunks), np.full((REPS, 1), p)), 1)
    lower = np.maximum.accumulate(lower_confidence_bounds(hits, counts, budgets), 1)
    return (lower > p).mean(0)


def deciding_p(plan: AdaptivePlan, threshold: float, look: int) -> float:
    """The smallest p whose expected hits at ``look`` certify ``threshold`` there: the rule
    decides this image right at that look."""
    t, budget = plan.looks.counts[look], plan.looks.budgets[look]
    k = next(k for k in range(t + 1) if lower_confidence_bounds(k, t, budget) >= threshold)
    return k / t


def cases() -> list[tuple[str, float]]:
    plan = AdaptivePlan(SIGMA, ALPHA, N_MAX, RADII)
    on = [(f"p on the threshold of r={r}", float(norm.cdf(r / SIGMA))) for r in RADII[1:]]
    at = [(f"p decided at look {k}", deciding_p(plan, plan.thresholds[1], k)) for k in (3, 8, 14)]
    # just above the need of the next threshold: futility must not give up, and the
    # bound at the final look sits right at it
    below = [("p at the need of r=0.5", min(1.0, float(plan._needed[2]) + 1e-4)),
             ("p just above 1/2", 0.5 + 1e-4)]
    # the r = 0 test's edges: just below 1/2 (any certificate over-claims), at the need of
    # 1/2 at n_max (the futility bound's edge) and at the test's alternative q1
    zero = [("p just below 1/2", 0.5 - 1e-4),
            ("p at the need of 1/2", float(plan._abstain_below)),
            ("p at the r=0 test's q1", float(plan._abstain_below) + ABSTAIN_MARGIN)]
    return on + at + below + zero


@pytest.mark.parametrize("name,p", cases())
def test_rule_over_claims_at_most_alpha_at_every_look_and_at_its_stop(name, p):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    plan = AdaptivePlan(SIGMA, ALPHA, N_MAX, RADII)
    per_look = anytime_over_claims(p, plan, rng)
    assert per_look[-1] <= tolerance(ALPHA, REPS), (name, p, per_look[-1])
    used, lower, _ = plan.replay(np.full(REPS, p), rng)
    # below 1/2 the smoothed classifier abstains: any certificate (lower >= 1/2) over-claims
    claimed = plan.radii_of(lower) > SIGMA * norm.ppf(p) if p >= 0.5 else lower >= 0.5
    assert np.mean(claimed) <= tolerance(ALPHA, REPS), (name, p)
    assert used.min() < N_MAX or name.startswith("p just above"), "the rule never stopped early"


@pytest.mark.parametrize("name", ["p at the need of r=3 sigma", "p near 1", "p at 8 misses in 1,000"])
def test_rule_near_p_one_over_claims_at_most_alpha(name):
    """Where futility waits for misses (thresholds near p = 1) the bound still holds at
    every look and at the rule's stop."""
    plan = AdaptivePlan(SIGMA, ALPHA, 20_000, (0.0, 3 * SIGMA))
    p = {"p at the need of r=3 sigma": min(1.0, float(plan._needed[1]) + 1e-5),
         "p near 1": 0.9999, "p at 8 misses in 1,000": 1 - FUTILITY_MISSES / 1000}[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    assert anytime_over_claims(p, plan, rng)[-1] <= tolerance(ALPHA, REPS), (name, p)
    used, lower, _ = plan.replay(np.full(REPS, p), rng)
    assert np.mean(plan.radii_of(lower) > SIGMA * norm.ppf(p)) <= tolerance(ALPHA, REPS), name


def test_r0_test_gives_up_an_image_at_its_alternative_at_most_beta_of_the_time():
    """The SPRT of 1/2 against q1 abstains an image at p = q1 in at most ABSTAIN_BETA of
    runs over all looks together (Ville), and one at p = 1/2 long before n_max."""
    for n_max in (2000, 100_000):
        plan = AdaptivePlan(SIGMA, 0.001, n_max, (0.0, SIGMA))
        counts = np.array(plan.looks.counts)
        rng = np.random.default_rng(n_max)
        for p in (float(plan._abstain_below) + ABSTAIN_MARGIN, 0.5):
            hits = np.cumsum(rng.binomial(np.array(plan.looks.chunks), np.full((4000, 1), p)), 1)
            # 1/2 is what futility_upper returns once the r = 0 test abstains
            gave_up = (plan.futility_upper(hits, counts) == 0.5).any(1)
            if p > 0.5:
                assert gave_up.mean() <= tolerance(ABSTAIN_BETA, 4000), (n_max, gave_up.mean())
            else:
                assert gave_up.mean() > 0.9, (n_max, gave_up.mean())


def test_futility_waits_scale_with_n_max():
    """At a small budget an image stops at the first look once its decisions are clear,
    instead of waiting for the presets' 300 samples: a clear abstainer (three classes at
    p = 1/3), and p = 0.7, which certifies r = 0 and cannot reach r = sigma
    (Phi(1) = 0.84). At n_max = 100,000 the waits are the presets' (300 samples, 8
    misses)."""
    small = AdaptivePlan(SIGMA, 0.001, 1000, (0.0, SIGMA))
    used, _, _ = small.replay(np.full(2000, 1 / 3), np.random.default_rng(0))
    assert np.median(used) == small.looks.counts[0] == 100
    used, lower, _ = small.replay(np.full(2000, 0.7), np.random.default_rng(0))
    assert np.median(used) <= small.looks.counts[1] == 115  # r = 0 certified by then
    assert np.mean(lower >= 0.5) > 0.99
    large = AdaptivePlan(SIGMA, 0.001, 100_000, (0.0, SIGMA))
    assert (large.futility_from, large.futility_misses) == (FUTILITY_FROM, FUTILITY_MISSES)
    assert small.futility_from == 3


def test_futility_waits_for_samples_and_misses():
    """One or two early misses of an image near p = 1 must not rule out a high threshold
    that fixed n reaches: no futility before FUTILITY_FROM samples and FUTILITY_MISSES
    misses (at n_max = 100,000); past both it rules the threshold out."""
    plan = AdaptivePlan(SIGMA, 0.001, 100_000, (0.0, 3 * SIGMA))
    need = plan._needed[1]
    upper = plan.futility_upper
    # too soon (20 misses) and too few misses: only what the misses seen rule out for sure
    assert upper(np.array(FUTILITY_FROM - 21), FUTILITY_FROM - 1) == 1 - 20 / 100_000
    assert upper(np.array(1000 - FUTILITY_MISSES + 1), 1000) == 1 - (FUTILITY_MISSES - 1) / 100_000
    assert upper(np.array(1000 - FUTILITY_MISSES), 1000) < need  # 8 in 1,000: out of reach
    assert upper(np.array(1000 - 10), 1000) < need


def test_naive_peeking_is_caught():
    """The same check with fixed-n bounds at full alpha at every look over-claims."""
    plan = AdaptivePlan(SIGMA, ALPHA, N_MAX, RADII)
    naive = AdaptivePlan(SIGMA, ALPHA, N_MAX, RADII, looks=type(plan.looks)(
        plan.looks.counts, (ALPHA,) * len(plan.looks.counts)))
    rate = anytime_over_claims(0.7, naive, np.random.default_rng(0))[-1]
    assert rate > tolerance(ALPHA, REPS), rate


def test_replay_is_the_pool_rule_look_by_look():
    """``replay`` (arrays) stops where ``look`` (the pool's per-image call) stops."""
    plan = AdaptivePlan(SIGMA, 0.001, 20_000, RADII)
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0.45, 1.0, 300), [0.5, 1.0]])
    used, lower, hits = plan.replay(p, np.random.default_rng(7))
    draws = np.cumsum(np.random.default_rng(7).binomial(np.array(plan.looks.chunks),
                                                        p[:, None]), 1)
    assert (draws[:, -1] == hits).all()
    for image in range(len(p)):
        bound = 0.0
        for k, n_a in enumerate(draws[image]):
            bound, stop = plan.look(k, int(n_a), bound)
            if stop:
                break
        assert (plan.looks.counts[k], bound) == (used[image], pytest.approx(lower[image])), image
    assert len(set(used)) > 5


def test_a_threshold_beyond_every_remaining_hit_is_out_of_reach_before_the_waits():
    """7 misses in 500 samples of n_max = 1,000 (fewer than the 8 the Clopper-Pearson
    futility bound waits for) leave at most 993 hits at n_max: every threshold that needs
    more is out of reach for certain."""
    plan = AdaptivePlan(SIGMA, 0.001, 1000, (0.0, SIGMA))
    assert plan.futility_upper(np.array(493), 500) == pytest.approx(0.993)
    assert plan.futility_upper(np.array(500), 500) == 1.0
