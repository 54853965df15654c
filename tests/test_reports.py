"""Reports say what was run: sidecars, summaries and figures name the certification mode,
n, n0, alpha and precision; runs certified differently are refused side by side unless
--mixed; n and alpha that can never certify are refused with the smallest n that could."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.feasibility import smallest_certifying_n, smallest_predicting_n
from pefts.certification.pool import Pool
from pefts.certification.results import write_tsv
from pefts.certification.smoothing import Smooth

DATA = {"dataset": "digits", "class_subset": None, "split": "test", "manifest": "abc",
        "skip": 1, "max": -1}
FIXED = {**DATA, "command": "certify", "n0": 8, "n": 100, "alpha": 0.001, "seed": 0}
ADAPTIVE = {**FIXED, "adaptive": True, "n_max": 5000, "radii": [0.0, 0.5], "rtol": None,
            "precision": "fp32", "futility": 0.05}


def certified_tsv(path, sigma: float, settings: dict) -> str:
    frame = pd.DataFrame({"idx": [0, 1, 2], "label": [1, 2, 3], "predict": [1, -1, 3],
                          "radius": [0.3, 0.0, 0.6], "correct": [1, 0, 1], "time": [0.1] * 3})
    write_tsv(frame, path, {**settings, "sigma": sigma})
    return str(path)


def test_sidecar_says_how_it_was_certified(tmp_path):
    certified_tsv(tmp_path / "f.tsv", 0.5, FIXED)
    fixed = json.loads((tmp_path / "f.tsv.json").read_text())
    assert fixed["certification"] == {"mode": "fixed", "n0": 8, "n": 100, "alpha": 0.001,
                                      "precision": "fp32", "stop": "", "sound": False}
    certified_tsv(tmp_path / "a.tsv", 0.5, {**ADAPTIVE, "precision": "bf16"})
    adaptive = json.loads((tmp_path / "a.tsv.json").read_text())["certification"]
    assert adaptive == {"mode": "adaptive", "n0": 8, "n": 5000, "alpha": 0.001,
                        "precision": "bf16", "stop": "grid 0,0.5", "sound": False}


@pytest.mark.parametrize("settings, caption", [
    (FIXED, "Certified: fixed n = 100, n0 8, alpha 0.001, fp32."),
    (ADAPTIVE, "Certified: adaptive (n_max 5000, stops on grid 0,0.5: radii truncated between "
               "grid points), n0 8, alpha 0.001, fp32."),
    ({**ADAPTIVE, "rtol": 0.05}, "Certified: adaptive (n_max 5000, rtol 0.05), n0 8, alpha 0.001, fp32."),
    ({**FIXED, "sound": True}, "Certified: fixed n = 100, n0 8, alpha 0.001, fp32, sound (8-bit "
                               "images, discretised noise)."),
])
def test_summary_carries_the_mode(run_cli, tmp_path, settings, caption):
    a = certified_tsv(tmp_path / "a.tsv", 0.5, settings)
    b = certified_tsv(tmp_path / "b.tsv", 0.5, settings)
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, "--run", "lora", "0.5", b,
                           "--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    expected_mode = "adaptive" if settings.get("adaptive") else "fixed"
    assert set(table["mode"]) == {expected_mode} and set(table["alpha"]) == {0.001}
    assert set(table["n"]) == {5000 if settings.get("adaptive") else 100}
    assert set(table["precision"]) == {"fp32"} and set(table["n0"]) == {8}
    assert (tmp_path / "s.md").read_text().rstrip().endswith(caption)


@pytest.mark.parametrize("first, other, differs", [
    (FIXED, ADAPTIVE, "mode"),
    (FIXED, {**FIXED, "alpha": 0.01}, "alpha"),
    (FIXED, {**FIXED, "precision": "bf16", "channels_last": False}, "precision"),
    (FIXED, {**FIXED, "n": 1000}, "n"),
    # the same mode, n, n0, alpha and precision, another stopping rule
    (ADAPTIVE, {**ADAPTIVE, "radii": [0.0, 0.25, 0.5]}, "stop"),
    (ADAPTIVE, {**ADAPTIVE, "rtol": 0.05}, "stop"),
])
def test_mixing_modes_is_refused_unless_asked(run_cli, tmp_path, first, other, differs):
    a = certified_tsv(tmp_path / "a.tsv", 0.5, first)
    b = certified_tsv(tmp_path / "b.tsv", 0.5, other)
    runs = ["--run", "none", "0.5", a, "--run", "lora", "0.5", b]
    for command, outs in (("summarize", ["--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md"]),
                          ("plot", ["--out", tmp_path / "f.png"])):
        code, _, err = run_cli(command, *runs, *outs)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, err
        assert "certified differently" in lines[0] and differs in lines[0]
        assert a in lines[0] and b in lines[0] and "--mixed" in lines[0]
        assert not any(tmp_path.glob("s.*")) and not (tmp_path / "f.png").exists()
    code, _, err = run_cli("summarize", *runs, "--mixed", "--out-tsv", tmp_path / "s.tsv",
                           "--out-md", tmp_path / "s.md")
    assert code == 0, err
    markdown = (tmp_path / "s.md").read_text()
    assert "| certified" in markdown and "mixed" in markdown
    assert run_cli("plot", *runs, "--mixed", "--out", tmp_path / "f.png")[0] == 0


def test_figures_carry_a_footnote(tmp_path, monkeypatch):
    import matplotlib.figure

    texts: list[str] = []
    original = matplotlib.figure.Figure.text

    def spy(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "text", spy)
    from pefts.certification.results import certification_note, with_certification
    from pefts.reporting.plots import plot_against_sigma, plot_certified_curves

    frame = pd.read_csv(certified_tsv(tmp_path / "a.tsv", 0.5, ADAPTIVE), sep="\t")
    plot_certified_curves([("lora", frame)], "t", tmp_path / "c.png", "certified: adaptive x")
    summary = with_certification(pd.DataFrame({"method": ["lora"], "sigma": [0.5], "ACR": [0.2]}),
                                 [{"mode": "adaptive", "n0": 8, "n": 5000, "alpha": 0.001,
                                   "precision": "fp32", "stop": "grid 0,0.5", "sound": False}])
    plot_against_sigma(summary, ["ACR"], "t", tmp_path / "s.png", certification_note(summary))
    assert "certified: adaptive x" in texts
    assert any(t.startswith("certified: adaptive (n_max 5000") for t in texts), texts


# --- n and alpha that can never certify ---------------------------------------------------------

# written down by hand: alpha ** (1/n) >= 1/2 first at these n (0.001 ** (1/9) = 0.464,
# 0.001 ** (1/10) = 0.501); PREDICT: 2 * 0.5 ** n <= alpha
SMALLEST = [(0.001, 10, 11), (0.01, 7, 8), (0.05, 5, 6), (1e-6, 20, 21), (0.5, 1, 2)]


@pytest.mark.parametrize("alpha, certify_n, predict_n", SMALLEST)
def test_smallest_n_by_hand(alpha, certify_n, predict_n):
    assert smallest_certifying_n(alpha) == certify_n
    assert smallest_predicting_n(alpha) == predict_n
    assert smallest_certifying_n(alpha, adaptive=True) >= certify_n  # the looks share alpha


class Constant(nn.Module):
    """Always class 0: every noisy sample is a hit."""

    def forward(self, x):
        return torch.zeros(len(x), 3).index_fill_(1, torch.tensor([0]), 1.0)


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_the_boundary_is_the_certifiers_own(alpha):
    """At the smallest n the certifier certifies a constant classifier; one fewer it abstains."""
    x = torch.zeros(1, 2, 2)
    smooth = Smooth(Constant().eval(), 3, 0.5)
    n = smallest_certifying_n(alpha)
    assert smooth.certify(x, 1, n, alpha, 64)[0] == 0
    if n > 1:
        assert smooth.certify(x, 1, n - 1, alpha, 64)[0] == Smooth.ABSTAIN
    n_max = smallest_certifying_n(alpha, adaptive=True)
    for budget, certifies in ((n_max, True), (n_max - 1, False)):
        if budget < 1:
            continue
        plan = AdaptivePlan(0.5, alpha, budget, (0.0,))
        row = next(iter(Pool(Constant().eval(), 3, plan, 1, 0, "cpu", 64, 1).run([(0, x, 0)])))
        assert (row.prediction == 0) == certifies, (budget, row)


@pytest.mark.parametrize("args, needle", [
    (["--n", "9"], "--n 9 at alpha 0.001 can never certify"),
    (["--n", "20", "--alpha", "0.00000001"], "the smallest --n that could is 27"),
    # up to 50 samples the adaptive sampler has one look with the whole alpha: fixed n's limit
    (["--adaptive", "--n", "9"], "the smallest --n that could is 10"),
    (["--adaptive", "--n", "5000", "--n-max", "9"], "--n-max 9"),
])
def test_certify_refuses_n_that_cannot_certify(run_cli, tmp_path, args, needle):
    out = tmp_path / "o.tsv"
    code, _, err = run_cli("certify", "--model", "m.safetensors", "--base", "b", "--data", "d",
                           "--sigma", "0.5", *args, "--out", out)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


def test_predict_refuses_n_that_cannot_predict(run_cli, tmp_path):
    code, _, err = run_cli("predict", "--model", "m", "--base", "b", "--data", "d", "--sigma",
                           "0.5", "--n", "10", "--out", tmp_path / "o.tsv")
    assert code == 1 and "the smallest --n that could is 11" in err


def test_certification_commands_do_not_depend_on_the_summary_radii(tmp_path):
    """The adaptive grid is certify.grid: a new reporting radius leaves every certify
    command (what Snakemake compares to decide a rerun) unchanged."""
    from tests.test_workflow import snakemake

    commands = []
    for radii in ([0.0, 0.5], [0.0, 0.5, 1.5]):
        overlay = tmp_path / "overlay.yaml"
        overlay.write_text(f"results: {tmp_path}/r\nsummary: {{radii: {radii}}}\n")
        result = snakemake("-n", "-p", "--cores", "1", "--configfile", "config.yaml", str(overlay))
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in (result.stdout + result.stderr).splitlines()
                 if "pefts certify" in line]
        assert lines and all("--adaptive" in line and "--grid 0.0,0.25,0.5,0.75,1.0" in line
                              for line in lines)
        commands.append(sorted(lines))
    assert commands[0] == commands[1]
