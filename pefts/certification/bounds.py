"""Confidence bounds on the top-class probability and the radii they certify."""

from __future__ import annotations

from scipy.special import betaincinv
from scipy.stats import norm


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: the
    Beta(n_a, n - n_a + 1) quantile at alpha. betaincinv is that quantile bit for bit,
    without scipy.stats' per-call overhead (adaptive runs call it at every look)."""
    if n_a == 0:  # the quantile is NaN there; the bound is 0
        return 0.0
    return float(betaincinv(n_a, n - n_a + 1, alpha))


def radius_cap(sigma: float, n: int, alpha: float) -> float:
    """The largest radius any certificate with n samples at level alpha can claim."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))
