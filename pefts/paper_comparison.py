"""Our numbers beside the paper's: each (row, column) of its Table 1 and each method of its
Table 2, with ours computed from the run's own certification rows and weights."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pefts.errors import PeftsError
from pefts.hparams import closest
from pefts.paper_values import SOURCE, TABLE1, TABLE2
from pefts.results import certified_accuracy

UNDER_TABLE1 = (
    "The paper's Table 1 labels its columns sigma, but its RS and DIFFUSION rows are Cohen's "
    "and Carlini's certified accuracies at radius r = the column's value. Every row is "
    "therefore compared at that radius: ours is the certified accuracy at r = c of our run "
    "trained and certified at sigma = c. RS is the paper's plain randomized-smoothing row "
    "(Cohen et al.'s noise-trained ResNet); ours is the untuned base under smoothing.")


def table1_comparison(dataset: str, runs: Sequence[tuple[str, float, pd.DataFrame]]
                      ) -> pd.DataFrame:
    """One row per (paper row, column): the paper's percent, ours at r = column from the run
    at sigma = column, and ours minus the paper's (empty where either is missing)."""
    table = _table1(dataset)
    compared = {method for method, _ in table.rows.values()} | set(TABLE2)
    for method, sigma, _ in runs:
        if method not in compared:
            raise PeftsError(f"--run {method} {sigma:g} is in no row of the paper's tables"
                             f"{closest(method, compared)}: they compare "
                             f"{', '.join(sorted(compared))}")
    ours = {(method, round(sigma, 6)): frame for method, sigma, frame in runs}
    rows = []
    for paper_row, (method, cells) in table.rows.items():
        for column in table.columns:
            frame = ours.get((method, round(column, 6)))
            mine = 100.0 * certified_accuracy(frame, column) if frame is not None else None
            paper = cells[column]
            rows.append({"paper row": paper_row, "method": method, "column": column,
                         "radius": column, "paper %": paper, "ours %": mine,
                         "ours - paper": None if paper is None or mine is None else mine - paper})
    return pd.DataFrame(rows)


def table2_comparison(parameters: pd.DataFrame) -> pd.DataFrame:
    """Trainable parameters, the paper's against ours (from `pefts parameters`' TSV)."""
    missing = {"method", "trainable"} - set(parameters.columns)
    if missing:
        raise PeftsError(f"the parameter table lacks column(s) {', '.join(sorted(missing))} "
                         "(expected `pefts parameters`' TSV)")
    ours = dict(zip(parameters["method"], parameters["trainable"], strict=True))
    rows = [{"method": method, "paper": paper, "ours": ours.get(method),
             "ours / paper": (ours[method] / paper if paper and method in ours else None)}
            for method, paper in TABLE2.items() if method in ours]
    return pd.DataFrame(rows, columns=["method", "paper", "ours", "ours / paper"])


def comparison_markdown(dataset: str, table1: pd.DataFrame, table2: pd.DataFrame,
                        note: str) -> str:
    """Both comparisons as a reader pastes them, each with what it compares."""
    missing = int(table1["paper %"].isna().sum())
    t1 = table1.assign(**{c: [_fmt(v, ".1f") for v in table1[c]]
                          for c in ("paper %", "ours %", "ours - paper")})
    t2 = table2.assign(paper=[_count(v) for v in table2["paper"]],
                       ours=[_count(v) for v in table2["ours"]],
                       **{"ours / paper": [_fmt(v, ".3f") for v in table2["ours / paper"]]})
    parts = [f"# Against the paper ({dataset})\n", f"Cited: {SOURCE}. {note[0].upper()}{note[1:]}.\n",
             "## Table 1: certified accuracy (%)\n", t1.to_markdown(index=False), "",
             UNDER_TABLE1]
    if missing:
        parts.append(f"\n{missing} of the paper's {len(table1)} cells are not transcribed "
                     "(`pefts/paper_values.py`): shown as '-'.")
    parts += ["", "## Table 2: trainable parameters\n",
              t2.to_markdown(index=False) if len(t2) else "(no method of Table 2 in this run)"]
    return "\n".join(parts) + "\n"


def _table1(dataset: str):
    if dataset not in TABLE1:
        raise PeftsError(f"the paper has no Table 1 for dataset {dataset!r}; "
                         f"it has {', '.join(sorted(TABLE1))}")
    return TABLE1[dataset]


def _fmt(value, spec: str) -> str:
    return "-" if value is None or pd.isna(value) else format(value, spec)


def _count(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{int(round(value)):,}"
