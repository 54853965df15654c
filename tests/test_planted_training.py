"""Training's random streams, stop signals and save timer, each against the realistic
bug that would break it unnoticed by the resume tests (issue 29, item 6): the
augmentation keyed without the epoch, the step seed keyed by the batch within the
epoch, SIGUSR2 left out of the stop signals, the caller's handlers not put back, and
the save timer not restarted by a save."""

from __future__ import annotations

import os
import random
import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pefts.training import checkpoints
from pefts.training.checkpoints import Checkpoint, Interrupted, checkpointing
from pefts.training.loop import TrainConfig, optimise, resumable_batches
from pefts.training.streams import noise_like
from tests.test_checkpoints import Augmented, tiny_model


class RandomDraws(Dataset):
    """Sample i is a draw of torch's and Python's global generators, as a random
    transform's crop or flip is; its label is i, so a batch says which samples it holds."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([torch.rand(()).item(), random.random()], dtype=torch.float64), i


EPOCHS, PER_EPOCH = 3, 2  # 6 samples in batches of 3


def test_each_epoch_draws_other_augmentations_of_the_same_image():
    """Keyed without the epoch, every epoch would see the same crops of each image."""
    cfg = TrainConfig(batch_size=3, seed=0)
    drawn: dict[tuple[int, int], torch.Tensor] = {}
    for x, y, at in resumable_batches(RandomDraws(), cfg, EPOCHS * PER_EPOCH):
        epoch = (at.step - 1) // PER_EPOCH
        drawn.update({(epoch, int(i)): row for row, i in zip(x, y, strict=True)})
    assert len(drawn) == EPOCHS * len(RandomDraws())
    for i in range(len(RandomDraws())):
        for a in range(EPOCHS):
            for b in range(a + 1, EPOCHS):
                # both torch's and Python's generators are keyed (torchvision uses either)
                assert (drawn[a, i] != drawn[b, i]).all(), (i, a, b)


def test_every_step_of_the_run_draws_its_own_noise():
    """Keyed by the batch within the epoch, step k of every epoch would repeat the noise
    and dropout of step k of the first."""
    cfg = TrainConfig(batch_size=3, seed=0)
    x = torch.zeros(4, 5)
    noise, masks = [], []
    dropout = nn.Dropout(0.5).train()
    for _, _, _ in resumable_batches(RandomDraws(), cfg, EPOCHS * PER_EPOCH):
        noise.append(noise_like(x))
        masks.append(dropout(torch.ones(64)) > 0)
    assert len(noise) == EPOCHS * PER_EPOCH
    for a in range(len(noise)):
        for b in range(a + 1, len(noise)):
            assert not torch.equal(noise[a], noise[b]), (a, b)
            assert not torch.equal(masks[a], masks[b]), (a, b)


CFG = TrainConfig(epochs=2, batch_size=6, lr=0.05, checkpoint_minutes=0.0)  # 4 steps an epoch


def train_until_signalled(out, sig: int | None, at: int = 2) -> None:
    """The tiny noisy training of tests/test_checkpoints.py; at step ``at`` the process
    sends itself ``sig`` (as SLURM does)."""
    model, calls = tiny_model(), [0]

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        calls[0] += 1
        if sig is not None and calls[0] == at:
            os.kill(os.getpid(), sig)
        return nn.functional.cross_entropy(model(x + noise_like(x) * 0.5), y), {}

    with checkpointing(out, "settings", CFG.checkpoint_minutes):
        optimise(model, Augmented(), CFG, CFG.epochs, loss, "cpu", "test")


SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # not STOP_SIGNALS: the
# list under test


@pytest.fixture
def callers_handlers():
    """A handler of the caller's on every scheduler signal (a signal the run does not
    take lands here instead of killing pytest), and what it caught."""
    caught: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        caught.append(signum)

    before = {sig: signal.signal(sig, handler) for sig in SCHEDULER_SIGNALS}
    yield handler, caught
    for sig, old in before.items():
        signal.signal(sig, old)


@pytest.mark.parametrize("sig", SCHEDULER_SIGNALS, ids=lambda s: s.name)
def test_every_scheduler_signal_stops_the_run_and_the_callers_handlers_come_back(
        tmp_path, callers_handlers, sig):
    """SIGTERM at the time limit, SIGUSR1 or SIGUSR2 as the warning a profile asks for
    (sbatch --signal): each one ends the run with its checkpoint written; after the
    run, stopped or finished, the caller's handlers are in place again."""
    handler, caught = callers_handlers
    with pytest.raises(Interrupted, match=f"stopped by {sig.name} at step 2"):
        train_until_signalled(tmp_path / "stopped", sig)
    assert caught == []  # the run took the signal, not the caller
    assert all(signal.getsignal(s) is handler for s in SCHEDULER_SIGNALS)
    train_until_signalled(tmp_path / "finished", None)
    assert all(signal.getsignal(s) is handler for s in SCHEDULER_SIGNALS)
    os.kill(os.getpid(), sig)  # and after the run, the caller's handler is the one called
    assert caught == [sig]


def test_the_save_timer_restarts_at_every_save(tmp_path, monkeypatch):
    """checkpoint_minutes=1 and 15 s a step: a save every 4th step and at the run's end
    (one 40-step epoch). A timer not restarted by a save would save at every step after
    the first minute."""
    clock = [0.0]
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    saved_at: list[int] = []
    save = Checkpoint.save

    def counted(self: Checkpoint, state: dict) -> None:
        saved_at.append(state["step"])
        save(self, state)

    monkeypatch.setattr(Checkpoint, "save", counted)
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.05, checkpoint_minutes=1.0)
    model = tiny_model()

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        clock[0] += 15.0
        return nn.functional.cross_entropy(model(x), y), {}

    with checkpointing(tmp_path / "timed", "settings", cfg.checkpoint_minutes):
        optimise(model, Augmented(40), cfg, cfg.epochs, loss, "cpu", "test")
    assert saved_at == list(range(4, 41, 4))
