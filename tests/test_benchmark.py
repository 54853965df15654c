"""`pefts benchmark`: the table's shape and the Cohen-style yardstick's counts (not timings)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from pefts.benchmarks.throughput import (
    COLUMNS,
    ROWS,
    batch_sizes,
    builtin_subject,
    cohen_sample_counts,
    count_arr,
)
from pefts.smoothing import Smooth
from tests.test_smoothing import Constant


@pytest.fixture
def keep_threads():
    # --threads sets torch's process-wide thread count; later tests must not inherit it
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_benchmark_prints_table_and_writes_tsv(run_cli, tmp_path, keep_threads):
    out, page = tmp_path / "bench.tsv", tmp_path / "bench.md"
    code, stdout, err = run_cli("benchmark", "--n", "60", "--n0", "5", "--batch", "25",
                                "--repeats", "2", "--threads", "1", "--device", "cpu",
                                "--out", out, "--out-md", page)
    assert code == 0, err
    # the page is what was printed, headed by the command that printed it
    head, printed = page.read_text().split("\n\n", 1)
    assert head.startswith("Written by `pefts benchmark --n 60 --n0 5 --batch 25 --repeats 2 ")
    assert printed == stdout
    assert "device: cpu" in stdout and "torch threads: 1" in stdout
    assert "certifier/raw forward = " in stdout and "certifier/Cohen-style = " in stdout
    assert "s/image" in stdout.strip().splitlines()[-1]
    for row in ROWS:
        assert f"| {row}" in stdout
    table = pd.read_csv(out, sep="\t")
    assert tuple(table.columns) == COLUMNS
    assert tuple(table["measure"]) == ROWS
    assert list(table["samples"]) == [60, 60, 60, 65, 65, 65]
    assert "sound/standard certifier = " in stdout
    for column in ("best_s", "median_s", "samples_per_s", "vs_raw_forward"):
        assert all(math.isfinite(v) and v > 0 for v in table[column]), column
    assert (table["best_s"] <= table["median_s"]).all()


@pytest.mark.parametrize("args, needle", [
    (("--model", "m.safetensors"), "--model and --base together"),
    (("--image-size", "8"), "--image-size"),
    (("--n", "0"), "--n"),
])
def test_benchmark_refuses_bad_input(run_cli, args, needle):
    code, _, err = run_cli("benchmark", "--device", "cpu", *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


def test_batch_schedule_matches_sample_counts():
    assert batch_sizes(10, 4) == [4, 4, 2]
    assert batch_sizes(8, 4) == [4, 4]
    assert batch_sizes(3, 10) == [3]


def test_count_arr_is_bincount():
    arr = np.array([0, 2, 2, 1, 2])
    assert count_arr(arr, 4).tolist() == np.bincount(arr, minlength=4).tolist()


def test_cohen_loop_counts_equal_sample_counts_on_constant():
    x = torch.rand(3, 4, 4)
    got = cohen_sample_counts(Constant(2, 3), x, 37, 10, 0.5, 3)
    want = Smooth(Constant(2, 3), 3, 0.5).sample_counts(x, 37, 10)
    assert got.tolist() == want.tolist() == [0, 0, 37]


def test_cohen_loop_sees_the_same_noise_as_sample_counts():
    # A real ViT whose counts depend on the noise: equal counts mean identical noise.
    subject = builtin_subject(torch.device("cpu"))
    smooth = Smooth(subject.net, subject.num_classes, 1.0)
    torch.manual_seed(123)
    want = smooth.sample_counts(subject.x, 90, 40).tolist()
    torch.manual_seed(123)
    got = cohen_sample_counts(subject.net, subject.x, 90, 40, 1.0, subject.num_classes).tolist()
    assert got == want and sum(got) == 90
    assert sum(c > 0 for c in got) > 1, "noise does not move the prediction; test is vacuous"


def test_benchmark_builds_a_named_random_model_with_lora_in_bf16(run_cli, keep_threads):
    # timm's test_vit: a named ViT small enough for bf16 on a CPU without bf16 units, whose
    # reference path took 97 s for ViT-Tiny at 224 px
    code, stdout, err = run_cli("benchmark", "--arch", "test_vit", "--method", "lora",
                                "--image-size", "160", "--precision", "bf16", "--merge-lora",
                                "--n", "8", "--n0", "2", "--batch", "4", "--repeats", "1",
                                "--threads", "1", "--device", "cpu")
    assert code == 0, err
    assert "test_vit (lora, random weights)" in stdout and "bf16" in stdout


def test_benchmark_adaptive_prints_both_runs_side_by_side(run_cli, digits, tiny_base, none_model,
                                                          tmp_path):
    out = tmp_path / "cmp.tsv"
    code, stdout, err = run_cli("benchmark-adaptive", "--model", none_model, "--base", tiny_base,
                                "--data", digits, "--sigma", "0.25", "--n", "400", "--n0", "8",
                                "--max", "3", "--skip", "50", "--seeds", "0,1", "--device", "cpu",
                                "--out", out, "--out-md", tmp_path / "cmp.md")
    assert code == 0, err
    head, printed = (tmp_path / "cmp.md").read_text().split("\n\n", 1)
    assert head.startswith("Written by `pefts benchmark-adaptive --model ") and printed == stdout
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == ["measure", "fixed n seed 0", "fixed n seed 1", "adaptive"]
    passes = table.set_index("measure").loc["forward passes"]
    # counted at the network's input: n0 + n per image, plus the certifier's one batch
    # independence probe (4 noisy samples as a batch and one by one)
    assert passes["fixed n seed 0"] == 3 * (8 + 400) + 8
    assert passes["adaptive"] <= passes["fixed n seed 0"]
    assert "passes fixed/adaptive" in stdout and "fixed seed vs seed" in stdout
    assert "union-bound CP" in stdout and "betting" in stdout


def test_sequences_simulated_on_the_same_hits_stop_by_the_same_rule():
    from pefts.benchmarks.adaptive import simulate_sequences
    from pefts.certification.adaptive import AdaptivePlan

    plan = AdaptivePlan(0.5, 0.001, 20_000, (0.0, 0.5, 1.0))
    table = simulate_sequences([1.0, 0.3, 0.75], plan).set_index(["image", "sequence"])
    for sequence in ("union-bound CP", "betting"):
        sure, hopeless, middle = (table.loc[(i, sequence)] for i in range(3))
        # all hits: certifies 2 sigma (the last grid radius) within about 600 + a look or two
        assert sure["samples"] < 1200 and sure["radius"] >= 1.0
        # clearly abstains within a look or two of where futility may act
        assert hopeless["samples"] <= max(plan.futility_from, plan.looks.counts[1]) * 1.2
        assert hopeless["radius"] == 0.0
        # p = 0.75: true radius 0.337; settles r = 0.5 as out of reach, never claims more
        assert middle["radius"] <= 0.5 * norm.ppf(0.75) and middle["samples"] < 20_000
