"""The per-image rows of ``pefts certify`` (Cohen's CERTIFY) and ``pefts predict``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pefts.certification.adaptive import AdaptivePlan, fixed_plan
from pefts.certification.noise import ESTIMATION, generator
from pefts.certification.pool import Pool, PoolResult
from pefts.certification.shard_io import RowSource
from pefts.certification.smoothing import Smooth

CERTIFY_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "n0", "n", "nA", "pA_lower"]
# n_used: estimation samples the image used; the radius is valid at any n_used <= n_max
ADAPTIVE_COLUMNS = [*CERTIFY_COLUMNS[:6], "n0", "n_used", "nA", "pA_lower", "n_max", "precision"]
PREDICT_COLUMNS = ["idx", "label", "predict", "correct", "time", "n"]


def per_image(dataset: Dataset, row: Callable[[torch.Tensor, int, int], list[Any]]) -> RowSource:
    """A row source that handles one image at a time, in order."""

    def rows(todo: list[int]) -> Iterator[list[Any]]:
        for idx in todo:
            x, label = dataset[idx]
            yield row(x, int(label), idx)

    return rows


def pooled_rows(model: nn.Module, dataset: Dataset, num_classes: int, plan: AdaptivePlan,
                n0: int, batch: int, pool: int, seed: int, device: torch.device | str,
                cells: Callable[[PoolResult], list[Any]], sound: bool = False) -> RowSource:
    """Certify a pool of images at once under ``plan``; rows come as images finish."""
    runner = Pool(model, num_classes, plan, n0, seed, device, batch, pool, sound)

    def rows(todo: list[int]) -> Iterator[list[Any]]:
        images = ((idx, *dataset[idx]) for idx in todo)
        for r in runner.run(images):
            yield [r.idx, r.label, r.prediction, repr(r.radius), int(r.prediction == r.label),
                   f"{r.seconds:.4f}", n0, *cells(r)]

    return rows


def certify_rows(model: nn.Module, dataset: Dataset, num_classes: int, sigma: float, n0: int,
                 n: int, alpha: float, batch: int, seed: int, device: torch.device | str,
                 precision: str = "fp32", pool: int = 256, sound: bool = False) -> RowSource:
    """Cohen's CERTIFY rows: adaptive certification with a single look at n (same noise,
    same hits as an adaptive image that runs to n_max = n); his columns, unchanged."""
    extra = [precision] if precision != "fp32" else []
    return pooled_rows(model, dataset, num_classes, fixed_plan(sigma, alpha, n), n0, batch, pool,
                       seed, device, lambda r: [n, r.n_a, repr(r.p_a_lower), *extra], sound)


def adaptive_rows(model: nn.Module, dataset: Dataset, num_classes: int, plan: AdaptivePlan,
                  n0: int, batch: int, pool: int, seed: int, device: torch.device | str,
                  precision: str = "fp32", sound: bool = False) -> RowSource:
    """Adaptive certification of a pool of images at once; rows come as images finish."""
    return pooled_rows(model, dataset, num_classes, plan, n0, batch, pool, seed, device,
                       lambda r: [r.n_used, r.n_a, repr(r.p_a_lower), plan.n_max, precision],
                       sound)


def predict_rows(model: nn.Module, dataset: Dataset, num_classes: int, sigma: float, n: int,
                 alpha: float, batch: int, seed: int, device: torch.device | str) -> RowSource:
    smooth = Smooth(model, num_classes, sigma)

    def row(x: torch.Tensor, label: int, idx: int) -> list[Any]:
        start = time.perf_counter()
        pred = smooth.predict(x, n, alpha, batch, generator(seed, idx, ESTIMATION, device))
        elapsed = time.perf_counter() - start
        return [idx, label, pred, int(pred == label), f"{elapsed:.4f}", n]

    return per_image(dataset, row)
