"""`pefts plan`: jobs, forward passes and GPU-hours of a config before it runs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pefts.certification.adaptive import AdaptivePlan
from pefts.errors import PeftsError
from pefts.study.experiments import Study, load_config
from pefts.study.forward_cost import RECORDED, count_forward, forward_key, record
from pefts.study.plan import (
    PATH_RATES,
    cost_table,
    dag_cost_pairs,
    dag_packs,
    dag_pairs,
    dry_run,
    hit_rates,
    pair_hours,
    protocols,
    reference_gflop,
    replay_samples,
    rule_counts,
    sigma_hit_rates,
)

CIFAR = "configs/cifar10-vitb16.yaml"


@pytest.fixture(scope="module")
def cifar_all():
    """The CIFAR-10 preset, its dry run of `all` and the (run, sigma) pairs it certifies."""
    config = load_config([CIFAR])
    output = dry_run((CIFAR,), "all")
    return config, output, dag_cost_pairs(config, dag_pairs(output), None, dag_packs(output))


def test_fixed_n_passes_are_exact_and_hours_follow_each_methods_cost(cifar_all):
    config, output, pairs = cifar_all
    jobs = rule_counts(output)
    assert len(pairs) == len(config["methods"]) * len(config["sigmas"]) == 36
    assert jobs["finetune"] == 36 and jobs["merge_shards"] == 36
    assert {p.images for p in pairs} == {500}  # every 20th of CIFAR-10's 10,000 test images
    reference = reference_gflop()
    cohen, fixed_bf16, adaptive = protocols(config, {s: (1000.0, "") for s in (0.25, 0.5, 0.75, 1.0)},
                                            None, None)
    # each on its own path: Cohen's fp32, and the preset's merged and compiled LoRA
    assert cohen.rate("lora")[0] == 1187 and "measured" in cohen.rate("lora")[1]
    assert fixed_bf16.rate("lora") == PATH_RATES["bf16 compiled"]
    assert fixed_bf16.rate("none") == PATH_RATES["bf16 compiled"]
    assert fixed_bf16.rate("adapter") == PATH_RATES["bf16"]  # side branches stay unmerged
    # the certifier does not compile these: their eager rate
    assert fixed_bf16.rate("blackbox") == fixed_bf16.rate("diffusion") == PATH_RATES["bf16 plain"]
    by = {(p.run, p.sigma): p for p in pairs}
    lora, prompt, blackbox = by["lora", 0.5], by["prompt", 0.5], by["blackbox", 0.5]
    # the measured network at the measured rate, exactly
    assert pair_hours(lora, fixed_bf16, reference) == pytest.approx(500 * 100_100 / 10695 / 3600)
    assert pair_hours(lora, adaptive, reference) == pytest.approx(500 * 1100 / 10695 / 3600)
    assert pair_hours(lora, cohen, reference) == pytest.approx(500 * 100_100 / 1187 / 3600)
    # 100 prompt tokens in every layer: 297 tokens instead of 197, about 1.5x the FLOPs
    assert prompt.gflop / lora.gflop == pytest.approx(1.53, abs=0.02)
    # the black box runs an MAE ViT-B/16 encoder and CLIP's ViT-B/16: about twice the work
    assert blackbox.gflop / lora.gflop > 1.8
    for method in ("denoiser", "sunet", "diffusion"):  # their own networks in front
        assert by[method, 0.5].gflop > by["none", 0.5].gflop
    hours = {p.run: pair_hours(p, fixed_bf16, reference) for p in pairs if p.sigma == 0.5}
    assert hours["prompt"] / hours["lora"] == pytest.approx(prompt.gflop / lora.gflop)
    table = cost_table(pairs, [cohen, fixed_bf16], reference, startup_hours=2.0)
    assert table["(run, sigma)"].tolist() == [36, 36]
    assert float(table["GPU-hours"][1].replace(",", "")) == pytest.approx(
        sum(pair_hours(p, fixed_bf16, reference) for p in pairs) + 2.0, abs=0.06)


def test_recorded_forward_costs_are_what_the_code_counts():
    # the table in the package must not drift from what its code counts; the black box
    # (two ViT-B/16 built on the CPU) is left to the slow test below
    config = load_config([CIFAR])
    for method in ("lora", "prompt", "denoiser", "diffusion"):
        hparams = config["method_params"][method].get("hparams", {})
        assert RECORDED[forward_key(config, method, hparams)] == pytest.approx(
            count_forward(config, method, hparams).gflop, abs=1e-3)


@pytest.mark.slow
def test_every_recorded_forward_cost_is_recounted():
    assert record([load_config([CIFAR]), load_config(["configs/imagenet-vitb16.yaml"])]) == RECORDED


def test_experiments_count_the_pairs_the_dag_has(run_cli):
    config = load_config([CIFAR])
    output = dry_run((CIFAR,), "experiments")
    jobs, pairs, packs = rule_counts(output), dag_pairs(output), dag_packs(output)
    # every (run, sigma) the DAG certifies is merged once, whatever its shard count
    assert len(pairs) == jobs["merge_shards"] == jobs["finetune"] == 59
    # shards sized by their work (certify.shards: auto), as Study.shards says; the sigmas
    # of a run that fit one shard packed into jobs as Study.packs says, one rule each
    study = Study(config)
    assert all(count == study.shards(run, sigma) for (run, sigma), count in pairs.items())
    assert sorted(packs) == study.packs() and jobs["certify_packed"] == len(packs) == 13
    packed = {(run, sigma) for run, sigmas in packs for sigma in sigmas}
    assert sum(n for pair, n in pairs.items() if pair not in packed) == jobs["certify_shard"]
    costed = dag_cost_pairs(config, pairs, None, packs)
    assert {p.images for p in costed if p.run.startswith(("oneround", "tworound"))} == {250}
    # the command counts the same: 51 pairs by shard arithmetic, 59 in the DAG
    code, stdout, err = run_cli("plan", "--configfile", CIFAR, "--target", "experiments",
                                "--passes-per-image", "5000")
    assert code == 0, err
    assert f"59 (run, sigma) certified (from the DAG), {sum(p.images for p in costed):,} images" in stdout


def test_hit_rates_from_counts_or_from_radii(tmp_path):
    p = np.array([0.6, 0.9, 0.999, 0.3])
    counts = tmp_path / "counts.tsv"
    pd.DataFrame({"idx": range(4), "nA": (p * 1000).astype(int), "n": 1000}).to_csv(
        counts, sep="\t", index=False)
    assert hit_rates(counts, None, None) == pytest.approx(p)
    radii = tmp_path / "radii.tsv"
    radius = np.where(p > 0.5, 0.25 * norm.ppf(p), 0.0)  # Cohen's columns only
    pd.DataFrame({"idx": range(4), "label": 0, "predict": [0, 0, 0, -1], "radius": radius,
                  "correct": [1, 1, 1, 0], "time": 1.0}).to_csv(radii, sep="\t", index=False)
    # pA_lower = Phi(radius / sigma); an abstention known only by radius 0 replays at 0.5
    assert hit_rates(radii, None, 0.25) == pytest.approx([0.6, 0.9, 0.999, 0.5])
    with pytest.raises(PeftsError, match="--replay-sigma"):
        hit_rates(radii, None, None)
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tfoo\n0\t1\n")
    with pytest.raises(PeftsError, match="neither nA nor radius"):
        hit_rates(bad, None, None)


def test_replay_follows_the_certifiers_stopping_rule():
    plan = AdaptivePlan(0.5, 0.001, 100_000, (0.0, 0.5, 1.0))
    used = replay_samples(np.array([1.0, 0.999, 0.95, 0.5]), plan)
    assert np.all(used <= plan.n_max) and np.all(np.isin(used, plan.looks.counts))
    assert used[0] < 2000  # an image the classifier always gets right stops early
    # the same run, look by look, with the certifier's own rule and always-hit samples
    lower, expected = 0.0, None
    for k, t in enumerate(plan.looks.counts):
        lower, stop = plan.look(k, t, lower)
        if stop:
            expected = t
            break
    assert used[0] == expected


def test_replay_per_sigma(tmp_path):
    p = np.array([0.6, 0.9, 0.999, 0.5])
    files = {}
    for sigma in (0.25, 0.5):
        files[sigma] = tmp_path / f"sigma_{sigma}"
        radius = np.where(p > 0.5, sigma * norm.ppf(p - (0.05 if sigma == 0.25 else 0)), 0.0)
        pd.DataFrame({"idx": range(4), "label": 0, "predict": 0, "radius": radius,
                      "correct": 1, "time": 1.0}).to_csv(files[sigma], sep="\t", index=False)
    both = sigma_hit_rates([0.25, 0.5, 1.0], [(files[0.25], 0.25), (files[0.5], 0.5)], None)
    assert both[0.5][0] == pytest.approx(p)  # each sigma its own replay...
    assert both[0.25][0][:3] == pytest.approx(p[:3] - 0.05)
    # ...and a sigma without one scaled from the nearest, each image keeping its radius
    assert both[1.0][0] == pytest.approx(norm.cdf(norm.ppf(p) * 0.5))
    assert "scaled" in both[1.0][1] and "scaled" not in both[0.5][1]
    one = sigma_hit_rates([0.25, 0.5], [(files[0.5], 0.5)], None)
    assert one[0.25][0] == pytest.approx(norm.cdf(norm.ppf(p) * 2))  # not sigma 0.5's rates
    assert one[0.25][0][1] > 0.99 > p[1]


def test_plan_command_writes_the_cost_table(run_cli, tmp_path):
    out = tmp_path / "cost.md"
    code, stdout, err = run_cli("plan", "--configfile", CIFAR, "--passes-per-image", "4667",
                                "--out-md", str(out))
    assert code == 0, err
    text = out.read_text()
    assert "certify_packed" in stdout and "GPU-hours" in text and "start-up" in text
    # one job per run: the 36 (run, sigma) of the main comparison in 9 jobs
    assert "in 9 jobs (9 of them packing 36 sigmas several to a job)" in stdout
    assert "| adaptive, n_max = 100,000, bf16, merged LoRA, compiled" in text
    assert "10,695/s measured, H200" in text and "FLOPs counted by code" in text
    assert "9,292/s measured, H200" in text  # the black box and diffusion: not compiled
    assert "Whole study:" in text and "| **total**" in text and "### Training" in text
    code, stdout, err = run_cli("plan", "--configfile", CIFAR, "--startup-s", "0")
    # without a replay or a stated figure: the default model, named
    assert code == 0 and "default model: Cohen et al.'s cifar10/resnet110 log" in stdout
    assert "0.00 start-up" in stdout
    tsv = tmp_path / "r.tsv"
    tsv.write_text("idx\tradius\n0\t0.5\n")
    code, _, err = run_cli("plan", "--configfile", CIFAR, "--replay", str(tsv))
    assert code == 1 and err.count("\n") == 1 and "--replay-sigma" in err


@pytest.mark.slow  # three plans, each its own dry run
def test_plan_replays_on_certify_grid_not_on_the_summary_radii(run_cli, tmp_path):
    """The certifier stops on certify.grid; summary.radii only reports. Their defaults are
    equal, so the configs here set them apart: a new reporting radius leaves the plan as
    it was, another grid changes it."""
    replay = tmp_path / "replay.tsv"
    p = np.linspace(0.55, 0.999, 40)
    pd.DataFrame({"idx": range(40), "nA": np.round(p * 1000).astype(int), "n": 1000}).to_csv(
        replay, sep="\t", index=False)

    def planned(overlay: str) -> str:
        extra = tmp_path / "overlay.yaml"
        extra.write_text(overlay)
        code, out, err = run_cli("plan", "--configfile", "config.yaml", "--configfile", extra,
                                 "--test-images", "20", "--replay", replay,
                                 "--replay-sigma", "0.5")
        assert code == 0, err
        return out.replace(str(extra), "overlay")

    same = planned("certify: {adaptive: true}\n")
    assert planned("certify: {adaptive: true}\nsummary: {radii: [0.0, 2.5]}\n") == same
    assert planned("certify: {adaptive: true, grid: [0.0, 2.5]}\n") != same


@pytest.mark.parametrize("text, needle", [
    ("", "cannot read"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n", "has no rows"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tnan\t1\t0.1\n", "row 1: radius 'nan'"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.2\t1\t0.1\n1\t1\t1\t-0.5\t1\t0.1\n",
     "row 2: radius '-0.5'"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tinf\t1\t0.1\n", "row 1: radius 'inf'"),
    ("idx\tnA\tn\n0\tnan\t100\n", "row 1: nA 'nan'"),
    ("idx\tnA\tn\n0\t5\t0\n", "row 1: n '0'"),
])
def test_a_replay_without_usable_hit_rates_is_refused(tmp_path, text, needle):
    """A nan radius used to replay as p = 1/2 (an abstention), a negative one too."""
    tsv = tmp_path / "replay.tsv"
    tsv.write_text(text)
    with pytest.raises(PeftsError, match=needle):
        hit_rates(tsv, None, 0.5)


def test_plan_refuses_a_nan_radius_in_a_process_of_its_own(tmp_path):
    from tests.test_cli_errors import error_line, pefts_process

    tsv = tmp_path / "replay.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tnan\t1\t0.1\n")
    result = pefts_process("plan", "--configfile", CIFAR, "--replay", tsv, "--replay-sigma", "0.5")
    error_line(result, "row 1: radius 'nan' must be a finite number >= 0")


@pytest.mark.parametrize("preset,steps", [("configs/imagenet-vitb16.yaml", 62_500),
                                          (CIFAR, 5_000)])
def test_blackbox_training_hours_count_blackvips_queries(preset, steps):
    """Per SPSA step and image: 2 x SP_AVG = 10 CLIP queries and one encoder pass."""
    from pefts.study.plan import blackbox_training

    config = load_config([preset])
    [row] = blackbox_training(config).to_dict("records")
    sigmas = len(config["sigmas"])
    assert (row["run"], row["sigmas"], row["SPSA steps"], row["batch"]) == ("blackbox", sigmas, steps, 128)
    assert row["ViT-B/16 forwards"] == sigmas * steps * 128 * 11
    # CLIP and the MAE encoder are plain ViT-B/16s: the plain network's measured rate
    rate = PATH_RATES["bf16 plain"][0]
    assert row["GPU-hours"] == pytest.approx(row["ViT-B/16 forwards"] / rate / 3600, abs=0.01)
    # without a step budget, the train epochs count: (1 - val_fraction) of the images
    config["method_params"]["blackbox"]["hparams"]["steps"] = 0
    [row] = blackbox_training(config).to_dict("records")
    kept = {CIFAR: 45_000}.get(preset, 1_281_167 - round(128_116.7))
    assert row["SPSA steps"] == -(-kept // 128)  # the preset's one epoch


def test_two_replay_logs_for_one_sigma_are_refused(run_cli, tmp_path):
    """The last one was used without a word."""
    logs = []
    for name in ("a", "b"):
        logs.append(tmp_path / f"{name}.tsv")
        pd.DataFrame({"idx": range(2), "label": 0, "predict": 0, "radius": [0.1, 0.2],
                      "correct": 1, "time": 1.0}).to_csv(logs[-1], sep="\t", index=False)
    with pytest.raises(PeftsError, match="two --replay logs for sigma 0.5: .*a.tsv and .*b.tsv"):
        sigma_hit_rates([0.5], [(logs[0], 0.5), (logs[1], 0.50)], None)
    code, _, err = run_cli("plan", "--configfile", CIFAR, "--replay", logs[0], "--replay-sigma",
                           "0.5", "--replay", logs[1], "--replay-sigma", "0.5")
    assert code == 1 and err.count("\n") == 1 and "two --replay logs for sigma 0.5" in err, err


def test_plan_prices_start_up_from_a_measured_table(run_cli, tmp_path):
    """--startup-tsv: each GPU job pays the mean cold start-up of the config's methods in
    the benchmark's TSV, and the headline names that file instead of the assumption."""
    tsv = tmp_path / "startup.tsv"
    rows = [("lora", "cold", 30.0), ("lora", "warm", 5.0), ("none", "cold", 10.0),
            ("elsewhere", "cold", 900.0)]
    pd.DataFrame(rows, columns=["method", "start", "total_s"]).to_csv(tsv, sep="\t", index=False)
    code, out, err = run_cli("plan", "--configfile", CIFAR, "--passes-per-image", "4667",
                             "--startup-tsv", tsv)
    assert code == 0, err
    headline = next(line for line in out.splitlines() if line.startswith("Whole study"))
    jobs = int(headline.split(" GPU jobs at ")[0].rsplit(" ", 1)[1])
    assert " GPU jobs at 20 s each, measured: mean first-job start-up of 2 of " in headline
    assert f"{jobs * 20 / 3600:.2f} start-up" in headline and str(tsv) in headline
    tsv.write_text("method\tstart\ttotal_s\nlora\tcold\tnan\n")
    code, _, err = run_cli("plan", "--configfile", CIFAR, "--startup-tsv", tsv)
    assert code == 1 and "line 2: total_s" in err and err.count("\n") == 1
    code, _, err = run_cli("plan", "--configfile", CIFAR, "--startup-tsv", tsv, "--startup-s", "5")
    assert code == 1 and "not both" in err


def test_the_cifar10_certification_fits_four_h200_hours():
    """Issue 30: docs/cost.md (written by `pefts plan` with Cohen's replays) prices the
    CIFAR-10 preset's certification, start-up included, at most 4 H200-hours, start-up at
    most 10% of it, at the assumed 60 s per GPU job."""
    from pathlib import Path

    cost = (Path(__file__).resolve().parents[1] / "docs/cost.md").read_text()
    section = cost.split("## `configs/cifar10-vitb16.yaml` (target `all`)")[1]
    found = re.search(r"at 60 s each, assumed, not measured\)\. Certification with its "
                      r"start-up: ([\d.]+) H200-hours in (\d+) jobs .*, start-up ([\d.]+)% of it",
                      section)
    assert found, section[:600]
    hours, jobs, share = float(found[1]), int(found[2]), float(found[3])
    assert hours <= 4 and share <= 10 and jobs < 36  # fewer jobs than (run, sigma) pairs
