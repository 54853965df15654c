"""`pefts benchmark-replay`: fixed n, our stopping rule and an oracle, replayed on the hit
rates of a certification log.

A Cohen-format TSV (``idx label predict radius correct time``) gives each image's hit
rate p = Phi(radius / sigma) (its pA_lower; a little below the true rate); an abstention
(predict -1, radius 0) has no rate in the log and gets ``abstain_p`` (default 1/2: the
costliest rate for any stopping rule, since it sits on the r = 0 threshold). A log
with ``nA`` and ``n`` columns (ours) gives p = nA / n instead.

* Fixed n: Cohen's one look at n, alpha; n0 + n passes per image.
* Ours: ``AdaptivePlan.replay``, the certifier's own rule on hits drawn per look chunk,
  coupled with fixed n (fixed n's hits are the rule's hits at n_max, as in the pool).
* The oracle knows p. Per image it takes n0 plus the fewest n at which Cohen's one-look
  test at alpha, seeing floor(p n) hits, certifies the largest grid radius that fixed n
  certifies with floor(p n_max) hits (n0 alone where that is none). "Fewest" is found by
  bisection on n: the bound at floor(p n) hits rises with n up to the rounding of
  floor(p n), a few samples.

Counts are certified images (correct, radius >= r) at each grid radius; fixed n and ours
are means over ``reps`` replays, drawn as vectorised binomials (no loop over samples).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.bounds import lower_confidence_bounds
from pefts.errors import PeftsError
from pefts.study.plan import check_column

SIGMA_IN_PATH = re.compile(r"sigma_?(\d+(?:\.\d+)?)")


@dataclass
class Log:
    name: str
    sigma: float
    p: np.ndarray
    correct: np.ndarray  # bool: the smoothed prediction is the label


def read_log(path: str | Path, sigma: float | None = None, abstain_p: float = 0.5) -> Log:
    """Hit rates and correctness of a certification TSV; sigma from the argument or from
    a ``sigma_X`` part of its path (Cohen's layout)."""
    if sigma is None:
        found = SIGMA_IN_PATH.findall(str(path))
        if not found:
            raise PeftsError(f"{path}: give its sigma (--sigma); none in the path")
        sigma = float(found[-1])
        if sigma <= 0:
            raise PeftsError(f"{path}: sigma {sigma:g} read from its path (sigma_X) must be "
                             "> 0; give its sigma (--sigma)")
    try:
        rows = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PeftsError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    missing = {"predict", "correct"} - set(rows.columns)
    if missing or not ({"radius"} <= set(rows.columns) or {"nA", "n"} <= set(rows.columns)):
        raise PeftsError(f"{path} is not a certification TSV (columns: {', '.join(rows.columns)})")
    # every number through the checked reader of `pefts plan --replay`: a nan or negative
    # radius would otherwise replay as a confident hit rate
    if {"nA", "n"} <= set(rows.columns):
        check_column(path, rows, "nA", 0)
        check_column(path, rows, "n", 1)
        p = rows["nA"] / rows["n"]
    else:
        check_column(path, rows, "radius", 0)
        p = pd.Series(norm.cdf(rows["radius"] / sigma))
    p = np.where(rows["predict"] == -1, abstain_p, p).astype(float)
    if len(p) == 0 or not np.all((p >= 0) & (p <= 1)):
        raise PeftsError(f"{path}: hit rates must lie in [0, 1]")
    return Log(str(path), sigma, p, (rows["correct"] == 1).to_numpy())


def fixed_lower(hits: np.ndarray, n: int, alpha: float) -> np.ndarray:
    return lower_confidence_bounds(hits, n, alpha)


def oracle_samples(p: np.ndarray, thresholds: np.ndarray, n: int, alpha: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the oracle's estimation samples (0: fixed n certifies nothing) and the
    threshold it certifies (nan: none)."""
    lower = fixed_lower(np.floor(p * n), n, alpha)
    ok = lower[:, None] >= thresholds[None, :]
    target = np.where(ok.any(1), np.where(ok, thresholds[None, :], -np.inf).max(1), np.nan)
    lo, hi = np.zeros(len(p)), np.full(len(p), float(n))  # bound(lo) < target <= bound(hi)
    while np.any(hi - lo > 1):
        mid = np.floor((lo + hi) / 2)
        good = fixed_lower(np.floor(p * mid), mid, alpha) >= target
        lo, hi = np.where(good, lo, mid), np.where(good, mid, hi)
    return np.where(np.isnan(target), 0, hi).astype(np.int64), target


@dataclass
class Replay:
    """One log on one grid: passes and certified counts of fixed n, ours and the oracle."""

    log: Log
    radii: list[float]
    passes: dict[str, float]
    counts: dict[str, np.ndarray]

    @property
    def images(self) -> int:
        return len(self.log.p)


def replay(log: Log, radii: list[float], n: int, n0: int, alpha: float, reps: int,
           rng: np.random.Generator) -> Replay:
    plan = AdaptivePlan(log.sigma, alpha, n, tuple(radii))
    thresholds = np.array(plan.thresholds)
    radii = sorted(set(radii))

    def certified(lower: np.ndarray) -> np.ndarray:
        return ((lower[:, None] >= thresholds) & log.correct[:, None]).sum(0)

    ours_passes, ours, fixed = 0.0, np.zeros(len(radii)), np.zeros(len(radii))
    for _ in range(reps):
        used, lower, hits = plan.replay(log.p, rng)
        ours_passes += float((used + n0).sum()) / reps
        ours += certified(lower) / reps
        fixed += certified(fixed_lower(hits, n, alpha)) / reps
    samples, target = oracle_samples(log.p, thresholds, n, alpha)
    oracle = certified(np.where(np.isnan(target), 0.0, target))
    return Replay(log, radii, {"fixed n": float(len(log.p) * (n0 + n)), "ours": ours_passes,
                               "oracle": float((samples + n0).sum())},
                  {"fixed n": fixed, "ours": ours, "oracle": oracle.astype(float)})


def grid_of(spec: str, sigma: float) -> list[float]:
    """A grid: ``sigma`` (0 to 2 sigma in steps of sigma / 4), radii ``0,0.25,...``, or a
    YAML config whose ``certify.grid`` it is."""
    if spec == "sigma":
        return [sigma * k / 4 for k in range(9)]
    if spec.endswith((".yaml", ".yml")):
        import yaml

        try:
            grid = yaml.safe_load(Path(spec).read_text())["certify"]["grid"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
            raise PeftsError(f"{spec}: no certify.grid in it ({type(err).__name__})") from None
        return checked_radii(grid, f"{spec}: certify.grid")
    try:
        radii = [float(r) for r in spec.split(",")]
    except ValueError:
        raise PeftsError(f"--grid must be 'sigma', radii like 0,0.5,1 or a config .yaml; "
                         f"got {spec!r}") from None
    return checked_radii(radii, "--grid radii")


def checked_radii(values: Any, where: str) -> list[float]:
    """A non-empty list of finite radii >= 0 (from a YAML file: numbers, never text)."""
    radii = values if isinstance(values, list) else []
    if not radii or any(isinstance(r, bool) or not isinstance(r, int | float)
                        or not np.isfinite(r) or r < 0 for r in radii):
        raise PeftsError(f"{where} must be a non-empty list of finite numbers >= 0, "
                         f"got {values!r}")
    return [float(r) for r in radii]


def ratio(replays: list[Replay], a: str, b: str) -> float:
    return sum(r.passes[a] for r in replays) / sum(r.passes[b] for r in replays)


def worst_gap(replays: list[Replay]) -> float:
    """Largest |ours - fixed n| certified count at any radius of any log, in % of its images."""
    return max(float(np.max(np.abs(r.counts["ours"] - r.counts["fixed n"]))) / r.images * 100
               for r in replays)


def table(replays: list[Replay]) -> pd.DataFrame:
    """One row per (log, radius) with certified counts, one per log with passes."""
    rows = []
    for r in replays:
        name = short_name(r.log.name)
        rows.append({"log": name, "measure": "passes / image",
                     **{k: f"{v / r.images:,.0f}" for k, v in r.passes.items()}})
        for i, radius in enumerate(r.radii):
            rows.append({"log": name, "measure": f"certified r={radius:g}",
                         **{k: f"{v[i]:.1f}" for k, v in r.counts.items()}})
    return pd.DataFrame(rows)


def short_name(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-5:]) if len(parts) >= 5 else path


def summary(replays: list[Replay]) -> str:
    return (f"{len(replays)} logs, {sum(r.images for r in replays)} images: passes fixed/ours "
            f"{ratio(replays, 'fixed n', 'ours'):.1f}x, fixed/oracle "
            f"{ratio(replays, 'fixed n', 'oracle'):.1f}x, ours/oracle "
            f"{ratio(replays, 'ours', 'oracle'):.2f}x; largest certified-count gap ours vs "
            f"fixed n {worst_gap(replays):.2f}% of a log's images")
