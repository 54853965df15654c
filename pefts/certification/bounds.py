"""Confidence bounds on the top-class probability and the radii they certify."""

from __future__ import annotations

import numpy as np
from scipy.special import betaincinv
from scipy.stats import norm


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: the
    Beta(n_a, n - n_a + 1) quantile at alpha. betaincinv is that quantile bit for bit,
    without scipy.stats' per-call overhead (adaptive runs call it at every look)."""
    if n_a == 0:  # the quantile is NaN there; the bound is 0
        return 0.0
    return float(betaincinv(n_a, n - n_a + 1, alpha))


def lower_confidence_bounds(n_a: np.ndarray, n: np.ndarray, alpha: np.ndarray | float
                            ) -> np.ndarray:
    """``lower_confidence_bound`` elementwise over arrays (broadcast): the same betaincinv
    values, for replaying many images and looks at once."""
    n_a, n = np.asarray(n_a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(all="ignore"):  # n_a = 0 gives NaN, replaced by 0 below
        bound = betaincinv(np.maximum(n_a, 1.0), n - n_a + 1, alpha)
    return np.where(n_a > 0, bound, 0.0)


def radius_cap(sigma: float, n: int, alpha: float) -> float:
    """The largest radius any certificate with n samples at level alpha can claim."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))
