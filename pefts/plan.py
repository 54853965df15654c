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
# Other methods: scaled by their FLOPs per forward (pefts.forward_cost).
RATES = {"bf16": 7358.0, "fp16": 7358.0, "fp32": 950.0}
RATE_SOURCE = {"bf16": "measured, H200, ViT-B/16 + LoRA, bf16",
               "fp16": "assumed equal to bf16",
               "fp32": "assumed: 67 TFLOP/s x 50% / 35.2 GFLOP (not measured)"}


def dry_run(configfiles: tuple[str, ...], target: str) -> str:
    """What ``snakemake -n`` prints for the config and target, into an empty results folder."""
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
    return done.stdout


def job_counts(configfiles: tuple[str, ...], target: str) -> dict[str, int]:
    """Jobs per rule of ``snakemake -n`` for the config, into an empty results folder."""
    return rule_counts(dry_run(configfiles, target))


def rule_counts(output: str) -> dict[str, int]:
    return {rule: count for rule, count in job_stats(output).items() if rule != "total"}


def dag_pairs(output: str) -> dict[tuple[str, str], int]:
    """(run, sigma) -> certification shards, from the certify_shard jobs a dry run lists:
    what the DAG will run, whatever grid arithmetic would say."""
    pairs: dict[tuple[str, str], int] = {}
    for block in re.split(r"\n(?=rule \w+:)", output):
        if not block.startswith("rule certify_shard:"):
            continue
        found = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        if found is None:
            raise PeftsError("snakemake's dry run lists a certify_shard job without wildcards")
        wildcards = dict(w.split("=", 1) for w in found[1].split(", "))
        key = (wildcards["runname"], wildcards["sigma"])
        pairs[key] = pairs.get(key, 0) + 1
    return pairs


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
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PeftsError(f"cannot read {tsv}: {str(err).splitlines()[0]}") from None
    if len(rows) == 0:
        raise PeftsError(f"{tsv} has no rows: no hit rates to replay")
    if "nA" in rows and ("n" in rows or n):
        counts = rows["n"] if "n" in rows else n
        check_column(tsv, rows, "nA", 0)
        if "n" in rows:
            check_column(tsv, rows, "n", 1)
        p = rows["nA"] / counts
    elif "radius" in rows:
        if not sigma:
            raise PeftsError(f"{tsv} has radii but no nA column: give the sigma it was "
                             "certified at (--replay-sigma)")
        check_column(tsv, rows, "radius", 0)
        p = pd.Series(norm.cdf(rows["radius"] / sigma)).where(rows["radius"] > 0, 0.5)
    else:
        raise PeftsError(f"{tsv} has neither nA nor radius columns: not a certification TSV")
    p = np.asarray(p, dtype=float)
    if not np.all((p >= 0) & (p <= 1)):
        raise PeftsError(f"{tsv}: hit rates must lie in [0, 1] (is --replay-n right?)")
    return p


def check_column(tsv: str | Path, rows: pd.DataFrame, column: str, low: float) -> None:
    """Every value of ``column`` a finite number >= ``low``, naming the first row that is
    not (a nan radius would otherwise replay as an abstention, a negative one too)."""
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(values) & (values >= low))
    if bad.any():
        first = int(np.argmax(bad))
        raise PeftsError(f"{tsv}, row {first + 1}: {column} '{rows[column].iloc[first]}' must "
                         f"be a finite number >= {low:g}")


def replay_samples(p_hats: np.ndarray, plan: Any, seed: int = 0) -> np.ndarray:
    """Estimation samples each image takes under the certifier's stopping rule, hits
    drawn per look chunk as binomial counts (``AdaptivePlan.replay``, the rule of
    ``AdaptivePlan.look`` on arrays)."""
    used, _, _ = plan.replay(np.asarray(p_hats, dtype=float), np.random.default_rng(seed))
    return used.astype(np.int64)


# what a job pays before its first sample: interpreter, torch and CUDA start, loading the
# data and the model. Not measured: an assumption, stated in the output (--startup-s)
STARTUP_S = 60.0
GPU_RULES = ("train_base", "train_base_source", "adapt_base", "finetune", "certify_shard",
             "certify_sound_shard")


def sigma_hit_rates(sigmas: list[float], replays: list[tuple[str, float]],
                    replay_n: int | None) -> dict[float, tuple[np.ndarray, str]]:
    """Per sigma of the config, the hit rates to replay and where they came from: the
    replay certified at that sigma, or else the one at the nearest sigma, scaled.

    Scaling keeps each image's radius (its L2 distance to the decision boundary, as for a
    linear classifier): p' = Phi(PhiInv(p) s / s'). A real classifier's radius changes
    with the sigma it is trained at, so a replay at each sigma is better."""
    given: dict[float, str] = {}
    for tsv, s in replays:
        if float(s) in given:
            raise PeftsError(f"two --replay logs for sigma {float(s):g}: {given[float(s)]} and "
                             f"{tsv}; give one per sigma")
        given[float(s)] = str(tsv)
    loaded = {float(s): hit_rates(tsv, replay_n, s) for tsv, s in replays}
    names = {float(s): str(tsv) for tsv, s in replays}
    chosen = {}
    for sigma in map(float, sigmas):
        if sigma in loaded:
            chosen[sigma] = (loaded[sigma], f"replay at sigma {sigma:g} ({names[sigma]})")
            continue
        near = min(loaded, key=lambda s: (abs(np.log(s / sigma)), s))
        p = norm.cdf(norm.ppf(loaded[near]) * near / sigma)
        chosen[sigma] = (p, f"replay at sigma {near:g} scaled to {sigma:g}, each image "
                            f"keeping its radius: p' = Phi(PhiInv(p) x {near:g} / {sigma:g})")
    return chosen


def adaptive_per_sigma(config: dict[str, Any], replays: list[tuple[str, float]],
                       replay_n: int | None, passes_per_image: float | None,
                       seed: int = 0) -> dict[float, tuple[float, str]] | None:
    """Estimation samples per image of adaptive certification at each sigma, and how;
    None when there is nothing to estimate it from."""
    from pefts.certification.adaptive import AdaptivePlan

    sigmas = sorted({float(s) for s in _all_sigmas(config)})
    if passes_per_image is not None:
        return {s: (passes_per_image, "stated figure (--passes-per-image)") for s in sigmas}
    if not replays:
        return None
    cert = config["certify"]
    result = {}
    for sigma, (p, how) in sigma_hit_rates(sigmas, replays, replay_n).items():
        # the certifier stops on certify.grid (a setting of its own), not the summary radii
        plan = AdaptivePlan(sigma, cert["alpha"], cert["n"], tuple(cert["grid"]), cert.get("rtol"))
        result[sigma] = (float(replay_samples(p, plan, seed).mean()), how)
    return result


def _all_sigmas(config: dict[str, Any]) -> list[float]:
    exp = config["experiments"]
    return [*config["sigmas"], exp["ablation"]["sigma"], *exp["noise_learning"]["sigmas"],
            *exp["twobirds"]["sigmas"]]


@dataclass
class Pair:
    """One (run, sigma) the DAG certifies, with what one forward pass of it costs."""

    run: str
    method: str
    sigma: float
    images: int
    shards: int
    gflop: float
    cost_source: str


def dag_cost_pairs(config: dict[str, Any], pairs: dict[tuple[str, str], int],
                   test_images: int | None) -> list[Pair]:
    from pefts.experiments import Study
    from pefts.forward_cost import forward_cost

    study = Study(config, local_weights=False)
    known = config["dataset"]["name"] in TEST_IMAGES
    if not known and test_images is None and pairs:
        raise PeftsError(f"how many test images does {config['dataset']['name']!r} have? "
                         "give --test-images")
    costs: dict[str, Any] = {}
    result = []
    for (run, sigma), shards in sorted(pairs.items()):
        if run not in study.runs:
            raise PeftsError(f"the dry run certifies a run {run!r} this config does not define")
        spec = study.runs[run]
        if known:
            images = study.certified_images(run)
        else:
            cert = study.certify_settings(run)
            images = len(selected_indices(test_images, cert["skip"], cert["max"]))
        if run not in costs:
            costs[run] = forward_cost(config, spec.method, spec.hparams)
        result.append(Pair(run, spec.method, float(sigma), images, shards, costs[run].gflop,
                           costs[run].source))
    return result


def reference_gflop() -> float:
    """GFLOP of the forward pass the H200 rates were measured on (ViT-B/16 + LoRA rank 2
    at 224x224), counted by the same code as every run's, so only the ratio matters.
    Rounded like pefts.forward_cost.RECORDED, so the measured network matches itself."""
    from pefts.forward_cost import MEASURED_METHOD, count_forward

    measured = {"dataset": {"name": "imagenet"},
                "base": {"arch": "vit_base_patch16_224", "input_size": 224, "model_kwargs": {}}}
    return round(count_forward(measured, MEASURED_METHOD, {"rank": 2, "alpha": 2}).gflop, 3)


@dataclass
class Protocol:
    name: str
    passes_per_image: dict[float, float]  # by sigma
    rate: float  # samples/s of the measured forward pass (ViT-B/16 + LoRA)
    rate_source: str


def protocols(config: dict[str, Any], adaptive: dict[float, tuple[float, str]] | None,
              rate_fixed: float | None, rate_adaptive: float | None) -> list[Protocol]:
    """Fixed n (Cohen: fp32) against the config's adaptive settings (when estimated)."""
    cert = config["certify"]
    precision = cert["precision"]
    fixed = {float(s): float(cert["n0"] + cert["n"]) for s in _all_sigmas(config)}
    fast = rate_adaptive or RATES[precision]
    fast_source = "--rate" if rate_adaptive else RATE_SOURCE[precision]
    rows = [
        Protocol(f"fixed n = {cert['n']:,} (Cohen, fp32)", fixed, rate_fixed or RATES["fp32"],
                 "--rate-fixed" if rate_fixed else RATE_SOURCE["fp32"]),
        Protocol(f"fixed n = {cert['n']:,}, {precision}", fixed, fast, fast_source),
    ]
    if adaptive is not None:
        rows.append(Protocol(f"adaptive, n_max = {cert['n']:,}, {precision}",
                             {s: cert["n0"] + a for s, (a, _) in adaptive.items()}, fast, fast_source))
    return rows


def pair_hours(pair: Pair, protocol: Protocol, reference: float) -> float:
    """GPU-hours of one (run, sigma): its forward passes at the measured rate, scaled by
    its FLOPs per forward against the measured network's."""
    rate = protocol.rate * reference / pair.gflop
    return pair.images * protocol.passes_per_image[pair.sigma] / rate / 3600


def cost_table(pairs: list[Pair], protocol_list: list[Protocol], reference: float,
               startup_hours: float) -> pd.DataFrame:
    rows = []
    # a run whose network could not be counted is priced at a lower bound: so is the sum
    at_least = ">= " if any(p.cost_source.startswith("lower bound") for p in pairs) else ""
    for protocol in protocol_list:
        passes = sum(p.images * protocol.passes_per_image[p.sigma] for p in pairs)
        hours = sum(pair_hours(p, protocol, reference) for p in pairs)
        rows.append({"protocol": protocol.name, "(run, sigma)": len(pairs),
                     "images": sum(p.images for p in pairs), "forward passes": f"{passes:.3g}",
                     "samples/s (ViT-B/16 + LoRA)": f"{protocol.rate:,.0f}",
                     "certify GPU-h": f"{at_least}{hours:,.1f}",
                     "start-up GPU-h": f"{startup_hours:,.1f}",
                     "GPU-hours": f"{at_least}{hours + startup_hours:,.1f}",
                     "rate": protocol.rate_source})
    return pd.DataFrame(rows)


def run_table(pairs: list[Pair], protocol: Protocol, reference: float) -> pd.DataFrame:
    """Per run: its forward pass's cost and where the figure came from, and its GPU-hours
    under ``protocol`` over its sigmas."""
    rows = []
    for run in dict.fromkeys(p.run for p in pairs):
        mine = [p for p in pairs if p.run == run]
        first = mine[0]
        lower = first.cost_source.startswith("lower bound")
        hours = sum(pair_hours(p, protocol, reference) for p in mine)
        rows.append({"run": run, "method": first.method,
                     "sigmas": ", ".join(f"{p.sigma:g}" for p in mine),
                     "images": sum(p.images for p in mine),
                     "GFLOP/forward": f"{first.gflop:.3g}",
                     "samples/s": f"{protocol.rate * reference / first.gflop:,.0f}",
                     "GPU-h": f"{'>= ' if lower else ''}{hours:,.2f}",
                     "cost per forward": _cost_source(first, reference)})
    return pd.DataFrame(rows)


def _cost_source(pair: Pair, reference: float) -> str:
    from pefts.forward_cost import MEASURED_METHOD

    if pair.method == MEASURED_METHOD and pair.gflop == reference:
        return "the measured network (H200)"
    return f"{pair.cost_source}, x {reference / pair.gflop:.3f} the measured rate"


# training images of the datasets whose size is known without the data
TRAIN_IMAGES = {"cifar10": 50_000, "imagenet": 1_281_167}


def blackbox_training(config: dict[str, Any], rate: float | None = None) -> pd.DataFrame:
    """GPU-hours of the black box's SPSA training, per run: every step queries the
    black box 2 x perturbations times on the batch (BlackVIP: 10 CLIP ViT-B/16 forwards
    per image) and runs the coordinator's encoder once (its features are shared by the
    step's queries); the decoder's cost is negligible beside them. Both networks are
    ViT-B/16s, so the certifier's ViT-B/16 rate at the training precision applies."""
    from pefts.experiments import Study
    from pefts.methods import get_method

    rows = []
    study = Study(config, local_weights=False)
    for name in study.distinct_runs():
        run = study.runs[name]
        if run.method != "blackbox":
            continue
        h = get_method("blackbox", **run.hparams).hparams
        train = {**config["method_params"].get("blackbox", {}).get("train", {}), **run.train}
        batch = int(train.get("batch_size", 64))
        steps = int(h["steps"])
        if not steps:
            images = TRAIN_IMAGES.get(config["dataset"]["name"])
            if images is None:
                continue  # unknown training set size: nothing to count
            kept = images - round(images * float(train.get("val_fraction", 0.1)))
            steps = max(1, round(float(train.get("epochs", 10)) * -(-kept // batch)))
        precision = train.get("precision", "fp32")
        sigmas = len(config["sigmas"])
        forwards = sigmas * steps * batch * (2 * int(h["perturbations"]) + 1)
        speed = rate or RATES[precision]
        rows.append({"run": name, "sigmas": sigmas, "SPSA steps": steps, "batch": batch,
                     "ViT-B/16 forwards": forwards, "samples/s": speed,
                     "GPU-hours": round(forwards / speed / 3600, 2),
                     "rate": "--rate" if rate else RATE_SOURCE[precision]})
    return pd.DataFrame(rows)
