"""Certify (or predict) a shard of test images, resumably, into a Cohen-format TSV.

Finished rows go to ``<out>.partial`` (flushed per row) behind a line that records the
run's settings; a rerun with the same settings resumes there. The output appears by
atomic rename only when every image of the shard is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pefts.errors import PeftsError
from pefts.noise import ESTIMATION, SELECTION, generator
from pefts.progress import progress
from pefts.smoothing import Smooth

CERTIFY_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "n0", "n", "nA", "pA_lower"]
PREDICT_COLUMNS = ["idx", "label", "predict", "correct", "time", "n"]
SETTINGS_PREFIX = "# pefts "


def file_digest(path: str | Path) -> str:
    """Fingerprint of the weights, so rows from another model are never resumed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def read_partial(path: Path, settings: dict[str, Any], columns: list[str]) -> list[str]:
    """Rows already finished under the same settings; a torn last line is dropped."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if lines[0] != SETTINGS_PREFIX + json.dumps(settings, sort_keys=True):
        raise PeftsError(
            f"{path} holds rows of a run with other settings or another model; "
            "move it away (or delete it) to start afresh"
        )
    if len(lines) < 3:  # stopped before the header was complete
        return []
    complete = lines[2:-1]  # after settings and header; the last piece lacks its newline
    if lines[1] != "\t".join(columns):
        raise PeftsError(f"{path} has an unexpected header; move it away to start afresh")
    return [row for row in complete if row.count("\t") == len(columns) - 1]


def run_shard(
    out: str | Path,
    indices: list[int],
    dataset: Dataset,
    settings: dict[str, Any],
    columns: list[str],
    row_for: Callable[[torch.Tensor, int, int], list[Any]],
    desc: str = "certify",
) -> Path:
    """Compute ``row_for(x, label, idx)`` for each index not yet done and publish the TSV."""
    out = Path(out)
    partial = partial_path(out)
    done_rows = read_partial(partial, settings, columns)
    done = {int(row.split("\t", 1)[0]) for row in done_rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    # rewrite the partial without any torn tail before appending to it
    with open(partial, "w") as handle:
        handle.write(SETTINGS_PREFIX + json.dumps(settings, sort_keys=True) + "\n")
        handle.write("\t".join(columns) + "\n")
        handle.writelines(row + "\n" for row in done_rows)
    todo = [i for i in indices if i not in done]
    with open(partial, "a") as handle:
        for idx in progress(todo, desc=desc, unit="img", initial=len(indices) - len(todo),
                        total=len(indices)):
            x, label = dataset[idx]
            row = row_for(x, int(label), idx)
            handle.write("\t".join(str(v) for v in row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    by_idx = {int(r.split("\t", 1)[0]): r for r in read_partial(partial, settings, columns)}
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write("\t".join(columns) + "\n")
        handle.writelines(by_idx[i] + "\n" for i in indices)
    os.replace(tmp, out)
    partial.unlink()
    return out


def certify_rows(model: nn.Module, num_classes: int, sigma: float, n0: int, n: int,
                 alpha: float, batch: int, seed: int, device: torch.device | str
                 ) -> Callable[[torch.Tensor, int, int], list[Any]]:
    smooth = Smooth(model, num_classes, sigma)

    def row(x: torch.Tensor, label: int, idx: int) -> list[Any]:
        start = time.perf_counter()
        cert = smooth.certify_detailed(
            x, n0, n, alpha, batch,
            selection=generator(seed, idx, SELECTION, device),
            estimation=generator(seed, idx, ESTIMATION, device),
        )
        elapsed = time.perf_counter() - start
        return [idx, label, cert.prediction, repr(cert.radius), int(cert.prediction == label),
                f"{elapsed:.4f}", n0, n, cert.n_a, repr(cert.p_a_lower)]

    return row


def predict_rows(model: nn.Module, num_classes: int, sigma: float, n: int, alpha: float,
                 batch: int, seed: int, device: torch.device | str
                 ) -> Callable[[torch.Tensor, int, int], list[Any]]:
    smooth = Smooth(model, num_classes, sigma)

    def row(x: torch.Tensor, label: int, idx: int) -> list[Any]:
        start = time.perf_counter()
        pred = smooth.predict(x, n, alpha, batch, generator(seed, idx, ESTIMATION, device))
        elapsed = time.perf_counter() - start
        return [idx, label, pred, int(pred == label), f"{elapsed:.4f}", n]

    return row
