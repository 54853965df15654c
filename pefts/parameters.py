"""The parameter table (paper Table 2) and accuracy against trainable parameters (Figure 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pefts.artifacts import load_meta


def parameter_table(models: Sequence[tuple[str, float, str | Path]]) -> pd.DataFrame:
    """One row per method: trainable parameters, share of the base model, bytes on disk."""
    rows, seen = [], set()
    for method, _sigma, weights in models:
        if method in seen:  # counts do not depend on sigma
            continue
        seen.add(method)
        meta = load_meta(weights)
        rows.append({
            "method": method,
            "hparams": ", ".join(f"{k}={v}" for k, v in sorted(meta["hparams"].items())) or "-",
            "trainable": meta["trainable_params"],
            "base_total": meta["base_params"],
            "trainable %": 100.0 * meta["trainable_params"] / meta["base_params"],
            "saved bytes": Path(weights).stat().st_size,
        })
    return pd.DataFrame(rows)


def accuracy_vs_parameters(params: pd.DataFrame, summary: pd.DataFrame, radius_column: str
                           ) -> pd.DataFrame:
    """Join certified accuracy at one radius with each method's trainable count."""
    joined = summary.merge(params[["method", "trainable"]], on="method")
    return joined[["method", "sigma", "trainable", radius_column]]
