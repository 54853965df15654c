"""Sample counts that can certify at all, refused before any work when they cannot.

With n estimation samples at level alpha the best possible Clopper-Pearson lower bound
is the one of n hits out of n, alpha ** (1/n). Below 1/2 every image abstains whatever
the model does (n = 10 at alpha = 0.001 gives 0.501, n = 9 gives 0.464). Adaptive
certification spends alpha over its looks (``sequences.spread_looks``); its best
bound is the largest of every look's all-hit bound at that look's share. PREDICT's
binomial test needs 2 * 0.5 ** n <= alpha at best.

Every check uses the certifier's own bound functions, so what is refused here is
exactly what would abstain everywhere.
"""

from __future__ import annotations

import math

from pefts.certification.sequences import cp_lower, spread_looks
from pefts.errors import PeftsError


def best_lower_bound(n: int, alpha: float, adaptive: bool = False) -> float:
    """The largest pA_lower any image can reach with ``n`` (adaptive: n_max) samples."""
    if not adaptive:
        return cp_lower(n, n, alpha)
    looks = spread_looks(n, alpha)
    return max(cp_lower(t, t, b) for t, b in zip(looks.counts, looks.budgets, strict=True))


def can_certify(n: int, alpha: float, adaptive: bool = False) -> bool:
    return best_lower_bound(n, alpha, adaptive) >= 0.5


def smallest_certifying_n(alpha: float, adaptive: bool = False) -> int:
    """The fewest samples with which an all-hit image certifies (radius 0 or more)."""
    # alpha ** (1/n) >= 1/2 needs n >= log2(1/alpha), written -log2(alpha): 1/alpha
    # overflows for a tiny alpha; the looks only need more
    n = max(1, math.floor(-math.log2(alpha)) - 1)
    while not can_certify(n, alpha, adaptive):
        n += 1
    return n


def check_can_certify(n: int, alpha: float, adaptive: bool = False, name: str = "--n") -> None:
    """Refuse ``n`` and ``alpha`` with which every image would abstain, naming the fix;
    ``name`` is how the user gave n (an option or a config key)."""
    if can_certify(n, alpha, adaptive):
        return
    how = "n hits of n at the last look's share of alpha" if adaptive else "n hits of n"
    raise PeftsError(
        f"{name} {n} at alpha {alpha:g} can never certify{' adaptively' if adaptive else ''}: "
        f"{how} give a lower bound of {best_lower_bound(n, alpha, adaptive):.4f} < 1/2, so "
        f"every image abstains; the smallest {name} that could is "
        f"{smallest_certifying_n(alpha, adaptive)}")


def smallest_predicting_n(alpha: float) -> int:
    """PREDICT abstains unless the two-sided binomial p-value 2 * 0.5 ** n <= alpha."""
    n = max(1, math.floor(1 - math.log2(alpha)) - 1)
    while 2 * 0.5 ** n > alpha:
        n += 1
    return n


def check_can_predict(n: int, alpha: float, name: str = "--n") -> None:
    if min(1.0, 2 * 0.5 ** n) > alpha:
        raise PeftsError(f"{name} {n} at alpha {alpha:g} can never predict: even n votes for "
                         f"one class give a p-value of {min(1.0, 2 * 0.5 ** n):.3g} > alpha; "
                         f"the smallest {name} that could is {smallest_predicting_n(alpha)}")
