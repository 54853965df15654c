"""`pefts benchmark-adaptive`: fixed n against adaptive certification, side by side.

The same images are certified with Cohen's fixed n (two noise seeds, to show how much
two honest runs differ) and adaptively with n_max = n. Forward passes are counted at the
network's input, so samples an image ran ahead and never used are counted too.

The betting confidence sequence is compared with the union-bound Clopper-Pearson one by
simulation on the images' own hit rates (from the first fixed-n run): both sequences see
the same simulated hits and stop by the same rule, so the difference is the sequences'.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from pefts.benchmarks.throughput import synchronize
from pefts.certification.adaptive import AdaptivePlan
from pefts.certification.sequences import betting_lower_bounds, cp_lower


class Counting(nn.Module):
    """Counts the inputs the network sees: forward passes measured, not inferred."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.passes = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += len(x)
        return self.net(x)


@dataclass
class CertifyRun:
    name: str
    rows: pd.DataFrame
    passes: int
    seconds: float

    def accuracy(self, radii: list[float]) -> list[int]:
        """Certified images (correct with radius >= r) at each radius: counts, not rates."""
        frame = self.rows
        return [int(((frame["correct"] == 1) & (frame["radius"] >= r)).sum()) for r in radii]


def certify_run(name: str, net: nn.Module, rows_of, indices: list[int], columns: list[str],
                device: torch.device) -> CertifyRun:
    """Run one row source over ``indices`` and time it, counting the network's inputs."""
    counting = Counting(net).eval()
    synchronize(device)
    start = time.perf_counter()
    rows = list(rows_of(counting)(indices))
    synchronize(device)
    seconds = time.perf_counter() - start
    return CertifyRun(name, pd.DataFrame(rows, columns=columns).astype({"radius": float}),
                      counting.passes, seconds)


def compare_table(runs: list[CertifyRun], radii: list[float]) -> pd.DataFrame:
    """Side by side: passes, time, throughput and certified counts per grid radius."""
    table = {"measure": ["forward passes", "wall s", "samples/s"] + [f"certified r={r:g}"
                                                                     for r in radii]}
    for run in runs:
        table[run.name] = [run.passes, round(run.seconds, 2), round(run.passes / run.seconds)] + \
            run.accuracy(radii)
    return pd.DataFrame(table, dtype=object)  # counts stay integers, not 2.50161e+06


def simulate_sequences(p_hats: list[float], plan: AdaptivePlan, seed: int = 0) -> pd.DataFrame:
    """Samples each sequence needs, and the radius it certifies, per simulated image.

    Each image draws Bernoulli(p) hits up to n_max; both sequences look at the same
    counts, share the futility bound, and stop by ``plan.settled``.
    """
    rng = np.random.default_rng(seed)
    counts = plan.looks.counts
    rows = []
    for image, p in enumerate(p_hats):
        hits = rng.random(plan.n_max) < p
        h = [int(a) for a in np.cumsum(hits)[np.array(counts) - 1]]
        # the bounds plan.look computes, at every look
        upper = plan.futility_upper(np.array(h), np.array(counts))
        union = [cp_lower(a, t, b) for a, t, b in zip(h, counts, plan.looks.budgets, strict=True)]
        lowers = {"union-bound CP": np.maximum.accumulate(union),
                  "betting": betting_lower_bounds(hits, plan.alpha, np.array(counts))}
        for name, lower in lowers.items():
            stop = next((k for k in range(len(counts) - 1) if plan.settled(lower[k], upper[k])),
                        len(counts) - 1)
            rows.append({"image": image, "p": p, "sequence": name, "samples": int(counts[stop]),
                         "radius": plan.radius(float(lower[stop]))})
    return pd.DataFrame(rows)


@dataclass
class Comparison:
    """What ``pefts benchmark-adaptive`` prints: the side-by-side table and its summary."""

    table: pd.DataFrame
    runs: list[CertifyRun]
    gap: int  # largest certified-count difference up to 2 sigma, adaptive vs fixed
    spread: float  # the same between the first two fixed-n seeds (nan: one seed)
    simulated: pd.Series  # estimation samples per confidence sequence, simulated

    def summary(self) -> list[str]:
        fixed, adaptive = self.runs[0], self.runs[-1]
        rate = (adaptive.passes / adaptive.seconds) / (fixed.passes / fixed.seconds)
        return [
            f"passes fixed/adaptive = {fixed.passes / adaptive.passes:.1f}x; samples/s "
            f"adaptive/fixed = {rate:.2f}; largest certified-count difference up to 2 sigma: "
            f"adaptive vs fixed {self.gap}, fixed seed vs seed "
            + ("n/a (one seed)" if math.isnan(self.spread) else f"{self.spread:g}"),
            "confidence sequences simulated on these images' fixed-n hit rates (same hits, "
            "same stopping rule): estimation samples in total "
            + ", ".join(f"{name} {int(total):,}" for name, total in self.simulated.items()),
        ]


def compare(net: nn.Module, dataset, num_classes: int, indices: list[int], sigma: float,
            n: int, n0: int, alpha: float, radii: list[float], batch: int, pool: int,
            seeds: list[int], device: torch.device) -> Comparison:
    """Certify ``indices`` with fixed n (one run per seed) and adaptively with n_max = n."""
    from pefts.certification.rows import (
        ADAPTIVE_COLUMNS,
        CERTIFY_COLUMNS,
        adaptive_rows,
        certify_rows,
    )

    plan = AdaptivePlan(sigma, alpha, n, tuple(radii))
    runs = [certify_run(f"fixed n seed {s}", net,
                        lambda m, s=s: certify_rows(m, dataset, num_classes, sigma, n0, n, alpha,
                                                    batch, s, device, pool=pool),
                        indices, CERTIFY_COLUMNS, device) for s in seeds]
    runs.append(certify_run("adaptive", net,
                            lambda m: adaptive_rows(m, dataset, num_classes, plan, n0, batch, pool,
                                                    seeds[0], device),
                            indices, ADAPTIVE_COLUMNS, device))
    fixed, adaptive = runs[0], runs[-1]
    within = [r for r in radii if r <= 2 * sigma + 1e-12]

    def largest_difference(a: CertifyRun, b: CertifyRun) -> int:
        return max(abs(x - y) for x, y in zip(a.accuracy(within), b.accuracy(within), strict=True))

    spread = largest_difference(fixed, runs[1]) if len(runs) > 2 else float("nan")
    simulated = simulate_sequences((fixed.rows["nA"] / fixed.rows["n"]).tolist(), plan, seeds[0])
    return Comparison(compare_table(runs, radii), runs, largest_difference(fixed, adaptive), spread,
                      simulated.groupby("sequence", sort=False)["samples"].sum())
