"""The checkpoint in-process (the quick tier): a noisy, augmented run with dropout stopped
by a signal or a crash resumes to an uninterrupted run's weights; a checkpoint is
written at every epoch end and holds no generator state; the fingerprint covers every
option that changes the weights; a checkpoint file that is not ours is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

from pefts.data import read_manifest
from pefts.errors import PeftsError
from pefts.finetuning.runs import run_fingerprint
from pefts.training.checkpoints import (
    FORMAT,
    INTERRUPTED_EXIT,
    Checkpoint,
    Interrupted,
    checkpoint_path,
    checkpointing,
)
from pefts.training.loop import CONDUCT_OPTIONS, TrainConfig, optimise, resumable_batches
from pefts.training.streams import noise_like
from tests.conftest import TINY_SPEC

SIGMA = 0.5
# every option that changes the final weights: the fingerprint must see each
WEIGHT_OPTIONS = {"epochs": 3, "batch_size": 5, "lr": 0.5, "optimizer": "sgd", "momentum": 0.5,
                  "weight_decay": 0.1, "schedule": "constant", "warmup_epochs": 1.0, "seed": 7,
                  "val_fraction": 0.3, "precision": "bf16", "tf32": True}


class Augmented(Dataset):
    """Small images with random crops and flips drawn from torch's global generator,
    as torchvision's transforms draw them."""

    def __init__(self, size: int = 20) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(size, 3, 8, 8, generator=gen)
        self.labels = torch.randint(0, 3, (size,), generator=gen)
        self.augment = transforms.Compose([transforms.RandomCrop(8, padding=2),
                                           transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(self.images[i]), self.labels[i]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(192, 3))


CFG = TrainConfig(epochs=3, batch_size=6, lr=0.05, checkpoint_minutes=0.0)  # 4 steps an epoch


def train(out: Path, cfg: TrainConfig = CFG, interrupt_at: int | None = None,
          crash_at: int | None = None) -> nn.Module:
    """Noisy training of the tiny model; at step ``interrupt_at`` the process signals
    itself (as SLURM does), at ``crash_at`` the step raises (a crash: no save)."""
    model = tiny_model()
    calls = [0]

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        calls[0] += 1
        if calls[0] == interrupt_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        if calls[0] == crash_at:
            raise RuntimeError("crash")
        logits = model(x + noise_like(x) * SIGMA)
        return nn.functional.cross_entropy(logits, y), {}

    with checkpointing(out, "settings", cfg.checkpoint_minutes):
        optimise(model, Augmented(), cfg, cfg.epochs, loss, "cpu", "test")
    return model


def assert_equal_models(a: nn.Module, b: nn.Module) -> None:
    for (name, left), right in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


@pytest.mark.parametrize("at", [2, 6])  # in the first epoch, in the second
def test_a_signal_mid_epoch_saves_and_the_run_resumes_to_the_same_weights(tmp_path, capsys, at):
    whole = train(tmp_path / "whole")
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted, match=f"stopped by SIGUSR1 at step {at}") as stopped:
        train(out, interrupt_at=at)
    assert stopped.value.exit_code == INTERRUPTED_EXIT
    saved = torch.load(checkpoint_path(out), weights_only=True)
    assert (saved["step"], saved["batch"], saved["stopped_by"]) == (at, at % 4, "SIGUSR1")
    assert not list(tmp_path.glob(".*.tmp"))
    capsys.readouterr()
    # the resumed process's global generators are wherever they happen to be
    torch.manual_seed(12345)
    assert_equal_models(train(out), whole)
    # the resume says which signal wrote its checkpoint (a time limit's, in a job's log)
    assert (f"resuming from checkpoint {checkpoint_path(out)} (stage 0, step {at}, written "
            "when SIGUSR1 stopped the run)") in capsys.readouterr().err


def written_on(path: Path, device: str) -> None:
    """Make a CPU-written torch file read as one written on ``device`` (every storage's
    location tag in the pickle), as a checkpoint saved by a run on that GPU would."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    cpu = b"X\x03\x00\x00\x00cpu"  # the pickled string 'cpu', memoised after its first use
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert cpu in data
                data = data.replace(cpu, b"X" + len(device).to_bytes(4, "little") + device.encode())
            archive.writestr(info, data)


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu_to_the_same_weights(tmp_path):
    whole = train(tmp_path / "whole")
    out = tmp_path / "on-gpu-1"
    with pytest.raises(Interrupted):
        train(out, interrupt_at=6)
    written_on(checkpoint_path(out), "cuda:1")
    with pytest.raises(RuntimeError, match="CUDA"):  # the simulation holds: CUDA storages
        torch.load(checkpoint_path(out), weights_only=True)
    assert_equal_models(train(out), whole)


def test_a_crash_resumes_from_the_last_epoch_end(tmp_path, capsys):
    # no timer: the epoch's end alone leaves a checkpoint to resume from
    whole = train(tmp_path / "whole")
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        train(out, crash_at=7)  # the third step of the second epoch
    saved = torch.load(checkpoint_path(out), weights_only=True)
    assert (saved["step"], saved["batch"], saved["stopped_by"]) == (4, 0, None)
    capsys.readouterr()
    assert_equal_models(train(out), whole)
    # no signal wrote it, and the resume names none
    assert f"resuming from checkpoint {checkpoint_path(out)} (stage 0, step 4)\n" \
        in capsys.readouterr().err


def test_the_checkpoint_holds_position_and_trainable_state_only(tmp_path):
    model = tiny_model()
    model[2].weight.requires_grad_(False)  # a frozen tensor stays out
    out = tmp_path / "frozen"

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.cross_entropy(model(x), y), {}

    with checkpointing(out, "settings", 0.0):
        optimise(model, Augmented(), dataclasses.replace(CFG, epochs=1), 1, loss, "cpu", "test")
    saved = torch.load(checkpoint_path(out), weights_only=True)
    assert set(saved["model"]) == {"2.bias"}
    assert set(saved) == {"model", "optimizer", "scheduler", "seen", "sums", "step", "batch",
                          "epoch_start", "format", "fingerprint", "stage", "finished",
                          "stopped_by"}


def test_batches_do_not_depend_on_workers_or_a_restart_mid_epoch():
    data, cfg = Augmented(), dataclasses.replace(CFG, epochs=2)
    whole = [(x, y) for x, y, _ in resumable_batches(data, cfg, 8)]
    workers = [(x, y) for x, y, _ in resumable_batches(data, dataclasses.replace(cfg, num_workers=2), 8)]
    for (x, y), (wx, wy) in zip(whole, workers, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)
    # restarted after the second batch of the second epoch
    steps = list(resumable_batches(data, cfg, 8))
    restart = list(resumable_batches(data, cfg, 8, steps[5][2].state()))
    for (x, _, _), (rx, _, _) in zip(steps[6:], restart, strict=True):
        assert torch.equal(x, rx)
    assert not torch.equal(whole[0][0], whole[4][0])  # another epoch, other crops


def test_the_fingerprint_covers_every_option_that_changes_the_weights(digits):
    digits = read_manifest(digits)  # as a job reads it, once
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(WEIGHT_OPTIONS) | set(CONDUCT_OPTIONS)
    plain = run_fingerprint(digits, TrainConfig())
    for name, value in WEIGHT_OPTIONS.items():
        assert run_fingerprint(digits, TrainConfig(**{name: value})) != plain, name
    assert run_fingerprint(digits, TrainConfig(num_workers=3, checkpoint_minutes=1)) == plain


def test_a_checkpoint_of_another_learning_rate_is_not_resumed(tmp_path, digits):
    digits = read_manifest(digits)
    out = tmp_path / "model"
    first = Checkpoint(checkpoint_path(out), run_fingerprint(digits, CFG), 0.0)
    first.stage = 0
    first.save({"step": 1, "batch": 1, "epoch_start": torch.Generator().get_state()})
    other = dataclasses.replace(CFG, lr=CFG.lr * 2)
    assert Checkpoint(checkpoint_path(out), run_fingerprint(digits, other), 0.0).saved is None
    assert Checkpoint(checkpoint_path(out), run_fingerprint(digits, CFG), 0.0).saved is not None


def train_base_args(digits: Path, out: Path) -> list[str]:
    return ["train-base", "--data", str(digits), "--arch", TINY_SPEC["arch"], "--input-size",
            str(TINY_SPEC["input_size"]), "--model-kwargs", json.dumps(TINY_SPEC["model_kwargs"]),
            "--out", str(out), "--train", '{"epochs": 1}', "--device", "cpu"]


GENERATOR = torch.Generator().get_state()
# what an older pefts wrote on a GPU: generator states, one of them CUDA-shaped
FROM_A_GPU = {"fingerprint": "x", "stage": 0, "finished": [], "step": 3, "batch": 1,
              "epoch_start": GENERATOR, "rng": {"torch": GENERATOR,
                                                "cuda": [torch.zeros(16, dtype=torch.uint8)]}}


@pytest.mark.parametrize("content, problem", [
    ({"weights": torch.zeros(3)}, "is not a pefts checkpoint (no format, fingerprint"),
    (torch.zeros(3), "holds a Tensor, not a pefts checkpoint"),
    ([1, 2], "holds a list, not a pefts checkpoint"),
    (FROM_A_GPU, "is not a pefts checkpoint (no format)"),
    ({**FROM_A_GPU, "format": 1}, f"has format 1, this pefts writes {FORMAT}"),
    ({**FROM_A_GPU, "format": FORMAT, "step": "3"}, "has fields of the wrong type"),
    # printed at the resume: only a stop signal's name, never a file's text
    ({**FROM_A_GPU, "format": FORMAT, "stopped_by": "SIGKILL"},
     "names 'SIGKILL' as the signal that stopped its run"),
    ({**FROM_A_GPU, "format": FORMAT, "stopped_by": "SIGTERM\n" * 100},
     "names 'SIGTERM\\nSIGTERM\\nSIGT' as the signal"),
    ({**FROM_A_GPU, "format": FORMAT, "stopped_by": torch.zeros(200)},
     "has fields of the wrong type"),
])
def test_a_checkpoint_of_the_wrong_structure_is_refused_in_one_line(digits, tmp_path, run_cli,
                                                                     content, problem):
    out = tmp_path / "base.safetensors"
    torch.save(content, checkpoint_path(out))
    code, _, err = run_cli(*train_base_args(digits, out))
    assert code == 1
    assert err.startswith(f"error: checkpoint {checkpoint_path(out)} {problem}")
    assert err.endswith("; delete it or move it away to start over\n") and err.count("\n") == 1
    assert checkpoint_path(out).is_file() and not out.exists()


def test_a_checkpoint_that_is_a_folder_is_refused_in_one_line(digits, tmp_path, run_cli):
    out = tmp_path / "base.safetensors"
    checkpoint_path(out).mkdir()
    code, _, err = run_cli(*train_base_args(digits, out))
    assert (code, err) == (1, f"error: checkpoint {checkpoint_path(out)} is a folder, not a "
                              "checkpoint file; move it away\n")


def test_a_signal_during_a_save_stops_the_run_and_its_checkpoint_names_it(tmp_path, monkeypatch):
    """The epoch end's save under way when SLURM's warning comes: the run stops once it is
    on disk, and the file on disk says which signal stopped it."""
    import pefts.training.checkpoints

    checkpoint = Checkpoint(checkpoint_path(tmp_path / "model"), "settings", 0.0)
    checkpoint.stage = 0
    real_save = torch.save

    def signalled_midway(obj: object, f: object) -> None:
        real_save(obj, f)
        if checkpoint.stopped_by is None:
            checkpoint.request_stop(signal.SIGTERM)

    monkeypatch.setattr(pefts.training.checkpoints.torch, "save", signalled_midway)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 4"):
        checkpoint.save({"step": 4, "batch": 0, "epoch_start": torch.Generator().get_state()})
    monkeypatch.undo()
    saved = torch.load(checkpoint.path, weights_only=True)
    assert (saved["step"], saved["stopped_by"]) == (4, "SIGTERM")


def test_litter_of_a_save_killed_midway_is_removed(tmp_path):
    out = tmp_path / "model"
    litter = tmp_path / f".{checkpoint_path(out).name}.abc123.tmp"
    litter.write_bytes(b"half a checkpoint")
    Checkpoint(checkpoint_path(out), "settings", 0.0)
    assert not litter.exists()


def test_a_full_disk_while_saving_names_the_checkpoint_and_keeps_the_last_one(tmp_path, monkeypatch):
    """A save that fills the disk halfway is an OSError ENOSPC naming the checkpoint, which
    the command line prints in one line, not torch's "unexpected pos"; the previous
    checkpoint stays and no temporary file is left."""
    import builtins
    import errno

    import pefts.training.checkpoints

    path = checkpoint_path(tmp_path / "model")
    checkpoint = Checkpoint(path, "settings", 0.0)
    checkpoint.save({"step": 1, "weights": torch.zeros(1000)})
    before = path.read_bytes()
    real_open = builtins.open

    class FillingUp:
        """A file on a disk with 4 KiB left, as a small tmpfs behaves."""

        def __init__(self, file):
            self.handle, self.left = real_open(file, "wb", buffering=0), 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.handle.write(data)

        def flush(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def onto_a_full_disk(file, mode="r", *args, **kwargs):
        return FillingUp(file) if "w" in mode else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(pefts.training.checkpoints, "open", onto_a_full_disk, raising=False)
    with pytest.raises(OSError) as caught:
        checkpoint.save({"step": 2, "weights": torch.ones(100_000)})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("part", ["optimizer", "scheduler", "model", "seen", "sums"])
def test_a_checkpoint_lacking_a_part_it_resumes_from_is_refused_naming_it(tmp_path, part):
    """Of the same settings but not whole (saved by another pefts, or damaged): "resuming"
    then KeyError: 'optimizer' before. Refused before anything is used, naming the file and
    the part, with the fix; the file is left where it is."""
    out = tmp_path / "model"
    with pytest.raises(Interrupted):
        train(out, interrupt_at=6)
    state = torch.load(checkpoint_path(out), weights_only=True)
    del state[part]
    torch.save(state, checkpoint_path(out))
    with pytest.raises(PeftsError) as err:
        train(out)
    assert str(err.value) == (f"checkpoint {checkpoint_path(out)} is not whole: it lacks {part}, "
                              "which resuming stage 0 needs (saved by another pefts, or "
                              "damaged); delete it or move it away to start over")
    assert checkpoint_path(out).is_file()


@pytest.mark.parametrize("change, problem", [
    ({"optimizer": {"state": {}, "param_groups": []}}, "optimiser or schedule state does not fit"),
    ({"sums": [1.0]}, "sums is a list, not a dict"),
    ({"seen": True}, "seen is a bool, not a int"),
    ({"finished": [{"loss": 1.0}]}, "is not whole: stage 0 in progress, but 1 finished stage"),
])
def test_a_checkpoint_whose_parts_do_not_fit_is_refused(tmp_path, change, problem):
    out = tmp_path / "model"
    with pytest.raises(Interrupted):
        train(out, interrupt_at=6)
    state = torch.load(checkpoint_path(out), weights_only=True)
    torch.save({**state, **change}, checkpoint_path(out))
    with pytest.raises(PeftsError, match=problem) as err:
        train(out)
    assert str(err.value).endswith("delete it or move it away to start over")
    assert "\n" not in str(err.value) and checkpoint_path(out).is_file()


@pytest.mark.slow  # a training run, then a process of its own
def test_finetune_beside_a_checkpoint_without_optimiser_state_says_so_in_a_process(
        digits, tiny_base, tmp_path, run_cli, monkeypatch):
    """The case as a user met it: `pefts finetune` beside a .ckpt of the same settings
    without optimiser state. The checkpoint is made by a real run whose final one is kept."""
    from pefts.finetuning import runs
    from tests.test_cli_errors import error_line, pefts_process

    out = tmp_path / "lora.safetensors"
    args = ["finetune", "--data", digits, "--base", tiny_base, "--method", "lora", "--sigma",
            "0.5", "--out", out, "--train", '{"epochs": 1, "batch_size": 256}', "--device", "cpu"]
    monkeypatch.setattr(runs, "discard", lambda _out: None)  # keep the run's last one
    code, _, err = run_cli(*args)
    assert code == 0, err
    out.unlink()
    state = torch.load(checkpoint_path(out), weights_only=True)
    del state["optimizer"]
    torch.save(state, checkpoint_path(out))
    result = pefts_process(*args)
    error_line(result, f"error: checkpoint {checkpoint_path(out)} is not whole: it lacks "
                       "optimizer")
    assert "delete it or move it away" in result.stderr
    assert "resuming from" not in result.stderr
    assert checkpoint_path(out).is_file() and not out.exists()
