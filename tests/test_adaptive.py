"""Adaptive certification: anytime validity, the radius cap, and determinism."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.bounds import lower_confidence_bound, radius_cap
from pefts.certification.pool import Pool
from pefts.certification.sequences import (
    Looks,
    betting_lower_bounds,
    cp_lower,
    lowest_count_reaching,
    union_bound_looks,
)
from tests import killing
from tests.test_smoothing import Constant, linear_case

SIGMA = 0.5


TRUE_RADIUS = 0.26  # p = Phi(0.26 / 0.5) = 0.70
NET, X = linear_case(TRUE_RADIUS)


class StopWhenWrong(AdaptivePlan):
    """The adversary: stop at the first look whose bound exceeds the true p, if ever."""

    def settled(self, lower: float, upper: float) -> bool:
        return lower > float(norm.cdf(TRUE_RADIUS / self.sigma))


def over_claim_rate(looks: Looks, reps: int, alpha: float) -> float:
    plan = StopWhenWrong(SIGMA, alpha, looks.counts[-1], looks=looks)
    pool = Pool(NET, 2, plan, n0=64, seed=1, device="cpu", batch=8192, pool=reps)
    results = list(pool.run((i, X, 1) for i in range(reps)))
    assert len(results) == reps and all(r.prediction in (1, -1) for r in results)
    return float(np.mean([r.radius > TRUE_RADIUS for r in results]))


def tolerance(alpha: float, reps: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def test_looks_spend_exactly_alpha_on_geometric_checkpoints():
    looks = union_bound_looks(100_000, 0.001)
    assert looks.counts[-1] == 100_000 and sum(looks.chunks) == 100_000
    assert all(a < b for a, b in zip(looks.counts, looks.counts[1:], strict=False))
    assert math.isclose(sum(looks.budgets), 0.001, rel_tol=1e-9)
    # Voracek's checkpoint j = 40: the first count above 1.1 ** 51
    assert math.floor(1.1 ** 51) + 1 in looks.counts
    assert cp_lower(99_000, 100_000, 0.001) == lower_confidence_bound(99_000, 100_000, 0.001)


def test_union_bound_survives_the_adversary_and_naive_peeking_does_not():
    """In the pool, with the default looks (the rule certify --adaptive runs)."""
    alpha, reps = 0.05, 400
    looks = AdaptivePlan(SIGMA, alpha, 1000).looks
    sound = over_claim_rate(looks, reps, alpha)
    naive = over_claim_rate(Looks(looks.counts, (alpha,) * len(looks.counts)), reps, alpha)
    assert sound <= tolerance(alpha, reps), sound
    assert naive > tolerance(alpha, reps), f"naive peeking should over-claim, got {naive}"


def test_betting_sequence_is_valid_and_tight_on_easy_images():
    rng = np.random.default_rng(0)
    alpha, p, reps = 0.05, 0.7, 300
    at = np.array(union_bound_looks(1000, alpha).counts)
    wrong = [betting_lower_bounds(rng.random(1000) < p, alpha, at)[-1] > p for _ in range(reps)]
    assert np.mean(wrong) <= tolerance(alpha, reps)
    all_hits = betting_lower_bounds(np.ones(600), 0.001, np.array([600]))[-1]
    assert all_hits > norm.cdf(2.0)  # an all-correct image certifies 2 sigma by 600 samples


def test_constant_classifier_stays_below_the_cap_of_n_max():
    n_max, alpha = 2000, 0.001
    cap = radius_cap(SIGMA, n_max, alpha)
    for rtol, radii in ((None, (0.0, 0.5, 10.0)), (1e-9, (0.0,))):
        plan = AdaptivePlan(SIGMA, alpha, n_max, radii, rtol)
        [result] = Pool(Constant(1, 3), 3, plan, n0=8, seed=0, device="cpu").run(
            [(0, torch.rand(3, 4, 4), 1)])
        assert result.prediction == 1 and result.radius <= cap
    # run to n_max, the constant classifier gets the cap of the last look's budget: the
    # whole unspent tail, so the anytime radius stays within 5% of fixed-n CP's
    tail = plan.looks.budgets[-1]
    assert result.n_used == n_max and 0.95 * cap < result.radius
    assert math.isclose(result.radius, SIGMA * norm.ppf(tail ** (1 / n_max)), rel_tol=1e-9)
    k = lowest_count_reaching(0.5, 100, 0.001)
    assert cp_lower(k, 100, 0.001) >= 0.5 > cp_lower(k - 1, 100, 0.001)
    assert lowest_count_reaching(0.9999, 100, 0.001) is None  # beyond the cap of n = 100


def test_grid_mode_stops_early_and_certifies_what_fixed_n_certifies():
    plan = AdaptivePlan(SIGMA, 0.001, 100_000, (0.0, 0.25))
    net, x = linear_case(0.48)
    [result] = Pool(net, 2, plan, n0=64, seed=0, device="cpu", batch=4096).run([(0, x, 1)])
    # true radius 0.48: p = Phi(0.96) = 0.83 is well clear of both thresholds (0.5, Phi(0.5))
    assert result.prediction == 1 and 0.25 <= result.radius <= 0.48 and result.n_used < 5000


def pool_rows(net, images, batch, pool, n_max=3000):
    plan = AdaptivePlan(0.25, 0.001, n_max, (0.0, 0.25, 0.5))
    runner = Pool(net, 10, plan, n0=16, seed=3, device="cpu", batch=batch, pool=pool)
    return sorted((r.idx, r.prediction, r.radius, r.n_a, r.n_used) for r in runner.run(images))


@pytest.mark.slow
def test_results_do_not_depend_on_pool_or_batch_size():
    from pefts.benchmarks.throughput import builtin_subject

    net = builtin_subject(torch.device("cpu")).net  # random weights: noise moves its predictions
    torch.manual_seed(1)
    images = [(i, torch.rand(3, 8, 8), 2) for i in range(8)]
    reference = pool_rows(net, images, batch=1000, pool=4)
    assert len({r[4] for r in reference}) > 2, "images used the same n: test is vacuous"
    for batch, pool in ((1, 1), (97, 3), (5000, 8)):
        assert pool_rows(net, images, batch, pool) == reference, (batch, pool)


class BatchSizes(torch.nn.Module):
    """Records the size of every batch sent through ``net``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.net(x)


@pytest.mark.slow
def test_batches_stay_full_and_running_ahead_wastes_little():
    from pefts.benchmarks.throughput import builtin_subject

    torch.manual_seed(1)
    images = [(i, torch.rand(3, 8, 8), 2) for i in range(24)]
    plan = AdaptivePlan(0.25, 0.001, 2000, (0.0, 0.25, 0.5))
    for pool, fill, waste in ((256, 0.98, 0.05), (6, 0.9, 0.15)):
        net = BatchSizes(builtin_subject(torch.device("cpu")).net).eval()
        results = list(Pool(net, 10, plan, n0=16, seed=3, device="cpu", batch=256,
                            pool=pool).run(images))
        sizes = net.sizes[5:]  # after the batch-dependence probe: 4 samples, then 4 alone
        used = sum(r.n_used + 16 for r in results)
        # without running ahead, early looks every few samples leave batches at ~1/4 full
        assert sum(sizes) / (256 * len(sizes)) >= fill, (pool, sizes)
        assert used <= sum(sizes) <= (1 + waste) * used, (pool, used, sum(sizes))


ADAPTIVE = ["--adaptive", "--n0", "16", "--n", "3000", "--radii", "0,0.25,0.5", "--batch", "500",
            "--skip", "3", "--max", "13", "--sigma", "0.5", "--device", "cpu"]


def test_adaptive_shards_merge_to_the_single_run(run_cli, digits, tiny_base, none_model, tmp_path):
    def certify(out, shard, pool):
        code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data",
                               digits, *ADAPTIVE, "--pool", pool, "--shard", shard, "--out", out)
        assert code == 0, err
        return out

    whole = pd.read_csv(certify(tmp_path / "all.tsv", "0/1", 5), sep="\t")
    parts = [certify(tmp_path / f"{k}.tsv", f"{k}/3", 2) for k in range(3)]
    code, _, err = run_cli("merge", *parts, "--out", tmp_path / "merged.tsv", "--data", digits,
                           "--skip", "3", "--max", "13")
    assert code == 0, err
    merged = pd.read_csv(tmp_path / "merged.tsv", sep="\t")
    assert list(whole.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"n_used", "n_max", "precision"} <= set(whole.columns)
    assert (whole["n_used"] <= 3000).all() and whole["n_used"].min() < 3000
    from pefts.certification.adaptive import STOPPING_RULE
    from pefts.runtime.provenance import read_sidecar

    assert read_sidecar(tmp_path / "merged.tsv")["settings"]["stopping_rule"] == STOPPING_RULE
    for column in ("idx", "predict", "radius", "nA", "n_used", "pA_lower"):
        assert merged[column].tolist() == whole[column].tolist(), column


@pytest.mark.slow
def test_adaptive_killed_for_real_resumes_to_the_same_rows(digits, tiny_base, none_model, tmp_path):
    args = [sys.executable, "-m", "pefts", "certify", "--model", str(none_model), "--base",
            str(tiny_base), "--data", str(digits), "--sigma", "0.25", "--adaptive", "--n0", "16",
            "--n", "8000", "--radii", "0,0.25,0.5,0.75", "--batch", "1000", "--pool", "2",
            "--skip", "20", "--max", "8", "--device", "cpu"]
    whole, out = tmp_path / "whole.tsv", tmp_path / "killed.tsv"
    killing.run(args, whole)
    killing.kill_after_rows(args, out, timeout=300)
    killing.run([*args, "--pool", "5"], out)  # the pool size may change on resume

    a, b = pd.read_csv(whole, sep="\t"), pd.read_csv(out, sep="\t")
    assert a["idx"].tolist() == b["idx"].tolist() == list(range(0, 160, 20))
    for column in ("predict", "radius", "nA", "n_used", "pA_lower"):
        assert a[column].tolist() == b[column].tolist()


def test_fixed_n_is_adaptive_with_one_look_and_counts_the_same_hits():
    """Fixed n = N, adaptive with n_max = N, and Cohen's ``Smooth.certify`` draw the same
    noise from the same (seed, image) streams: an adaptive image that runs to n_max counts
    exactly the hits of its fixed-n row, and the fixed-n bound is Cohen's at the full alpha."""
    from scipy.stats import beta

    from pefts.certification.noise import ESTIMATION, SELECTION, generator
    from pefts.certification.rows import adaptive_rows, certify_rows
    from pefts.certification.smoothing import Smooth

    # a random linear classifier on 3x5x5 images: noise moves its predictions, and 75 values
    # per sample (not a multiple of 16) make torch's CPU sampler give other values when a
    # stream is drawn in other pieces (on CUDA any other split does)
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(75, 10)).eval()
    images = [(torch.rand(3, 5, 5), 2) for _ in range(20)]
    n, alpha, sigma, seed = 1500, 0.001, 0.5, 4
    fixed = {r[0]: r for r in certify_rows(net, images, 10, sigma, 16, n, alpha, 300, seed,
                                           "cpu")(list(range(20)))}
    # rtol this small is never met: every image that does not clearly abstain runs to n_max
    plan = AdaptivePlan(sigma, alpha, n, (0.0,), rtol=1e-12)
    adaptive = {r[0]: r for r in adaptive_rows(net, images, 10, plan, 16, 700, 3, seed,
                                               "cpu")(list(range(20)))}
    full = [i for i, r in adaptive.items() if r[7] == n]
    assert len(full) >= 3, "too few images ran to n_max: test is vacuous"
    assert len({fixed[i][8] for i in full}) > 1, "every image had the same hits: vacuous"
    for i in full:
        assert adaptive[i][8] == fixed[i][8], (i, adaptive[i], fixed[i])
    smooth = Smooth(net, 10, sigma)
    for i, (x, _) in enumerate(images):
        cert = smooth.certify_detailed(x, 16, n, alpha, 128, generator(seed, i, SELECTION, "cpu"),
                                       generator(seed, i, ESTIMATION, "cpu"))
        row = fixed[i]
        assert (cert.prediction if cert.p_a_lower >= 0.5 else -1, cert.n_a) == (row[2], row[8])
        n_a = row[8]
        cohen = beta.ppf(alpha, n_a, n - n_a + 1) if n_a else 0.0
        assert float(row[9]) == pytest.approx(cohen, rel=1e-12, abs=1e-15)
