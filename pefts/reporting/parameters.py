"""The parameter table (paper Table 2) and accuracy against trainable parameters (Figure 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pefts.runtime.artifacts import load_meta


def parameter_table(models: Sequence[tuple[str, float, str | Path]]) -> pd.DataFrame:
    """One row per method: trainable parameters, share of the base model, frozen
    parameters the method adds (a pretrained denoiser or encoder: the diffusion UNet,
    which the paper's Table 2 counts as the diffusion denoiser's parameters), bytes on
    disk, and the queries to the base model that a black-box method spent."""
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
            # artifacts written before this column existed added nothing frozen
            "frozen added": meta.get("frozen_added_params", 0),
            # which frozen networks those are (a black box's encoder and queried CLIP)
            "frozen parts": ", ".join(f"{name} {count:,}" for name, count
                                      in meta.get("frozen_parts", {}).items()) or "-",
            "saved bytes": Path(weights).stat().st_size,
            # black-box training is measured in queries to the model, not in gradients
            "queries": meta.get("metrics", {}).get("queries"),
        })
    table = pd.DataFrame(rows)
    table["queries"] = table["queries"].astype("Int64")  # whole numbers, empty where none
    return table


def read_parameter_table(path: str | Path) -> pd.DataFrame:
    """`pefts parameters`' TSV, its counts checked: a whole number >= 0 per method (a
    count typed as "81,418" is refused, naming its line, not divided by)."""
    from pefts.certification.results import read_written_table
    from pefts.errors import PeftsError

    table = read_written_table(path, "pefts parameters")
    missing = {"method", "trainable"} - set(table.columns)
    if missing:
        raise PeftsError(f"{path} lacks column(s) {', '.join(sorted(missing))} "
                         "(expected `pefts parameters`' TSV)")
    counts = pd.to_numeric(table["trainable"], errors="coerce")
    bad = ~(counts.notna() & (counts >= 0) & (counts == counts.round()))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise PeftsError(f"{path}, line {row + 2}: trainable {table['trainable'].iloc[row]!r} "
                         "is not a whole number >= 0 (no thousands separators)")
    return table.assign(trainable=counts.astype("int64"))


def parameter_markdown(table: pd.DataFrame) -> str:
    """The table as a reader pastes it: counts with thousands separators, '-' for none."""
    shown = table.copy()
    for column in ("trainable", "base_total", "frozen added", "saved bytes", "queries"):
        shown[column] = [f"{v:,}" if pd.notna(v) else "-" for v in shown[column]]
    shown["trainable %"] = [f"{v:.3g}" for v in shown["trainable %"]]
    align = ["left" if column in ("method", "hparams", "frozen parts") else "right"
             for column in shown.columns]
    return shown.to_markdown(index=False, colalign=align) + "\n"


def accuracy_vs_parameters(params: pd.DataFrame, summary: pd.DataFrame, radius_column: str
                           ) -> pd.DataFrame:
    """Join certified accuracy at one radius with each method's trainable count."""
    joined = summary.merge(params[["method", "trainable"]], on="method")
    return joined[["method", "sigma", "trainable", radius_column]]
