"""Certify any torch classifier from Python: ``pefts.certify(model, images, labels, sigma)``.

The pipeline's certifier (``pefts.certification.pool.Pool``) with its options, on images
in memory, returning the rows ``pefts certify`` writes (Cohen's columns first) as a
pandas DataFrame. Noise depends only on (seed, image index), as in the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from pefts.errors import PeftsError

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def certify(model: nn.Module, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
            sigma: float, *, n: int = 100_000, n0: int = 100, alpha: float = 0.001,
            adaptive: bool = True, grid: Sequence[float] = GRID, rtol: float | None = None,
            precision: str = "fp32", batch: int = 1000, pool: int = 256, sound: bool = False,
            seed: int = 0, num_classes: int | None = None,
            device: torch.device | str | None = None) -> pd.DataFrame:
    """Certify ``images`` (N, C, H, W) in [0, 1] with randomized smoothing at ``sigma``.

    ``model`` maps a batch of such images to logits; put normalisation and resizing inside
    it, so radii are L2 distances in the [0, 1] pixel space. Adaptive (anytime-valid,
    stopping once every radius of ``grid`` is settled or at ``n`` samples) by default;
    ``adaptive=False`` is Cohen's CERTIFY with fixed ``n``. ``precision`` autocasts the
    network (bf16, fp16); ``sound`` is Voracek & Hein's procedure (images must be on the
    8-bit grid). Returns one row per image: idx label predict radius correct time, then
    the counts (n0, n or n_used, nA, pA_lower, ...); predict -1 is an abstention.
    """
    from pefts.certification.adaptive import AdaptivePlan, fixed_plan
    from pefts.certification.fastpath import executed
    from pefts.certification.feasibility import check_can_certify
    from pefts.certification.pool import Pool
    from pefts.certification.smoothing import check_sampling_args

    images = torch.as_tensor(images)
    labels = [int(y) for y in torch.as_tensor(labels).reshape(-1)]
    if images.dim() != 4 or len(images) != len(labels):
        raise PeftsError(f"images must be (N, C, H, W) with one label each, got shape "
                         f"{tuple(images.shape)} and {len(labels)} labels")
    if sigma <= 0:
        raise PeftsError(f"sigma must be positive, got {sigma}")
    check_sampling_args(n0, n, alpha, batch)
    check_can_certify(n, alpha, adaptive, "n")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    net = executed(model, precision)
    if num_classes is None:
        with torch.inference_mode():
            num_classes = int(net(images[:1].to(device, torch.float32)).shape[1])
    if adaptive:
        plan = AdaptivePlan(sigma, alpha, n, tuple(grid), rtol)
    else:
        plan = fixed_plan(sigma, alpha, n)
    runner = Pool(net, num_classes, plan, n0, seed, device, batch, pool, sound)
    rows = [{"idx": r.idx, "label": r.label, "predict": r.prediction, "radius": r.radius,
             "correct": int(r.prediction == r.label), "time": r.seconds, "n0": n0,
             ("n_used" if adaptive else "n"): r.n_used, "nA": r.n_a, "pA_lower": r.p_a_lower}
            for r in runner.run((i, images[i], labels[i]) for i in range(len(labels)))]
    frame = pd.DataFrame(rows).sort_values("idx").reset_index(drop=True)
    frame.attrs.update(sigma=sigma, alpha=alpha, n=n, adaptive=adaptive, precision=precision,
                       sound=sound, seed=seed)
    return frame
