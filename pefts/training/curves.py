"""Training curves: every training job writes one row per epoch (and one at the run's
end) beside its weights, ``<weights>.curve.tsv``, so a run that diverges or stalls is
seen before it is certified and the plan's training rates can be checked against the
measured samples per second.

A row: the stage (the denoisers train MSE, then stability), the epoch and step reached,
the loss and the noisy training accuracy over that epoch's batches (as the progress bar
shows them), the validation accuracy on the held-out split when the run has one (else
empty, and ``validation`` says why), the learning rate of the epoch's last step (SPSA's
step size a_k for the black box), the samples per second of the epoch's training alone
(validation excluded) and the statistics the objective reports.

Resumable like the training (pefts.training.checkpoints): a run resumed from its checkpoint keeps
the rows written before the kill and replaces any row it computes again (a row written
after the last checkpoint), keyed by (stage, step); a run that starts over (no
checkpoint, or one of other settings) starts a new curve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pefts.runtime.files import atomic_write_text

COLUMNS = ("stage", "epoch", "step", "loss", "train_accuracy", "val_accuracy", "lr",
           "samples_per_s", "validation")
# the objective's statistic that is its loss, in order of preference
LOSS_KEYS = ("train_loss", "stability_loss", "mse_denoised")
NO_VALIDATION = "no validation split (train.val_fraction 0)"

# model -> validation accuracy (the caller's held-out split and noise level)
Evaluate = Callable[[], float | None]

_active: list[Curve] = []


def curve_path(weights: str | Path) -> Path:
    """model.safetensors -> model.curve.tsv, beside the weights."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.curve.tsv")


def read_curve(path: str | Path) -> list[dict[str, str]]:
    """The rows of a curve file, as text by column (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Curve:
    """One run's curve file; ``evaluate`` (or None) gives the validation accuracy."""

    def __init__(self, path: Path, fresh: bool, evaluate: Evaluate | None,
                 validation: str = "") -> None:
        self.path, self.evaluate, self.validation = path, evaluate, validation
        if fresh:
            path.unlink(missing_ok=True)
        self.stage = -1

    def begin_stage(self) -> None:
        self.stage += 1

    def add(self, epoch: float, step: int, stats: dict[str, float], lr: float,
            samples_per_s: float) -> None:
        """Record the row of (this stage, ``step``), replacing one computed before a
        resume; the validation accuracy is measured here."""
        val = self.evaluate() if self.evaluate is not None else None
        loss = next((stats[k] for k in LOSS_KEYS if k in stats), None)
        row = {"stage": self.stage, "epoch": epoch, "step": step, "loss": loss,
               "train_accuracy": stats.get("train_accuracy"), "val_accuracy": val, "lr": lr,
               "samples_per_s": samples_per_s,
               "validation": "" if val is not None else self.validation or NO_VALIDATION,
               **{k: v for k, v in sorted(stats.items()) if k not in ("train_loss",)}}
        rows = [r for r in read_curve(self.path)
                if (r.get("stage"), r.get("step")) != (str(self.stage), str(step))]
        rows.append({k: _text(v) for k, v in row.items()})
        columns = list(dict.fromkeys([*COLUMNS, *(k for r in rows for k in r)]))
        lines = ["\t".join(columns)] + ["\t".join(r.get(c, "") for c in columns) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def evaluating(model: Any, evaluate: Callable[[], float | None]) -> Evaluate:
    """``evaluate`` run in the middle of training: every module's training mode (which
    the evaluation sets to eval) is restored after it."""
    def run() -> float | None:
        modes = [(module, module.training) for module in model.modules()]
        try:
            return evaluate()
        finally:
            for module, mode in modes:
                module.train(mode)
    return run


def active() -> Curve | None:
    """The curve of the training in progress, if any (the trainers look here)."""
    return _active[-1] if _active else None


@contextmanager
def recording(weights: str | Path, fresh: bool, evaluate: Evaluate | None = None,
              validation: str = "") -> Iterator[Curve]:
    """Record the curve of the training inside the block beside ``weights``; ``fresh``:
    the run starts over (its checkpoint held nothing to resume)."""
    curve = Curve(curve_path(weights), fresh, evaluate, validation)
    _active.append(curve)
    try:
        yield curve
    finally:
        _active.remove(curve)


class EpochClock:
    """Samples per second of training alone: restarted after each row (whose validation
    is not training) and at a resume."""

    def __init__(self) -> None:
        self.start, self.samples = time.perf_counter(), 0

    def count(self, samples: int) -> None:
        self.samples += samples

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else float("nan")

    def restart(self) -> None:
        self.start, self.samples = time.perf_counter(), 0


def run_table(rows: list[dict[str, str]]) -> Any:
    """A curve's rows as a table with ``epoch_run``: epochs counted over all of the
    run's stages (the denoiser's stability phase continues after its MSE phase)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in table.columns:
        if column != "validation":
            table[column] = pd.to_numeric(table[column], errors="coerce")
    table = table.sort_values(["stage", "step"]).reset_index(drop=True)
    offset, run_epochs = 0.0, []
    for _, stage in table.groupby("stage", sort=True):
        run_epochs.extend(offset + stage["epoch"])
        offset += float(stage["epoch"].max())
    table["epoch_run"] = run_epochs
    return table
