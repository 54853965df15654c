"""How well each model has learned noisy inputs (paper Figure 2): the base classifier's
own accuracy on x + d, for every method at every sigma it was tuned for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pefts.runtime.artifacts import load_meta


def noise_accuracy_table(models: Sequence[tuple[str, float, str | Path]]) -> pd.DataFrame:
    """One row per (method, sigma): accuracy of f itself (not of the smoothed g) on
    Gaussian-noised test images, as measured when the run was fine-tuned."""
    rows = []
    for method, sigma, weights in models:
        meta = load_meta(weights)
        rows.append({"method": method, "sigma": float(sigma),
                     "noisy accuracy": meta["metrics"]["noisy_test_accuracy"]})
    return pd.DataFrame(rows)
