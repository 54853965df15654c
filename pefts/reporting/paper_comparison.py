"""Our numbers beside the paper's: every cell of its Table 1, Figure 7's two numbers and
each count of its Table 2, with ours computed from the run's own certification rows and
weights. A paper row with no counterpart in ours (the RS rows, LEE) is shown as the
paper's reference row, never matched to the untuned base."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pefts.certification.results import certified_accuracy
from pefts.errors import PeftsError
from pefts.hparams import closest
from pefts.reporting.paper_values import (
    FIGURE7,
    FIGURE7_DATASET,
    FIGURE7_SIGMA,
    SOURCE,
    TABLE1,
    TABLE2,
    TABLE2_TEXT,
    TEXT,
    TRANSCRIBED,
    Table1,
    compared_methods,
)

Runs = Sequence[tuple[str, float, pd.DataFrame]]

UNDER_TABLE1 = (
    "The paper's Table 1 labels its columns sigma, but its prior-work rows are those papers' "
    "certified accuracies at radius r = the column's value (their own tables are by "
    "radius); so DENOISED and DIFFUSION are compared at that radius: ours is the certified "
    "accuracy at r = c of our run trained and certified at sigma = c.")
UNDER_PEFT = (
    "The paper does not state at which radius its PEFT rows are: ours is shown at r = 0 and "
    "at r = the column's value, both from our run at sigma = the column's value.")
NO_CLEAN = (
    "Ours has no clean accuracy: our runs certify the smoothed classifier, and its "
    "certified accuracy at r = 0 is not a clean accuracy (an abstention counts as wrong, "
    "and no clean image is classified), so the paper's parentheses stand alone.")
UNDER_REFERENCE = (
    "These rows have no counterpart in ours: the paper's numbers, as printed. Our `none` "
    "(the untuned base under smoothing) is not Cohen et al.'s noise-trained ResNet nor any "
    "of these defenses, so it is not set beside them.")
BELOW = "‡"  # a printed parenthesis below its own certified value

_TABLE1_COLUMNS = ["paper row", "category", "method", "column", "paper radius", "paper %",
                   "paper (x) %", "paper cell", "radius", "ours %", "ours % at r=0",
                   "ours - paper", "source"]


def table1_comparison(dataset: str, runs: Runs) -> pd.DataFrame:
    """One row per (paper row, column) of Table 1, every row of it: the paper's cell as
    printed and parsed, ours at r = column (and at r = 0) from our run at sigma = column
    where the row has a counterpart in ours, and ours minus the paper's at r = column."""
    table = _table1(dataset)
    _table1(dataset)
    compared = compared_methods(dataset)
    for method, sigma, _ in runs:
        if method not in compared:
            raise PeftsError(f"--run {method} {sigma:g} is in no row of the paper's tables"
                             f"{closest(method, compared)}: they compare "
                             f"{', '.join(sorted(compared))}")
    ours = _by_run(runs)
    rows = []
    for row in table.rows.values():
        for column in table.columns:
            cell = row.cells[column]
            frame = ours.get((row.method, round(column, 6))) if row.method else None
            mine = _percent(frame, column)
            paper = None if cell is None else cell.certified
            rows.append({
                "paper row": row.label, "category": row.category, "method": row.method,
                "column": column,
                "paper radius": "r = column" if row.radius_stated else "not stated",
                "paper %": paper, "paper (x) %": None if cell is None else cell.parenthesized,
                "paper cell": "" if cell is None else cell.printed, "radius": column,
                "ours %": mine, "ours % at r=0": _percent(frame, 0.0),
                "ours - paper": None if paper is None or mine is None else mine - paper,
                "source": (cell.source if cell is not None else
                           f"Table 1, row {row.label}: empty in the paper; {TRANSCRIBED}"),
            })
    return pd.DataFrame(rows, columns=_TABLE1_COLUMNS)


def figure7_comparison(dataset: str, runs: Runs) -> pd.DataFrame:
    """Figure 7's two numbers (CIFAR-10, sigma 0.25; the text states no radius) beside our
    black box and denoiser at that sigma, at r = 0 and at r = 0.25. Empty on another
    dataset."""
    _table1(dataset)
    if dataset != FIGURE7_DATASET:
        return pd.DataFrame(columns=_TABLE1_COLUMNS)
    ours = _by_run(runs)
    rows = []
    for value in FIGURE7.values():
        frame = ours.get((value.method, round(FIGURE7_SIGMA, 6)))
        mine = _percent(frame, FIGURE7_SIGMA)
        rows.append({"paper row": value.label, "category": "Figure 7", "method": value.method,
                     "column": FIGURE7_SIGMA, "paper radius": "not stated",
                     "paper %": value.percent, "paper (x) %": None, "paper cell": value.printed,
                     "radius": FIGURE7_SIGMA, "ours %": mine,
                     "ours % at r=0": _percent(frame, 0.0),
                     "ours - paper": None if mine is None else mine - value.percent,
                     "source": value.source})
    return pd.DataFrame(rows, columns=_TABLE1_COLUMNS)


def table2_comparison(parameters: pd.DataFrame) -> pd.DataFrame:
    """Every count of the paper's Table 2 (and the adapter's count in its text) beside our
    trainable parameters from `pefts parameters`' TSV; ours empty where we did not run it."""
    missing = {"method", "trainable"} - set(parameters.columns)
    if missing:
        raise PeftsError(f"the parameter table lacks column(s) {', '.join(sorted(missing))} "
                         "(expected `pefts parameters`' TSV)")
    ours = dict(zip(parameters["method"], parameters["trainable"], strict=True))
    rows = [{"paper row": count.label, "method": count.method, "paper cell": count.printed,
             "paper": count.parameters, "ours": ours.get(count.method),
             "ours / paper": (ours[count.method] / count.parameters
                              if count.method in ours else None),
             "source": count.source}
            for count in [*TABLE2.values(), *TABLE2_TEXT.values()]]
    return pd.DataFrame(rows, columns=["paper row", "method", "paper cell", "paper", "ours",
                                       "ours / paper", "source"])


def comparison_markdown(dataset: str, table1: pd.DataFrame, table2: pd.DataFrame,
                        note: str, figure7: pd.DataFrame | None = None) -> str:
    """The comparisons as a reader pastes them, each with what it compares: Table 1's rows
    with a counterpart in ours (prior work at r = column; the PEFT rows at r = 0 and at
    r = column), its reference rows as printed, Figure 7, Table 2 and the text's numbers."""
    prior = table1[(table1["category"] != "PEFT") & table1["method"].notna()]
    peft = table1[table1["category"] == "PEFT"]
    reference = table1[table1["method"].isna()]
    parts = [f"# Against the paper ({dataset})\n",
             f"Cited: {SOURCE}, {TRANSCRIBED} (`pefts/reporting/paper_values.py`). "
             f"{note[0].upper()}{note[1:]}.\n",
             "## Table 1, prior work with a counterpart in ours: certified accuracy (%) at "
             "r = column\n",
             _markdown(pd.DataFrame({
                 "paper row": prior["paper row"], "ours": prior["method"],
                 "column": _columns(prior), "paper": _printed(prior, 0),
                 "paper clean": _printed(prior, 1), "ours at r = column": _ours(prior, "ours %"),
                 "ours - paper": [_fmt(v, "+.1f", "no run") for v in prior["ours - paper"]]})),
             "", UNDER_TABLE1, "", NO_CLEAN, "",
             "## Table 1, the paper's PEFT rows: certified accuracy (%), radius not stated\n",
             _markdown(pd.DataFrame({
                 "paper row": peft["paper row"], "ours": peft["method"],
                 "column": _columns(peft), "paper": _printed(peft, 0),
                 "paper (parentheses)": _printed(peft, 1),
                 "ours at r = 0": _ours(peft, "ours % at r=0"),
                 "ours at r = column": _ours(peft, "ours %")})),
             "", UNDER_PEFT, "",
             "## Table 1, reference rows (no counterpart in ours), as printed\n",
             _reference_markdown(reference), "", UNDER_REFERENCE, "",
             "Notes on Table 1, kept as printed:\n", _notes(dataset),
             f"- {BELOW}: the printed parenthesis is below its own certified accuracy."]
    if figure7 is not None and len(figure7):
        parts += ["", f"## Figure 7 (CIFAR-10, sigma {FIGURE7_SIGMA:g}): certified accuracy (%)\n",
                  _markdown(pd.DataFrame({
                      "paper": figure7["paper row"], "ours": figure7["method"],
                      "paper printed": figure7["paper cell"],
                      "paper %": [_fmt(v, ".1f") for v in figure7["paper %"]],
                      "ours at r = 0": _ours(figure7, "ours % at r=0"),
                      f"ours at r = {FIGURE7_SIGMA:g}": _ours(figure7, "ours %")})),
                  "", "The text gives these as top-1 certified accuracy without a radius: "
                  f"ours is shown at r = 0 and at r = {FIGURE7_SIGMA:g}."]
    parts += ["", "## Table 2: trainable parameters (base classifier ViT-B/16)\n",
              _markdown(pd.DataFrame({
                  "paper": table2["paper row"], "ours": table2["method"],
                  "paper printed": table2["paper cell"],
                  "paper count": [_count(v) for v in table2["paper"]],
                  "ours count": [_count(v, "not in this run") for v in table2["ours"]],
                  "ours / paper": [_fmt(v, ".3f", "not in this run")
                                   for v in table2["ours / paper"]]})),
              "", "The paper rounds its counts to the digits printed.", "",
              "## The paper's text\n", *[f"- {where}: {what}." for where, what in TEXT]]
    return "\n".join(parts) + "\n"


def _table1(dataset: str) -> Table1:
    if dataset not in TABLE1:
        raise PeftsError(f"the paper has no Table 1 for dataset {dataset!r}; "
                         f"it has {', '.join(sorted(TABLE1))}")
    return TABLE1[dataset]


def _by_run(runs: Runs) -> dict[tuple[str, float], pd.DataFrame]:
    return {(method, round(sigma, 6)): frame for method, sigma, frame in runs}


def _percent(frame: pd.DataFrame | None, radius: float) -> float | None:
    return None if frame is None else 100.0 * certified_accuracy(frame, radius)


def _printed(rows: pd.DataFrame, part: int) -> list[str]:
    """The certified value (part 0) or the parenthesis (part 1) exactly as printed."""
    shown = []
    for printed, certified, parenthesized in zip(rows["paper cell"], rows["paper %"],
                                                 rows["paper (x) %"], strict=True):
        if not printed:
            shown.append("(empty in the paper)")
            continue
        pieces = printed.removesuffix(")").split(" (")
        if part == 0:
            shown.append(pieces[0])
        elif len(pieces) < 2:
            shown.append("(none printed)")
        else:
            shown.append(pieces[1] + (f" {BELOW}" if parenthesized < certified else ""))
    return shown


def _columns(rows: pd.DataFrame) -> list[str]:
    return [f"{c:.2f}" for c in rows["column"]]  # as the paper's header prints them


def _ours(rows: pd.DataFrame, column: str) -> list[str]:
    return [_fmt(v, ".1f", "no run") for v in rows[column]]


def _reference_markdown(rows: pd.DataFrame) -> str:
    columns = list(dict.fromkeys(rows["column"]))
    wide = {"category": [], "paper row": []} | {f"{c:.2f}": [] for c in columns}
    for label, group in rows.groupby("paper row", sort=False):
        wide["category"].append(group["category"].iloc[0])
        wide["paper row"].append(label)
        cells = dict(zip(group["column"], group["paper cell"], strict=True))
        marked = dict(zip(group["column"], _printed(group, 1), strict=True))
        for c in columns:
            below = f" {BELOW}" if marked[c].endswith(BELOW) else ""
            wide[f"{c:.2f}"].append(cells[c] + below if cells[c] else "(empty in the paper)")
    return _markdown(pd.DataFrame(wide))


def _notes(dataset: str) -> str:
    notes: dict[str, list[str]] = {}
    for row in _table1(dataset).rows.values():
        if row.note:
            notes.setdefault(row.note, []).append(row.label)
    return "\n".join(f"- {', '.join(who)}: {note}." for note, who in notes.items())


def _markdown(frame: pd.DataFrame) -> str:
    # the paper's cells stay as printed ("61.08", "1.00", "0.080"): no reparsing as numbers
    return frame.to_markdown(index=False, disable_numparse=True) if len(frame) else "(none)"


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or pd.isna(value) else format(value, spec)


def _count(value, missing: str = "-") -> str:
    return missing if value is None or pd.isna(value) else f"{int(round(value)):,}"
