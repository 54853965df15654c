"""Training that survives a kill or a time limit: a checkpoint at every epoch end,
every few minutes and when the scheduler signals, resumed when the same command runs
again with the same settings.

A run (train-base, adapt-base, finetune) opens one checkpoint beside its output,
``<out>.ckpt``: not a declared output, so Snakemake leaves it alone when a job fails or
meets its time limit. The checkpoint holds what the rest of the run depends on and
nothing else: the trainable tensors (never the frozen base: it is rebuilt from its
file), the optimiser, the schedule and the position (the epoch's shuffle and the batch
in it). Random draws are keyed by position (pefts.training.streams), so no generator state is
stored and a checkpoint written on one GPU resumes on another, on fewer, or on the CPU.
It carries a fingerprint of data, base, method, hyper-parameters and training options:
a checkpoint of other settings is ignored. It names the signal that stopped its run, if
one did, and the resume says so. It is deleted once the output is written.

SIGTERM (what SLURM sends at the time limit) and SIGUSR1/SIGUSR2 (the warning a
profile can request ahead of it, ``sbatch --signal=USR1@120``) end the run after the
step in progress: the checkpoint is written and the command exits with
``INTERRUPTED_EXIT`` (75, EX_TEMPFAIL), a failure Snakemake retries.

Nothing is unpickled: torch.load with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefts.errors import PeftsError
from pefts.runtime.files import durable_path

_active: list[Checkpoint] = []

# the version of what a checkpoint holds; one of another version is refused
FORMAT = 2
# what every checkpoint holds, whatever trained it
REQUIRED = ("format", "fingerprint", "stage", "finished", "step", "epoch_start", "batch")
# what a gradient stage (pefts.training.loop.optimise) resumes from, with each part's type; a
# stage of another kind (the black box's SPSA) names its own parts to begin_stage
GRADIENT_PARTS = {"model": dict, "optimizer": dict, "scheduler": dict, "seen": int, "sums": dict}
FIX = "delete it or move it away to start over"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNAL_NAMES = tuple(sig.name for sig in STOP_SIGNALS)
INTERRUPTED_EXIT = 75


class Interrupted(PeftsError):
    """The scheduler asked the run to stop; its checkpoint is on disk."""

    exit_code = INTERRUPTED_EXIT


def fingerprint(**settings: Any) -> str:
    """sha256 of the settings that decide the final weights (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_path(out: str | Path) -> Path:
    return Path(f"{out}.ckpt")


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What of ``model`` a checkpoint keeps: the parameters that train and the saved
    buffers (small, and a module in training mode may update them); frozen parameters
    come back from the files the model is built from."""
    return {name: t.detach() for name, t in model.state_dict(keep_vars=True).items()
            if not isinstance(t, nn.Parameter) or t.requires_grad}


def restore_trainable(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``trainable_tensors``' output back; a checkpoint that does not fit the model's
    trainable part is refused in one line."""
    expected = trainable_tensors(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise PeftsError(f"checkpoint {path} does not fit this model (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}); {FIX}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise PeftsError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, "
                             f"the model {tuple(expected[name].shape)}; {FIX}")
    model.load_state_dict(state, strict=False)


def ignore_stop_signals(_worker: int = 0) -> None:
    """In loader workers: the scheduler signals every process of the job, and only the
    training process should act (a worker killed by SIGTERM would crash the loader
    before the checkpoint is written)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class _Remembering:
    """A file torch.save writes through that keeps the OSError of a failed write: torch's
    writer reports a full disk as "unexpected pos", this lets the save re-raise ENOSPC."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


class Checkpoint:
    """One run's checkpoint. Each optimise() call of the run is a stage (the denoiser
    trains MSE, then stability): a stage already finished returns its saved statistics,
    the stage in progress resumes from its saved state, later ones start fresh."""

    def __init__(self, path: Path, fingerprint: str, minutes: float) -> None:
        self.path, self.fingerprint, self.minutes = path, fingerprint, minutes
        self.stage = -1
        self.finished: list[dict[str, float]] = []
        self.stopped_by: str | None = None  # the stop signal's name, as the file records it
        self._remove_litter()
        self.saved = self._load()
        self.last_save = time.monotonic()

    def _remove_litter(self) -> None:
        """A save killed by SIGKILL leaves its temporary file (pefts.runtime.files.durable_path's
        name): the next run of the same output removes it."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any] | None:
        if self.path.is_dir():
            raise PeftsError(f"checkpoint {self.path} is a folder, not a checkpoint file; "
                             "move it away")
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # not a torch file, or one holding more than tensors
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PeftsError(f"checkpoint {self.path} is not a readable pefts checkpoint "
                             f"({reason}); {FIX}") from None
        problem = self._structure_problem(state)
        if problem:
            raise PeftsError(f"checkpoint {self.path} {problem}; {FIX}")
        if state["fingerprint"] != self.fingerprint:
            print(f"pefts: ignoring checkpoint {self.path}: it was written with other "
                  "settings (data, base, method, hyper-parameters or training options)",
                  file=sys.stderr, flush=True)
            return None
        self.finished = list(state["finished"])
        return state

    @staticmethod
    def _structure_problem(state: Any) -> str | None:
        """What makes ``state`` no checkpoint of this version, or None."""
        if not isinstance(state, dict):
            return f"holds a {type(state).__name__}, not a pefts checkpoint"
        missing = [key for key in REQUIRED if key not in state]
        if missing:
            return f"is not a pefts checkpoint (no {', '.join(missing)})"
        if state["format"] != FORMAT:
            return (f"has format {state['format']!r}, this pefts writes {FORMAT} (an older "
                    "checkpoint kept generator state)")
        if not isinstance(state["stage"], int) or not isinstance(state["step"], int) \
                or not isinstance(state["finished"], list | tuple) \
                or not isinstance(state["epoch_start"], torch.Tensor):
            return "has fields of the wrong type"
        stopped_by = state.get("stopped_by")  # absent from a checkpoint of an older pefts
        if stopped_by is not None and not isinstance(stopped_by, str):
            return "has fields of the wrong type"
        if stopped_by is not None and stopped_by not in STOP_SIGNAL_NAMES:
            return f"names {stopped_by[:20]!r} as the signal that stopped its run"
        if len(state["finished"]) != state["stage"]:
            return (f"is not whole: stage {state['stage']} in progress, but "
                    f"{len(state['finished'])} finished stage(s) recorded")
        return None

    def begin_stage(self, parts: dict[str, type] | None = None
                    ) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
        """(statistics of this stage if it already finished, saved state to resume); the
        state to resume holds every part in ``parts`` (name: type; GRADIENT_PARTS by
        default) or the checkpoint is refused, naming the part, before anything is used."""
        self.stage += 1
        if self.saved is None:
            return None, None
        if self.stage < self.saved["stage"]:
            return self.finished[self.stage], None
        if self.stage == self.saved["stage"]:
            self._check_parts(GRADIENT_PARTS if parts is None else parts)
            # which signal wrote it: a time limit's resume says so in the job's log
            why = (f", written when {self.saved['stopped_by']} stopped the run"
                   if self.saved.get("stopped_by") else "")
            print(f"pefts: resuming from checkpoint {self.path} (stage {self.stage}, "
                  f"step {self.saved['step']}{why})", file=sys.stderr, flush=True)
            return None, self.saved
        return None, None

    def _check_parts(self, parts: dict[str, type]) -> None:
        missing = [name for name in parts if name not in self.saved]
        if missing:
            raise PeftsError(f"checkpoint {self.path} is not whole: it lacks "
                             f"{', '.join(missing)}, which resuming stage {self.stage} needs "
                             f"(saved by another pefts, or damaged); {FIX}")
        for name, kind in parts.items():
            # a bool is an int to Python, never a count here
            if not isinstance(self.saved[name], kind) or isinstance(self.saved[name], bool):
                raise PeftsError(f"checkpoint {self.path}: {name} is a "
                                 f"{type(self.saved[name]).__name__}, not a {kind.__name__}; {FIX}")

    def end_stage(self, metrics: dict[str, float]) -> None:
        self.finished = [*self.finished[:self.stage], metrics]

    def due(self) -> bool:
        """A save is due: the timer ran out, or the scheduler asked the run to stop."""
        if self.stopped_by is not None:
            return True
        return self.minutes > 0 and time.monotonic() - self.last_save >= 60 * self.minutes

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: stop at the next step's end (the step in progress finishes)."""
        self.stopped_by = signal.Signals(signum).name

    def save(self, state: dict[str, Any]) -> None:
        """Written durably (pefts.runtime.files.durable_path): a kill never leaves half a file,
        a signal during the save only takes effect once it is on disk. After a stop
        request the run ends here (Interrupted), its checkpoint naming the signal."""
        stopped_by = self.stopped_by
        self._write(state, stopped_by)
        if stopped_by is None and self.stopped_by is not None:
            # the signal came during the write: once more, so the file says why the run
            # stopped (the resume in the next job's log names it)
            stopped_by = self.stopped_by
            self._write(state, stopped_by)
        self.last_save = time.monotonic()
        if stopped_by is not None:
            raise Interrupted(f"stopped by {stopped_by} at step {state['step']}; checkpoint "
                              f"{self.path} written, run the same command again to resume")

    def _write(self, state: dict[str, Any], stopped_by: str | None) -> None:
        state = {**state, "format": FORMAT, "fingerprint": self.fingerprint,
                 "stage": self.stage, "finished": self.finished[:self.stage],
                 "stopped_by": stopped_by}
        with durable_path(self.path) as tmp, open(tmp, "wb") as handle:
            writer = _Remembering(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None


def active() -> Checkpoint | None:
    """The checkpoint of the run in progress, if any (optimise() looks here, so methods'
    fit() need not pass it along)."""
    return _active[-1] if _active else None


@contextmanager
def checkpointing(out: str | Path, fingerprint: str, minutes: float) -> Iterator[Checkpoint]:
    """Checkpoint the training inside the block, which ends with Interrupted after a
    stop signal (STOP_SIGNALS); the caller removes the file once the output is written
    (discard)."""
    checkpoint = Checkpoint(checkpoint_path(out), fingerprint, minutes)
    _active.append(checkpoint)
    # handlers can be set from the main thread only (a library caller's thread: none)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, checkpoint.request_stop) for sig in STOP_SIGNALS} if main else {}
    try:
        yield checkpoint
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _active.remove(checkpoint)


def discard(out: str | Path) -> None:
    checkpoint_path(out).unlink(missing_ok=True)
