"""`pefts.certify` on any torch classifier: the README's example runs as written, and
the API gives the rows `pefts certify` gives (same certifier, same noise)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import pefts
from pefts.errors import PeftsError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_example() -> str:
    """The indented code block of the README's section on the Python API."""
    section = README.split("## Certify your own classifier from Python", 1)[1].split("\n## ", 1)[0]
    lines = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    assert lines, "the README's Python API section has no code block"
    return "\n".join(lines) + "\n"


def test_the_readme_example_runs_on_cpu(capsys):
    code = readme_example()
    assert "pefts.certify(" in code and "torchvision.models" in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    rows = scope["rows"]
    assert isinstance(rows, pd.DataFrame) and len(rows) == len(scope["labels"])
    assert list(rows.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"n0", "n_used", "nA", "pA_lower"} <= set(rows.columns)
    assert (rows["radius"] >= 0).all() and rows["predict"].between(-1, 9).all()
    assert "radius" in capsys.readouterr().out


def test_api_rows_are_the_pipelines_rows(digits, tiny_base, none_model, tmp_path, run_cli):
    """Same model, images, seed and settings: `pefts certify` and `pefts.certify` agree."""
    from pefts.data import load_split
    from pefts.methods import load_model

    out = tmp_path / "cli.tsv"
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                           "--sigma", "0.5", "--n", "300", "--n0", "16", "--max", "6",
                           "--out", out)
    assert code == 0, err
    cli_rows = pd.read_csv(out, sep="\t")
    data = load_split(digits, "test")
    images = torch.stack([data[i][0] for i in range(6)])
    labels = [int(data[i][1]) for i in range(6)]
    net, _ = load_model(none_model, tiny_base, "cpu")
    api_rows = pefts.certify(net, images, labels, sigma=0.5, n=300, n0=16, adaptive=False)
    columns = ["idx", "label", "predict", "radius", "correct", "nA", "pA_lower"]
    pd.testing.assert_frame_equal(api_rows[columns], cli_rows[columns], check_dtype=False)


@pytest.mark.parametrize("bad, message", [
    (dict(images=torch.rand(3, 8, 8)), "images must be"),
    (dict(sigma=0.0), "sigma must be a finite float > 0"),
    (dict(n=5), "can never certify"),
    (dict(precision="fp64"), "precision must be"),
])
def test_api_refuses_bad_arguments_in_one_line(bad, message):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)).eval()
    args = dict(images=torch.rand(2, 3, 8, 8), labels=[0, 1], sigma=0.25, n=100)
    args.update(bad)
    with pytest.raises(PeftsError, match=re.escape(message)):
        pefts.certify(model, **args)
