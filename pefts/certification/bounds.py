"""Confidence bounds on the top-class probability and the radii they certify."""

from __future__ import annotations

from scipy.stats import beta, norm


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if n_a == 0:  # beta.ppf(alpha, 0, n + 1) is NaN; the bound is 0
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def radius_cap(sigma: float, n: int, alpha: float) -> float:
    """The largest radius any certificate with n samples at level alpha can claim."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))
