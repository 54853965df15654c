"""`pefts plan`: what a config costs before a cluster spends it, and how it is cut.

Jobs per rule come from Snakemake's own dry run of the config. Certification: fixed n
costs exactly images x (n0 + n) forward passes per (run, sigma); adaptive certification
is estimated by replaying hit rates through the certifier's own stopping rule
(``AdaptivePlan.look``), from a replay, a stated passes-per-image figure or the default
model (pefts.study.hit_rate_model). Training: epochs x images x a step's FLOPs. GPU-hours
follow at the measured rate of each job's path (PATH_RATES), scaled by its FLOPs; every
GPU job adds its start-up. The same estimate sizes shards (``certify.shards: auto``).
"""

from __future__ import annotations

import functools
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
from pefts.study.experiments import NUM_CLASSES, TEST_IMAGES_PER_CLASS, UNCOMPILED_METHODS

# test images of the datasets whose size is known without the data (digits' per-class
# figure is only a lower bound, so digits needs --test-images)
TEST_IMAGES = {name: TEST_IMAGES_PER_CLASS[name] * NUM_CLASSES[name] for name in ("cifar10", "imagenet")}

# samples/s of ViT-B/16 at 224x224 on an NVIDIA H200 (torch 2.11, random weights), per
# path the certifier can take; every method is scaled from its path's figure by its FLOPs
# per forward (pefts.study.forward_cost). All four are measured (docs/cost.md).
PATH_RATES = {
    "fp32": (1187.0, "measured, H200: ViT-B/16 + LoRA, fp32, TF32 off (Cohen's protocol)"),
    "bf16": (7358.0, "measured, H200: ViT-B/16 + LoRA unmerged, bf16"),
    "bf16 plain": (9292.0, "measured, H200: plain ViT-B/16 (what merged LoRA runs), bf16"),
    "bf16 compiled": (10695.0, "measured, H200: LoRA merged + torch.compile, bf16"),
}
# the unmerged LoRA rate per precision (what --rate and --rate-fixed replace)
RATES = {"bf16": PATH_RATES["bf16"][0], "fp16": PATH_RATES["bf16"][0], "fp32": PATH_RATES["fp32"][0]}
# methods whose network carries side branches inside the ViT (unmerged LoRA, adapters):
# their bf16 rate is the unmerged LoRA one; any other network is a plain ViT-B/16 plus
# networks of its own in front (denoisers, UNet) or around it (black box), or more tokens
SIDE_BRANCHES = ("lora", "adapter")


def path_rate(precision: str, merged: bool, compiled: bool, method: str) -> tuple[float, str]:
    """samples/s of ViT-B/16 on the path a method's certification takes, and its source.

    ``compiled`` (``certify.compile``) speeds up only what was measured compiled: a
    network without side branches that the certifier compiles. Side branches (adapters,
    unmerged LoRA) are compiled too but keep their eager rate (their compiled rate is
    not measured); the black box and diffusion are not compiled (``UNCOMPILED_METHODS``)."""
    if precision == "fp32":
        return PATH_RATES["fp32"]
    label = "" if precision == "bf16" else f" (assumed equal for {precision})"
    if method in SIDE_BRANCHES and not (method == "lora" and merged):
        key = "bf16"
    elif compiled and method not in UNCOMPILED_METHODS:
        key = "bf16 compiled"
    else:
        key = "bf16 plain"
    rate, source = PATH_RATES[key]
    return rate, source + label


def dry_run(configfiles: tuple[str, ...], target: str) -> str:
    """What ``snakemake -n`` prints for the config and target, into an empty results folder."""
    root = Path(__file__).resolve().parents[2]
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


# each pack of sigmas has a rule of its own, certify_packed_<run>_<i> (certify.smk): a
# rule's outputs are fixed in number. Counted together under this name.
PACKED_RULE = "certify_packed"


def rule_family(rule: str) -> str:
    """The rule as the plan counts it: every pack's rule as certify_packed."""
    return PACKED_RULE if rule.startswith(f"{PACKED_RULE}_") else rule


def rule_counts(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule, count in job_stats(output).items():
        if rule != "total":
            counts[rule_family(rule)] = counts.get(rule_family(rule), 0) + count
    return counts


def dag_wildcards(output: str, rule: str) -> list[dict[str, str]]:
    """The wildcards of every job of ``rule`` a dry run lists (one dict per job)."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", output):
        if block.startswith(f"rule {rule}:"):
            found = re.search(r"^\s*wildcards: (.*)$", block, re.M)
            jobs.append(dict(w.split("=", 1) for w in found[1].split(", ")) if found else {})
    return jobs


def dag_pairs(output: str) -> dict[tuple[str, str], int]:
    """(run, sigma) -> certification shards, from the certify_shard jobs a dry run lists
    and the sigmas its packed jobs certify (one shard each): what the DAG will run,
    whatever grid arithmetic would say."""
    pairs: dict[tuple[str, str], int] = {}
    for wildcards in dag_wildcards(output, "certify_shard"):
        if not wildcards:
            raise PeftsError("snakemake's dry run lists a certify_shard job without wildcards")
        key = (wildcards["runname"], wildcards["sigma"])
        pairs[key] = pairs.get(key, 0) + 1
    for run, sigmas in dag_packs(output):
        for sigma in sigmas:
            if (run, sigma) in pairs:
                raise PeftsError(f"snakemake's dry run certifies ({run}, sigma {sigma}) twice")
            pairs[run, sigma] = 1
    return pairs


# a packed job's output: the one shard of each of its sigmas (certify.smk)
PACKED_OUTPUT = re.compile(r"/certify/([^/]+)/sigma([^/]+)/shards/0-of-1\.tsv$")


def dag_packs(output: str) -> list[tuple[str, tuple[str, ...]]]:
    """(run, sigmas) of each packed job a dry run lists (certify_packed_* rules), read
    from the shard files it writes."""
    packs = []
    for block in re.split(r"\n(?=rule \w+:)", output):
        if not block.startswith(f"rule {PACKED_RULE}_"):
            continue
        found = re.search(r"^\s*output: (.*)$", block, re.M)
        matches = [PACKED_OUTPUT.search(f) for f in found[1].split(", ")] if found else [None]
        if not all(matches) or len({m[1] for m in matches}) != 1:
            raise PeftsError(f"snakemake's dry run lists a packed job whose outputs are not one "
                             f"run's shards: {block.splitlines()[0]}")
        packs.append((matches[0][1], tuple(m[2] for m in matches)))
    return packs


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
             PACKED_RULE, "certify_sound_shard")

# jobs of about this many minutes when certify.shards is auto (docs/cost.md: at the
# assumed 60 s start-up a full shard spends 2% of its time starting, and it fits the
# shortest common cluster time limit, an hour, with a third to spare for a slower GPU)
SHARD_MINUTES = 45.0
# replays of the default model's quantiles: enough draws that the estimate does not move
# with the seed (one image run to n_max = 100,000 is 200 samples on a 500-image mean)
MODEL_REPEATS = 20


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


def _stopping_plan(cert: dict[str, Any], sigma: float):
    from pefts.certification.adaptive import AdaptivePlan

    # the certifier stops on certify.grid (a setting of its own), not the summary radii
    return AdaptivePlan(sigma, cert["alpha"], cert["n"], tuple(cert["grid"]), cert.get("rtol"))


@functools.lru_cache(maxsize=256)
def _model_samples(dataset: str, sigma: float, alpha: float, n: int, grid: tuple[float, ...],
                   rtol: float | None) -> tuple[float, str]:
    from pefts.study.hit_rate_model import model_hit_rates

    p, how = model_hit_rates(dataset, sigma)
    plan = _stopping_plan({"alpha": alpha, "n": n, "grid": grid, "rtol": rtol}, sigma)
    return float(replay_samples(np.tile(p, MODEL_REPEATS), plan).mean()), how


def model_samples(config: dict[str, Any], sigma: float) -> tuple[float, str]:
    """Adaptive estimation samples per image at ``sigma`` without a replay: the config's
    stated ``certify.samples_per_image``, or the default model (pefts.study.hit_rate_model)
    through the certifier's own stopping rule."""
    cert = config["certify"]
    if cert.get("samples_per_image"):
        return float(cert["samples_per_image"]), "stated figure (certify.samples_per_image)"
    return _model_samples(config["dataset"]["name"], float(sigma), float(cert["alpha"]),
                          int(cert["n"]), tuple(map(float, cert["grid"])), cert.get("rtol"))


def adaptive_per_sigma(config: dict[str, Any], replays: list[tuple[str, float]],
                       replay_n: int | None, passes_per_image: float | None,
                       seed: int = 0) -> dict[float, tuple[float, str]]:
    """Estimation samples per image of adaptive certification at each sigma, and how: a
    stated figure, a replay, else the config's own estimate (``model_samples``)."""
    sigmas = sorted({float(s) for s in _all_sigmas(config)})
    if passes_per_image is not None:
        return {s: (passes_per_image, "stated figure (--passes-per-image)") for s in sigmas}
    if not replays:
        return {s: model_samples(config, s) for s in sigmas}
    cert = config["certify"]
    return {sigma: (float(replay_samples(p, _stopping_plan(cert, sigma), seed).mean()), how)
            for sigma, (p, how) in sigma_hit_rates(sigmas, replays, replay_n).items()}


def _all_sigmas(config: dict[str, Any]) -> list[float]:
    exp = config["experiments"]
    return [*config["sigmas"], exp["ablation"]["sigma"], *exp["noise_learning"]["sigmas"],
            *exp["twobirds"]["sigmas"]]


# --- shards sized by their work (certify.shards: auto) -----------------------------------

def shard_count(images: int, seconds: float, shard_minutes: float) -> int:
    """The fewest interleaved shards of ``images`` images, ``seconds`` of work in all,
    whose largest shard plans at most ``shard_minutes``; at least 1, at most one per
    image (an image is not split)."""
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if not (np.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
    if not shard_minutes > 0:
        raise ValueError(f"shard_minutes must be > 0, got {shard_minutes}")
    per_image = seconds / images
    fits = int(shard_minutes * 60 // per_image) if per_image > 0 else images
    return min(images, -(-images // max(1, fits)))


def certify_seconds(config: dict[str, Any], method: str, hparams: dict[str, Any], sigma: float,
                    images: int) -> float:
    """Planned seconds of certifying ``images`` images of one (run, sigma) as the config
    runs it: samples per image (fixed: n0 + n; adaptive: n0 + ``model_samples``) at the
    method's rate on the config's path."""
    from pefts.study.forward_cost import REFERENCE_GFLOP, forward_cost

    cert = config["certify"]
    samples = cert["n0"] + (model_samples(config, sigma)[0] if cert["adaptive"] else cert["n"])
    rate, _ = path_rate(cert["precision"], cert["merge_lora"], bool(cert.get("compile")), method)
    gflop = forward_cost(config, method, hparams).gflop
    return images * samples * gflop / (rate * REFERENCE_GFLOP)


def auto_shards(config: dict[str, Any], method: str, hparams: dict[str, Any], sigma: float,
                images: int) -> int:
    """``certify.shards: auto``: as many shards as the (run, sigma)'s planned work needs
    for jobs of about ``certify.shard_minutes``."""
    minutes = float(config["certify"].get("shard_minutes") or SHARD_MINUTES)
    return shard_count(images, certify_seconds(config, method, hparams, sigma, images), minutes)


def pack_sigmas(minutes: dict[str, float], limit: float) -> list[tuple[str, ...]]:
    """Groups of a run's single-shard sigmas, each certified by one job one after another
    (``certify.shards: auto``), whose planned minutes together are at most ``limit``:
    first fit in decreasing order of minutes, so few jobs. A sigma that does not fit
    with any other stays alone. Each group in increasing sigma, the groups by their
    first sigma (a fixed order: the DAG does not move between runs of Snakemake)."""
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    groups: list[list[str]] = []
    totals: list[float] = []
    for sigma in sorted(minutes, key=lambda s: (-minutes[s], float(s))):
        if not (np.isfinite(minutes[sigma]) and minutes[sigma] >= 0):
            raise ValueError(f"minutes of sigma {sigma} must be a finite number >= 0, "
                             f"got {minutes[sigma]}")
        fits = next((i for i, total in enumerate(totals) if total + minutes[sigma] <= limit), None)
        if fits is None:
            groups.append([sigma])
            totals.append(minutes[sigma])
        else:
            groups[fits].append(sigma)
            totals[fits] += minutes[sigma]
    return sorted((tuple(sorted(g, key=float)) for g in groups), key=lambda g: float(g[0]))


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
    pack: tuple[float, ...] = ()  # the sigmas one job certifies with this one (none: alone)


def certify_job_count(pairs: list[Pair]) -> int:
    """GPU jobs that certify ``pairs``: each shard of a pair alone, each pack once."""
    return (sum(p.shards for p in pairs if not p.pack)
            + len({(p.run, p.pack) for p in pairs if p.pack}))


def dag_cost_pairs(config: dict[str, Any], pairs: dict[tuple[str, str], int],
                   test_images: int | None,
                   packs: list[tuple[str, tuple[str, ...]]] = ()) -> list[Pair]:
    from pefts.study.experiments import Study
    from pefts.study.forward_cost import forward_cost

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
        pack = next((tuple(map(float, group)) for r, group in packs
                     if r == run and sigma in group), ())
        result.append(Pair(run, spec.method, float(sigma), images, shards, costs[run].gflop,
                           costs[run].source, pack))
    return result


def reference_gflop() -> float:
    """GFLOP of the forward pass the H200 rates were measured on (ViT-B/16 + LoRA rank 2
    at 224x224), counted by the same code as every run's, so only the ratio matters.
    Rounded like pefts.study.forward_cost.RECORDED, so the measured network matches itself."""
    from pefts.study.forward_cost import MEASURED_METHOD, count_forward

    measured = {"dataset": {"name": "imagenet"},
                "base": {"arch": "vit_base_patch16_224", "input_size": 224, "model_kwargs": {}}}
    return round(count_forward(measured, MEASURED_METHOD, {"rank": 2, "alpha": 2}).gflop, 3)


@dataclass
class Protocol:
    """A way to certify: samples per image by sigma, and the path its network takes."""

    name: str
    passes_per_image: dict[float, float]  # by sigma
    precision: str
    merged: bool = False
    compiled: bool = False
    override: float | None = None  # --rate / --rate-fixed: ViT-B/16 + LoRA's samples/s
    override_flag: str = "--rate"

    def rate(self, method: str) -> tuple[float, str]:
        """samples/s of ViT-B/16 on this path for ``method``, and the figure's source."""
        if self.override:
            return self.override, self.override_flag
        return path_rate(self.precision, self.merged, self.compiled, method)


def protocols(config: dict[str, Any], adaptive: dict[float, tuple[float, str]] | None,
              rate_fixed: float | None, rate_adaptive: float | None) -> list[Protocol]:
    """Fixed n (Cohen: fp32, unmerged) against the config's own path, fixed n and
    adaptive (when estimated)."""
    cert = config["certify"]
    precision, merged, compiled = cert["precision"], cert["merge_lora"], bool(cert.get("compile"))
    fixed = {float(s): float(cert["n0"] + cert["n"]) for s in _all_sigmas(config)}
    path = (f"{precision}" + (", merged LoRA" if merged else "")
            + (", compiled" if compiled else ""))
    rows = [
        Protocol(f"fixed n = {cert['n']:,} (Cohen, fp32)", fixed, "fp32", override=rate_fixed,
                 override_flag="--rate-fixed"),
        Protocol(f"fixed n = {cert['n']:,}, {path}", fixed, precision, merged, compiled, rate_adaptive),
    ]
    if adaptive is not None:
        rows.append(Protocol(f"adaptive, n_max = {cert['n']:,}, {path}",
                             {s: cert["n0"] + a for s, (a, _) in adaptive.items()}, precision,
                             merged, compiled, rate_adaptive))
    return rows


def pair_hours(pair: Pair, protocol: Protocol, reference: float) -> float:
    """GPU-hours of one (run, sigma): its forward passes at its path's measured rate,
    scaled by its FLOPs per forward against the measured network's."""
    rate = protocol.rate(pair.method)[0] * reference / pair.gflop
    return pair.images * protocol.passes_per_image[pair.sigma] / rate / 3600


def shard_minutes_planned(pair: Pair, protocol: Protocol, reference: float) -> float:
    """Planned minutes of the pair's largest shard (shards interleave images)."""
    largest = -(-pair.images // pair.shards)
    return pair_hours(pair, protocol, reference) * 60 * largest / pair.images


def longest_job_minutes(pairs: list[Pair], protocol: Protocol, reference: float) -> float:
    """Planned minutes of the longest certification job: a pair's largest shard, or a
    pack's sigmas one after another."""
    longest = [shard_minutes_planned(p, protocol, reference) for p in pairs if not p.pack]
    packs: dict[tuple[str, tuple[float, ...]], float] = {}
    for p in pairs:
        if p.pack:
            key = (p.run, p.pack)
            packs[key] = packs.get(key, 0.0) + pair_hours(p, protocol, reference) * 60
    return max([*longest, *packs.values()], default=0.0)


def cost_table(pairs: list[Pair], protocol_list: list[Protocol], reference: float,
               startup_hours: float) -> pd.DataFrame:
    rows = []
    # a run whose network could not be counted is priced at a lower bound: so is the sum
    at_least = ">= " if any(p.cost_source.startswith("lower bound") for p in pairs) else ""
    for protocol in protocol_list:
        passes = sum(p.images * protocol.passes_per_image[p.sigma] for p in pairs)
        hours = sum(pair_hours(p, protocol, reference) for p in pairs)
        rate, source = protocol.rate("lora")
        rows.append({"protocol": protocol.name, "(run, sigma)": len(pairs),
                     "images": sum(p.images for p in pairs), "forward passes": f"{passes:.3g}",
                     "samples/s (ViT-B/16 + LoRA)": f"{rate:,.0f}",
                     "certify GPU-h": f"{at_least}{hours:,.1f}",
                     "start-up GPU-h": f"{startup_hours:,.1f}",
                     "GPU-hours": f"{at_least}{hours + startup_hours:,.1f}",
                     "rate": source})
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
        rate, source = protocol.rate(first.method)
        rows.append({"run": run, "method": first.method,
                     "sigmas": ", ".join(f"{p.sigma:g}" for p in mine),
                     "images": sum(p.images for p in mine),
                     "shards": ", ".join(str(p.shards) for p in mine),
                     "jobs": _jobs_label(mine),
                     "longest job (min)": f"{longest_job_minutes(mine, protocol, reference):.1f}",
                     "GFLOP/forward": f"{first.gflop:.3g}",
                     "samples/s": f"{rate * reference / first.gflop:,.0f}",
                     "GPU-h": f"{'>= ' if lower else ''}{hours:,.2f}",
                     "cost per forward": _cost_source(first, reference, rate, source)})
    return pd.DataFrame(rows)


def _jobs_label(pairs: list[Pair]) -> str:
    """A run's certification jobs, with its packs: "1 (4 sigmas packed)"."""
    packs = list(dict.fromkeys(p.pack for p in pairs if p.pack))
    named = ", ".join(f"{len(pack)} sigmas packed" for pack in packs)
    return f"{certify_job_count(pairs)}" + (f" ({named})" if packs else "")


def _cost_source(pair: Pair, reference: float, rate: float, source: str) -> str:
    from pefts.study.forward_cost import MEASURED_METHOD

    if pair.method == MEASURED_METHOD and pair.gflop == reference:
        return f"{rate:,.0f}/s {source}"
    return f"{pair.cost_source}, x {reference / pair.gflop:.3f} of {rate:,.0f}/s {source}"


# --- training --------------------------------------------------------------------------

# training images of the datasets whose size is known without the data
TRAIN_IMAGES = {"cifar10": 50_000, "imagenet": 1_281_167}

# A training step's cost per image, in forwards of the network it runs (docs/cost.md):
# the forward, then the backward's input gradients (the same matmuls again) and, for
# weights that train, their gradients (once more). Fine-tuning every weight pays all
# three; PEFT backpropagates through the frozen base to reach the prompts, adapters or
# LoRA of its first layers, so it pays the input gradients of every layer and the weight
# gradients of almost none (its own few and the head's).
FULL_STEP = 3.0
PEFT_STEP = 2.0
PEFT_METHODS = ("lora", "prompt", "adapter")
UNTRAINED = ("none", "diffusion")


@dataclass
class TrainJob:
    """One training job of the DAG: what it trains, on how many images, at what cost."""

    job: str  # the rule
    run: str
    method: str
    sigma: str
    epochs: float
    images: int  # per epoch, after the validation hold-out
    gflop_per_image: float  # one training step's FLOPs per image, over its epochs' mean
    precision: str
    how: str
    forwards: float = 0.0  # SPSA: ViT-B/16 forwards in all, priced at the forward rate

    def hours(self, reference: float, rate: float | None = None) -> float:
        speed = rate or path_rate(self.precision, False, False, self.method)[0]
        if self.forwards:
            return self.forwards / speed / 3600
        return self.epochs * self.images * self.gflop_per_image / (speed * reference) / 3600


def _train_images(config: dict[str, Any], classes: int | None) -> int | None:
    name = config["dataset"]["name"]
    if name not in TRAIN_IMAGES:
        return None
    return round(TRAIN_IMAGES[name] * (classes or NUM_CLASSES[name]) / NUM_CLASSES[name])


def _step(config: dict[str, Any], method: str, hparams: dict[str, Any], train: Any
          ) -> tuple[float, float, str]:
    """(epochs, GFLOP per image and step averaged over them, how) of a method's training."""
    from pefts.methods import get_method
    from pefts.study.forward_cost import forward_cost

    net = forward_cost(config, method, hparams).gflop
    if method in PEFT_METHODS:
        return train.epochs, PEFT_STEP * net, f"{PEFT_STEP:g} x forward (PEFT: input gradients only)"
    if method in ("denoiser", "sunet"):
        classifier = forward_cost(config, "none", {}).gflop
        own = net - classifier
        stab = get_method(method, **hparams).stability_epochs(train)
        # MSE epochs: the denoiser alone; stability epochs: the frozen classifier's clean
        # forward, then its forward and input gradients on the denoised image
        total = train.epochs * FULL_STEP * own + stab * (FULL_STEP * own + 3 * classifier)
        epochs = train.epochs + stab
        return epochs, total / epochs, (f"{train.epochs:g} MSE epochs on the denoiser, {stab:g} "
                                        "stability epochs through the frozen classifier")
    return train.epochs, FULL_STEP * net, f"{FULL_STEP:g} x forward (every weight trains)"


def training_jobs(config: dict[str, Any], output: str) -> list[TrainJob]:
    """Every training job of the dry run, priced (the black box: its SPSA queries)."""
    from pefts.study.experiments import Study
    from pefts.training.loop import TrainConfig

    study = Study(config, local_weights=False)
    exp = config["experiments"]["twobirds"]
    target = len(exp["target_classes"])
    base_recipes = {"train_base": (config["base"]["train"], None),
                    "train_base_source": (exp.get("source_train") or config["base"]["train"],
                                          len(exp["source_classes"])),
                    "adapt_base": (exp["adapt_train"], target)}
    jobs = []
    for rule, (recipe, classes) in base_recipes.items():
        for _ in dag_wildcards(output, rule):
            train = TrainConfig.from_dict(recipe)
            images = _train_images(config, classes)
            if images is None:
                continue
            epochs, gflop, how = _step(config, "full", {}, train)
            jobs.append(TrainJob(rule, "base", "full", "", epochs, _kept(images, train), gflop,
                                 train.precision, how))
    blackbox = {row["run"]: row for row in blackbox_training(config).to_dict("records")}
    for wildcards in dag_wildcards(output, "finetune"):
        run = study.runs[wildcards["runname"]]
        images = _train_images(config, None if run.setup == "main" else target)
        train = TrainConfig.from_dict(run.train)
        if run.method in UNTRAINED or images is None:
            # still a GPU job, which pays its start-up
            jobs.append(TrainJob("finetune", wildcards["runname"], run.method, wildcards["sigma"],
                                 0, 0, 0.0, train.precision,
                                 "nothing trains" if images else "training set size unknown: "
                                 "not priced"))
            continue
        if run.method == "blackbox":
            row = blackbox.get(wildcards["runname"])
            if row is not None:
                jobs.append(TrainJob("finetune", wildcards["runname"], "blackbox", wildcards["sigma"],
                                     0, 0, 0, train.precision, "SPSA: 2 x perturbations CLIP "
                                     "queries and one encoder pass per image and step",
                                     forwards=row["ViT-B/16 forwards"] / row["sigmas"]))
            continue
        epochs, gflop, how = _step(config, run.method, run.hparams, train)
        jobs.append(TrainJob("finetune", wildcards["runname"], run.method, wildcards["sigma"],
                             epochs, _kept(images, train), gflop, train.precision, how))
    return jobs


def _kept(images: int, train: Any) -> int:
    return images - round(images * float(train.val_fraction))


def training_table(jobs: list[TrainJob], reference: float, rate: float | None) -> pd.DataFrame:
    """Per run: training jobs, epochs, images, GFLOP per image and step, GPU-hours."""
    rows = []
    for run in _run_order(j.run for j in jobs):
        mine = [j for j in jobs if j.run == run]
        first = mine[0]
        speed, source = (rate, "--rate") if rate else path_rate(first.precision, False, False,
                                                                first.method)
        rows.append({"run": run, "method": first.method, "jobs": len(mine),
                     "epochs": f"{first.epochs:g}" if not first.forwards else "SPSA",
                     "images/epoch": f"{first.images:,}" if not first.forwards else "",
                     "GFLOP/image/step": f"{first.gflop_per_image:.3g}" if not first.forwards else "",
                     "GPU-h": f"{sum(j.hours(reference, rate) for j in mine):,.2f}",
                     "model": first.how,
                     "rate": f"{speed:,.0f}/s {source} ({first.precision})"
                     if first.forwards or first.gflop_per_image else ""})
    return pd.DataFrame(rows)


def _run_order(runs) -> list[str]:
    """The base first, then by name: the dry run lists jobs in no fixed order, and a
    regenerated page must not reorder its rows."""
    return sorted(set(runs), key=lambda r: (r != "base", r))


def study_table(pairs: list[Pair], protocol: Protocol, jobs: list[TrainJob], reference: float,
                rate: float | None, startup_s: float, cpu_jobs: int) -> pd.DataFrame:
    """The whole study per run in GPU-hours: training, certification, start-up, total."""
    rows = []
    runs = _run_order([*(j.run for j in jobs), *(p.run for p in pairs)])
    for run in runs:
        trains = [j for j in jobs if j.run == run]
        certs = [p for p in pairs if p.run == run]
        train_h = sum(j.hours(reference, rate) for j in trains)
        cert_h = sum(pair_hours(p, protocol, reference) for p in certs)
        gpu_jobs = len(trains) + certify_job_count(certs)
        method = (trains or certs)[0].method if run != "base" else "base classifier"
        rows.append({"run": run, "method": method, "training GPU-h": train_h,
                     "certify GPU-h": cert_h, "GPU jobs": gpu_jobs,
                     "start-up GPU-h": gpu_jobs * startup_s / 3600})
    frame = pd.DataFrame(rows)
    frame["GPU-h"] = frame["training GPU-h"] + frame["certify GPU-h"] + frame["start-up GPU-h"]
    total = {"run": "**total**", "method": f"(+ {cpu_jobs} CPU jobs: data, merges, tables)",
             **{c: frame[c].sum() for c in ("training GPU-h", "certify GPU-h", "GPU jobs",
                                              "start-up GPU-h", "GPU-h")}}
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    for column in ("training GPU-h", "certify GPU-h", "start-up GPU-h", "GPU-h"):
        frame[column] = frame[column].map(lambda h: f"{h:,.2f}")
    return frame


def blackbox_training(config: dict[str, Any], rate: float | None = None) -> pd.DataFrame:
    """GPU-hours of the black box's SPSA training, per run: every step queries the
    black box 2 x perturbations times on the batch (BlackVIP: 10 CLIP ViT-B/16 forwards
    per image) and runs the coordinator's encoder once (its features are shared by the
    step's queries); the decoder's cost is negligible beside them. Both networks are
    ViT-B/16s, so the certifier's plain ViT-B/16 rate at the training precision applies."""
    from pefts.methods import get_method
    from pefts.study.experiments import Study

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
        speed, source = (rate, "--rate") if rate else path_rate(precision, False, False, "blackbox")
        rows.append({"run": name, "sigmas": sigmas, "SPSA steps": steps, "batch": batch,
                     "ViT-B/16 forwards": forwards, "samples/s": speed,
                     "GPU-hours": round(forwards / speed / 3600, 2), "rate": source})
    return pd.DataFrame(rows)
