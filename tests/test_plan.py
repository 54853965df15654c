"""`pefts plan`: jobs, forward passes and GPU-hours of a config before it runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pefts.certification.adaptive import AdaptivePlan
from pefts.errors import PeftsError
from pefts.experiments import load_config
from pefts.plan import RATES, certified_images, hit_rates, job_counts, plan_costs, replay_samples

CIFAR = "configs/cifar10-vitb16.yaml"


def test_fixed_n_passes_are_exact_and_hours_follow_the_rate():
    config = load_config([CIFAR])
    jobs = job_counts((CIFAR,), "all")
    pairs = jobs["certify_shard"] // config["certify"]["shards"]
    assert pairs == len(config["methods"]) * len(config["sigmas"]) == 36
    assert jobs["finetune"] == 36 and jobs["merge_shards"] == 36
    images = certified_images(config, None)
    assert images == 500  # every 20th of CIFAR-10's 10,000 test images
    cohen, fixed_bf16, adaptive = plan_costs(config, pairs, images, 1000.0, None, None)
    assert cohen.passes == fixed_bf16.passes == 36 * 500 * (100 + 100_000)  # 1.8e9
    assert cohen.rate == RATES["fp32"] and fixed_bf16.rate == RATES["bf16"]
    assert fixed_bf16.gpu_hours == pytest.approx(1.8018e9 / 7358 / 3600)  # about 68
    assert adaptive.passes == 36 * 500 * (100 + 1000)


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


def test_plan_command_writes_the_cost_table(run_cli, tmp_path):
    out = tmp_path / "cost.md"
    code, stdout, err = run_cli("plan", "--configfile", CIFAR, "--passes-per-image", "4667",
                                "--out-md", str(out))
    assert code == 0, err
    assert "certify_shard" in stdout and "GPU-hours" in out.read_text()
    assert "| adaptive, n_max = 100,000, bf16" in out.read_text()
    code, _, err = run_cli("plan", "--configfile", CIFAR)
    assert code == 1 and err.count("\n") == 1 and "--replay" in err


@pytest.mark.parametrize("preset,steps", [("configs/imagenet-vitb16.yaml", 62_500),
                                          (CIFAR, 5_000)])
def test_blackbox_training_hours_count_blackvips_queries(preset, steps):
    """Per SPSA step and image: 2 x SP_AVG = 10 CLIP queries and one encoder pass."""
    from pefts.plan import blackbox_training

    config = load_config([preset])
    [row] = blackbox_training(config).to_dict("records")
    sigmas = len(config["sigmas"])
    assert (row["run"], row["sigmas"], row["SPSA steps"], row["batch"]) == ("blackbox", sigmas, steps, 128)
    assert row["ViT-B/16 forwards"] == sigmas * steps * 128 * 11
    assert row["GPU-hours"] == pytest.approx(row["ViT-B/16 forwards"] / RATES["bf16"] / 3600, abs=0.01)
    # without a step budget, the train epochs count: (1 - val_fraction) of the images
    config["method_params"]["blackbox"]["hparams"]["steps"] = 0
    [row] = blackbox_training(config).to_dict("records")
    kept = {CIFAR: 45_000}.get(preset, 1_281_167 - round(128_116.7))
    assert row["SPSA steps"] == -(-kept // 128)  # the preset's one epoch
