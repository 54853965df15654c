"""`pefts plan`: what a config costs before a cluster spends it.

Jobs per rule come from Snakemake's own dry run of the config. Certification dominates:
fixed n costs exactly images x (n0 + n) forward passes per (run, sigma); adaptive
certification is estimated by replaying hit rates through the certifier's own stopping
rule (``AdaptivePlan.look``), or taken from a stated passes-per-image figure. GPU-hours
follow at a given samples/s.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from pefts.certification.selection import selected_indices
from pefts.errors import PeftsError
from pefts.experiments import NUM_CLASSES, TEST_IMAGES_PER_CLASS

# test images of the datasets whose size is known without the data (digits' per-class
# figure is only a lower bound, so digits needs --test-images)
TEST_IMAGES = {name: TEST_IMAGES_PER_CLASS[name] * NUM_CLASSES[name] for name in ("cifar10", "imagenet")}

# samples/s of the certifier's network pass, per precision (docs/cost.md). Measured on an
# NVIDIA H200 for ViT-B/16 + LoRA at 224x224, batch 1000, bf16 autocast (raw forward;
# the certifier runs at 0.99 of it, the adaptive pool at 0.97). fp32 is NOT measured:
# assumed from ViT-B/16's 35.2 GFLOP per forward at half of the H200's 67 TFLOP/s FP32.
RATES = {"bf16": 7358.0, "fp16": 7358.0, "fp32": 950.0}
RATE_SOURCE = {"bf16": "measured, H200, ViT-B/16 + LoRA, bf16",
               "fp16": "assumed equal to bf16",
               "fp32": "assumed: 67 TFLOP/s x 50% / 35.2 GFLOP (not measured)"}


def job_counts(configfiles: tuple[str, ...], target: str) -> dict[str, int]:
    """Jobs per rule of ``snakemake -n`` for the config, into an empty results folder."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as results:
        files = [str(Path(f).resolve()) for f in configfiles]
        # the target first: --configfile takes every word up to the next option
        command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", target,
                   *(["--configfile", *files] if files else []),
                   "--config", f"results={results}/r"]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0 or "Job stats:" not in done.stdout:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise PeftsError(f"snakemake's dry run of the config failed: {lines[-1]}")
    return {rule: count for rule, count in job_stats(done.stdout).items() if rule != "total"}


def job_stats(output: str) -> dict[str, int]:
    """The "Job stats" table of a snakemake run or dry run: jobs per rule, and total."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def certified_images(config: dict[str, Any], test_images: int | None) -> int:
    cert = config["certify"]
    total = test_images or TEST_IMAGES.get(config["dataset"]["name"])
    if total is None:
        raise PeftsError(f"how many test images does {config['dataset']['name']!r} have? "
                         "give --test-images")
    return len(selected_indices(total, cert["skip"], cert["max"]))


def hit_rates(tsv: str | Path, n: int | None, sigma: float | None) -> np.ndarray:
    """Per image, the hit rate of its top class in an earlier certification (Cohen's TSV):
    nA / n when the counts are there (n from its column or --replay-n), else
    pA_lower = Phi(radius / sigma). Abstentions known only by radius 0 get p = 0.5, the
    hardest case for the stopping rule, so the estimate errs on the costly side."""
    try:
        rows = pd.read_csv(tsv, sep="\t", comment="#")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PeftsError(f"cannot read {tsv}: {str(err).splitlines()[0]}") from None
    if "nA" in rows and ("n" in rows or n):
        counts = rows["n"] if "n" in rows else n
        p = rows["nA"] / counts
    elif "radius" in rows:
        if not sigma:
            raise PeftsError(f"{tsv} has radii but no nA column: give the sigma it was "
                             "certified at (--replay-sigma)")
        p = pd.Series(norm.cdf(rows["radius"] / sigma)).where(rows["radius"] > 0, 0.5)
    else:
        raise PeftsError(f"{tsv} has neither nA nor radius columns: not a certification TSV")
    p = np.asarray(p, dtype=float)
    if len(p) == 0 or not np.all((p >= 0) & (p <= 1)):
        raise PeftsError(f"{tsv}: hit rates must lie in [0, 1] (is --replay-n right?)")
    return p


def replay_samples(p_hats: np.ndarray, plan: Any, seed: int = 0) -> np.ndarray:
    """Estimation samples each image takes under the certifier's stopping rule, hits
    drawn per look chunk as binomial counts (``AdaptivePlan.replay``, the rule of
    ``AdaptivePlan.look`` on arrays)."""
    used, _, _ = plan.replay(np.asarray(p_hats, dtype=float), np.random.default_rng(seed))
    return used.astype(np.int64)


@dataclass
class CostRow:
    protocol: str
    pairs: int  # (run, sigma) certified
    images: int
    passes_per_image: float
    rate: float
    rate_source: str

    @property
    def passes(self) -> float:
        return self.pairs * self.images * self.passes_per_image

    @property
    def gpu_hours(self) -> float:
        return self.passes / self.rate / 3600


def adaptive_passes(config: dict[str, Any], replay: str | None, replay_n: int | None,
                    replay_sigma: float | None, passes_per_image: float | None,
                    seed: int = 0) -> tuple[float, str]:
    """Estimation samples per image of adaptive certification and how it was estimated."""
    from pefts.certification.adaptive import AdaptivePlan

    cert = config["certify"]
    if passes_per_image is not None:
        return passes_per_image, "stated figure (--passes-per-image)"
    if replay is None:
        raise PeftsError("adaptive certification: give --replay TSV (an earlier run's "
                         "hit rates) or --passes-per-image")
    p = hit_rates(replay, replay_n, replay_sigma)
    # the certifier stops on certify.grid (a setting of its own), not the summary radii
    means = [replay_samples(p, AdaptivePlan(float(s), cert["alpha"], cert["n"],
                                            tuple(cert["grid"]), cert.get("rtol")), seed).mean()
             for s in config["sigmas"]]
    return float(np.mean(means)), f"replay of {len(p)} hit rates from {replay}"


def plan_costs(config: dict[str, Any], pairs: int, images: int, adaptive_per_image: float,
               rate_fixed: float | None, rate_adaptive: float | None) -> list[CostRow]:
    """Fixed n (Cohen: fp32) against the config's adaptive settings."""
    cert = config["certify"]
    fixed_rate = rate_fixed or RATES["fp32"]
    precision = cert["precision"]
    fast_rate = rate_adaptive or RATES[precision]
    return [
        CostRow(f"fixed n = {cert['n']:,} (Cohen, fp32)", pairs, images, cert["n0"] + cert["n"],
                fixed_rate, "--rate-fixed" if rate_fixed else RATE_SOURCE["fp32"]),
        CostRow(f"fixed n = {cert['n']:,}, {precision}", pairs, images, cert["n0"] + cert["n"],
                fast_rate, "--rate" if rate_adaptive else RATE_SOURCE[precision]),
        CostRow(f"adaptive, n_max = {cert['n']:,}, {precision}", pairs, images,
                cert["n0"] + adaptive_per_image, fast_rate,
                "--rate" if rate_adaptive else RATE_SOURCE[precision]),
    ]


def cost_table(rows: list[CostRow]) -> pd.DataFrame:
    return pd.DataFrame([{
        "protocol": r.protocol, "(run, sigma)": r.pairs, "images": r.images,
        "passes/image": f"{r.passes_per_image:,.0f}", "forward passes": f"{r.passes:.3g}",
        "samples/s": f"{r.rate:,.0f}", "GPU-hours": f"{r.gpu_hours:,.1f}",
        "rate": r.rate_source} for r in rows])
