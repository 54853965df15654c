"""Every number `plot-vs-sigma` and `parameters --summary` draw from a summary TSV goes
through the checked reader (`pefts.certification.results.check_summary`): a hand-edited or foreign file
is one line naming the cell, never a plot of a wrong number."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pefts.certification.results import check_summary, summarize
from pefts.errors import PeftsError


def summary(tmp_path) -> pd.DataFrame:
    frame = pd.DataFrame({"idx": [0, 1], "label": [1, 2], "predict": [1, -1],
                          "radius": [0.4, 0.0], "correct": [1, 0], "time": [0.1, 0.2]})
    table = summarize([("lora", 0.25, frame), ("none", 0.5, frame.iloc[:0])], [0.0, 0.25])
    path = tmp_path / "certified.tsv"
    table.to_csv(path, sep="\t", index=False)
    return pd.read_csv(path, sep="\t")


def test_a_summary_as_summarize_writes_it_passes(tmp_path):
    table = summary(tmp_path)
    assert table["r=0"].isna().iloc[1]  # the run of no images: NaN, which stays allowed
    check_summary(table, "certified.tsv")


@pytest.mark.parametrize(("column", "value"), [
    ("sigma", 0.0), ("sigma", -0.25), ("sigma", "x"), ("sigma", np.inf),
    ("r=0.25", 1.5), ("r=0", "81%"), ("r=0", -0.1), ("abstain", 2.0), ("r=0", np.nan),
    ("ACR", -1.0), ("ACR", np.inf), ("sec/img", "slow"),
])
def test_each_bad_cell_is_named_with_its_line(tmp_path, column, value):
    table = summary(tmp_path).astype(object)
    table.loc[0, column] = value
    with pytest.raises(PeftsError, match=rf"certified.tsv, line 2: {column} .* is not a number"):
        check_summary(table, "certified.tsv")


def test_the_cli_refuses_a_bad_summary_in_one_line(tmp_path, run_cli):
    table = summary(tmp_path)
    table.loc[0, "r=0"] = 1.5
    path = tmp_path / "bad.tsv"
    table.to_csv(path, sep="\t", index=False)
    code, _, err = run_cli("plot-vs-sigma", "--summary", path, "--out", tmp_path / "o.png")
    assert code != 0 and "line 2: r=0 1.5 is not a number in [0, 1]" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()
