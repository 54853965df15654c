"""Training that survives a kill: a checkpoint at every epoch end and every few minutes,
resumed when the same command runs again with the same settings.

A run (train-base, adapt-base, finetune) opens one checkpoint beside its output,
``<out>.ckpt``: not a declared output, so Snakemake leaves it alone when a job fails or
meets its time limit. The checkpoint holds everything the rest of the run depends on
(weights, optimiser, schedule, every random generator, the epoch's shuffle and the
position in it), so a resumed run ends with exactly the weights of an uninterrupted one.
It carries a fingerprint of data, base, method, hyper-parameters and training options:
a checkpoint of other settings is ignored. It is deleted once the output is written.

Nothing is unpickled: torch.load with weights_only=True, so NumPy's generator state is
stored as a tensor.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pefts.files import durable_path

_active: list[Checkpoint] = []


def fingerprint(**settings: Any) -> str:
    """sha256 of the settings that decide the final weights (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_path(out: str | Path) -> Path:
    return Path(f"{out}.ckpt")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a round trip may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


class Checkpoint:
    """One run's checkpoint. Each optimise() call of the run is a stage (the denoiser
    trains MSE, then stability): a stage already finished returns its saved statistics,
    the stage in progress resumes from its saved state, later ones start fresh."""

    def __init__(self, path: Path, fingerprint: str, minutes: float) -> None:
        self.path, self.fingerprint, self.minutes = path, fingerprint, minutes
        self.stage = -1
        self.finished: list[dict[str, float]] = []
        self.saved = self._load()
        self.last_save = time.monotonic()

    def _load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file costs the progress, never the run
            print(f"pefts: ignoring unreadable checkpoint {self.path}: {error}",
                  file=sys.stderr, flush=True)
            return None
        if state.get("fingerprint") != self.fingerprint:
            print(f"pefts: ignoring checkpoint {self.path}: it was written with other "
                  "settings (data, base, method, hyper-parameters or training options)",
                  file=sys.stderr, flush=True)
            return None
        print(f"pefts: resuming from checkpoint {self.path} (stage {state['stage']}, "
              f"step {state['step']})", file=sys.stderr, flush=True)
        self.finished = list(state["finished"])
        return state

    def begin_stage(self) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
        """(statistics of this stage if it already finished, saved state to resume)."""
        self.stage += 1
        if self.saved is None:
            return None, None
        if self.stage < self.saved["stage"]:
            return self.finished[self.stage], None
        if self.stage == self.saved["stage"]:
            return None, self.saved
        return None, None

    def end_stage(self, metrics: dict[str, float]) -> None:
        self.finished = [*self.finished[:self.stage], metrics]

    def due(self) -> bool:
        return self.minutes > 0 and time.monotonic() - self.last_save >= 60 * self.minutes

    def save(self, state: dict[str, Any]) -> None:
        """Written durably (pefts.files.durable_path): a kill never leaves half a file."""
        state = {**state, "fingerprint": self.fingerprint, "stage": self.stage,
                 "finished": self.finished[:self.stage], "rng": rng_state()}
        with durable_path(self.path) as tmp:
            torch.save(state, tmp)
        self.last_save = time.monotonic()


def active() -> Checkpoint | None:
    """The checkpoint of the run in progress, if any (optimise() looks here, so methods'
    fit() need not pass it along)."""
    return _active[-1] if _active else None


@contextmanager
def checkpointing(out: str | Path, fingerprint: str, minutes: float) -> Iterator[Checkpoint]:
    """Checkpoint the training inside the block; the caller removes the file once the
    output is written (discard)."""
    checkpoint = Checkpoint(checkpoint_path(out), fingerprint, minutes)
    _active.append(checkpoint)
    try:
        yield checkpoint
    finally:
        _active.remove(checkpoint)


def discard(out: str | Path) -> None:
    checkpoint_path(out).unlink(missing_ok=True)
