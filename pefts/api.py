"""Certify any torch classifier from Python: ``pefts.certify(model, images, labels, sigma)``.

The pipeline's certifier (``pefts.certification.pool.Pool``) with its options, on images
in memory, returning the rows ``pefts certify`` writes (Cohen's columns first) as a
pandas DataFrame that prints how it was certified above the table. Noise depends only on
(seed, image index), as in the pipeline. Every argument is checked first
(``pefts.certification.arguments``): a bad one raises a ValueError or TypeError naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from pefts.errors import PeftsError, PeftsTypeError

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# progress=None shows a bar on a terminal, or (notebooks, logs) from this many images on
PROGRESS_FROM = 16
# clean images the model's output is checked on before any noise is drawn
PROBE = 4


class CertifiedRows(pd.DataFrame):
    """``pefts.certify``'s rows: a DataFrame whose ``print`` starts with ``summary()``,
    the line that says how they were certified (its ``attrs`` hold the settings)."""

    @property
    def _constructor(self) -> type[CertifiedRows]:
        return CertifiedRows

    def summary(self) -> str:
        """"pefts.certify: adaptive, n_max 1000 (grid 0,0.25), n0 100, alpha 0.001, sigma
        0.25, ..." from the settings in ``attrs`` and the rows shown; "" without them."""
        a = self.attrs
        if "sigma" not in a:
            return ""
        if a["adaptive"]:
            stop = f"rtol {a['rtol']:g}" if a.get("rtol") else \
                "grid " + ",".join(f"{r:g}" for r in a["grid"])
            mode = f"adaptive, n_max {a['n']} ({stop})"
        else:
            mode = f"fixed n {a['n']}"
        text = (f"pefts.certify: {mode}, n0 {a['n0']}, alpha {a['alpha']:g}, sigma {a['sigma']:g}, "
                f"{a['precision']}, sound={a['sound']}, seed {a['seed']}")
        used = "n_used" if "n_used" in self.columns else "n"
        if {used, "n0", "predict", "correct"} <= set(self.columns):
            samples = int(self[used].sum() + self["n0"].sum())
            text += (f"; {len(self)} images, {samples:,} samples used (n0 + {used}), "
                     f"{int(self['correct'].sum())} correct, {int((self['predict'] < 0).sum())} "
                     "abstained")
        return text

    def __repr__(self) -> str:
        head = self.summary()
        body = super().__repr__()
        return f"{head}\n{body}" if head else body

    def _repr_html_(self) -> str | None:
        body = super()._repr_html_()
        head = self.summary()
        return f"<p>{head}</p>{body}" if head and body else body


def certify(model: nn.Module, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
            sigma: float, *, n: int = 100_000, n0: int = 100, alpha: float = 0.001,
            adaptive: bool = True, grid: Sequence[float] | None = None, rtol: float | None = None,
            precision: str = "fp32", batch: int = 1000, pool: int = 256, sound: bool = False,
            seed: int = 0, num_classes: int | None = None,
            device: torch.device | str | None = None,
            progress: bool | None = None) -> CertifiedRows:
    """Certify ``images`` (N, C, H, W) in [0, 1] with randomized smoothing at ``sigma``.

    ``model`` maps a batch of such images to logits (N, classes); put normalisation and
    resizing inside it, so radii are L2 distances in the [0, 1] pixel space. Adaptive
    (anytime-valid, stopping once every radius of ``grid`` (default 0, 0.25, ..., 1) is
    settled, or the radius is within ``rtol``, or at ``n`` samples) by default;
    ``adaptive=False`` is Cohen's CERTIFY with fixed ``n``. ``precision`` autocasts the
    network (bf16, fp16); ``sound`` is Voracek & Hein's procedure (images must be on the
    8-bit grid). ``device`` defaults to the model's; the model's train/eval mode is
    restored afterwards. ``progress`` shows a bar of images done (None: on a terminal, or
    from 16 images). Returns one row per image: idx label predict radius correct time,
    then the counts (n0, n or n_used, nA, pA_lower, ...); predict -1 is an abstention.
    ``print`` shows the settings above the rows (``rows.summary()``, ``rows.attrs``).

    Raises ValueError (``pefts.errors.PeftsError``), or TypeError where the type is wrong,
    naming the argument: images off [0, 1] or not finite, labels outside [0, classes),
    a model output that is not finite logits (N, num_classes), a model on another device.
    """
    from pefts.certification.adaptive import AdaptivePlan, fixed_plan
    from pefts.certification.arguments import (
        CERTIFY_ARGUMENTS,
        certify_device,
        check_argument,
        check_images,
        check_label_range,
        check_labels,
        check_logits,
        check_radius_cap,
    )
    from pefts.certification.fastpath import executed
    from pefts.certification.feasibility import check_can_certify
    from pefts.certification.pool import Pool
    from pefts.progress import progress as progress_bar

    if not isinstance(model, nn.Module):
        raise PeftsTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    given = dict(sigma=sigma, n=n, n0=n0, alpha=alpha, adaptive=adaptive,
                 grid=GRID if grid is None else grid, rtol=rtol, precision=precision,
                 batch=batch, pool=pool, sound=sound, seed=seed, num_classes=num_classes,
                 progress=progress)
    args: dict[str, Any] = {name: check_argument(name, value) for name, value in given.items()
                            if name in CERTIFY_ARGUMENTS}
    if not args["adaptive"] and (grid is not None or rtol is not None):
        option = "grid" if grid is not None else "rtol"
        raise PeftsError(f"{option} applies only with adaptive=True (fixed n samples n for "
                         f"every image): drop {option} or set adaptive=True")
    check_can_certify(args["n"], args["alpha"], args["adaptive"], "n")
    check_radius_cap(args["sigma"], args["n"], args["alpha"], args["adaptive"])
    images = check_images(images)
    label_tensor = check_labels(labels, len(images))
    device = certify_device(model, device)

    modes = {module: module.training for module in model.modules()}
    try:  # executed() puts the model in eval mode: the caller's modes come back after
        net = executed(model, args["precision"])
        if len(images):
            with torch.inference_mode():
                out = net(images[:PROBE].to(device, torch.float32))
            classes = check_logits(out, len(images[:PROBE]), args["num_classes"], model)
        else:  # nothing to run the model on
            classes = args["num_classes"] or 0
        label_list = check_label_range(label_tensor, classes) if len(images) else []
        if args["adaptive"]:
            plan = AdaptivePlan(args["sigma"], args["alpha"], args["n"], tuple(args["grid"]),
                                args["rtol"])
        else:
            plan = fixed_plan(args["sigma"], args["alpha"], args["n"])
        rows = []
        if len(images):
            runner = Pool(net, classes, plan, args["n0"], args["seed"], device, args["batch"],
                          args["pool"], args["sound"])
            show = args["progress"]
            if show is None:
                show = sys.stderr.isatty() or len(images) >= PROGRESS_FROM
            results = runner.run((i, images[i], label_list[i]) for i in range(len(images)))
            with progress_bar(total=len(images), unit="image", desc="certify",
                              disable=not show, leave=False) as bar:
                for r in results:
                    rows.append(_row(r, args))
                    bar.update()
    finally:
        for module, training in modes.items():
            module.train(training)
    used = "n_used" if args["adaptive"] else "n"
    columns = ["idx", "label", "predict", "radius", "correct", "time", "n0", used, "nA", "pA_lower"]
    kinds = {c: float if c in ("radius", "time", "pA_lower") else int for c in columns}
    frame = CertifiedRows(pd.DataFrame(rows, columns=columns).astype(kinds).sort_values("idx")
                          .reset_index(drop=True))
    frame.attrs.update(sigma=args["sigma"], alpha=args["alpha"], n=args["n"],
                       n0=args["n0"], adaptive=args["adaptive"], grid=list(args["grid"]),
                       rtol=args["rtol"], precision=args["precision"], sound=args["sound"],
                       seed=args["seed"], n_max=plan.n_max)
    return frame


def _row(r: Any, args: dict[str, Any]) -> dict[str, Any]:
    # an abstention (-1) is never correct, whatever the label
    correct = int(r.prediction >= 0 and r.prediction == r.label)
    used = "n_used" if args["adaptive"] else "n"
    return {"idx": r.idx, "label": r.label, "predict": r.prediction, "radius": r.radius,
            "correct": correct, "time": r.seconds, "n0": args["n0"], used: r.n_used,
            "nA": r.n_a, "pA_lower": r.p_a_lower}
