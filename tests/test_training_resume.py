"""Training that survives a kill: SIGKILL a real `pefts train-base` / `pefts finetune`
(gradient methods, the denoiser's two stages, the black box's SPSA) mid-epoch, run the
same command again, and the final weights equal an uninterrupted run's. An augmented
image folder loaded by 2 workers, stopped by SIGTERM or SIGKILL mid-epoch or during a
checkpoint save, resumes to the weights of an uninterrupted run with 0 workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pefts.data import prepare
from pefts.errors import PeftsError
from pefts.finetuning.runs import train_base
from pefts.training.checkpoints import INTERRUPTED_EXIT, Checkpoint, checkpoint_path
from tests import realsize
from tests.conftest import TINY_SPEC

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# a checkpoint every few hundredths of a second: many mid-epoch saves in a short run
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "checkpoint_minutes": 0.0005}


def base_command(digits: Path) -> list[str]:
    return [sys.executable, "-m", "pefts", "train-base", "--data", str(digits),
            "--arch", TINY_SPEC["arch"], "--input-size", str(TINY_SPEC["input_size"]),
            "--model-kwargs", json.dumps(TINY_SPEC["model_kwargs"]), "--train",
            json.dumps(TRAIN), "--device", "cpu"]


def finetune_command(digits: Path, base: Path, method: str, hparams: dict) -> list[str]:
    return [sys.executable, "-m", "pefts", "finetune", "--data", str(digits), "--base", str(base),
            "--method", method, "--sigma", "0.5", "--hparams", json.dumps(hparams),
            "--train", json.dumps(TRAIN), "--device", "cpu"]


def read_checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def kill_mid_epoch(args: list[str], out: Path, stage: int = 0, timeout: float = 300) -> dict:
    """Start the command; once its checkpoint is inside an epoch of ``stage``, stop it,
    confirm the checkpoint on disk still is, SIGKILL it. Returns that checkpoint."""
    proc = subprocess.Popen([*args, "--out", str(out)], env=ENV, stderr=subprocess.DEVNULL)
    ckpt = checkpoint_path(out)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = read_checkpoint(ckpt) if ckpt.exists() else None
            if state is not None and state["stage"] == stage and state["batch"] > 0:
                proc.send_signal(signal.SIGSTOP)  # nothing moves between the look and the kill
                state = read_checkpoint(ckpt)
                if state is not None and state["stage"] == stage and state["batch"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    assert not out.exists()
                    return state
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail("the run finished before a mid-epoch checkpoint could be caught")


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def resume_and_compare(args: list[str], tmp_path: Path, stage: int = 0) -> None:
    whole, killed = tmp_path / "whole.safetensors", tmp_path / "killed.safetensors"
    subprocess.run([*args, "--out", str(whole)], check=True, env=ENV, capture_output=True)
    assert not checkpoint_path(whole).exists()  # gone once the output is written
    state = kill_mid_epoch(args, killed, stage)
    rerun = subprocess.run([*args, "--out", str(killed)], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from checkpoint {checkpoint_path(killed)} (stage {stage}, " \
           f"step {state['step']})" in rerun.stderr
    assert not checkpoint_path(killed).exists()
    assert_same_weights(whole, killed)


@pytest.mark.slow  # kills for real; the quick tier stops training in-process (test_checkpoints.py)
def test_train_base_killed_mid_epoch_resumes_to_the_same_weights(digits, tmp_path):
    resume_and_compare(base_command(digits), tmp_path)


@pytest.mark.slow
def test_finetune_killed_mid_epoch_resumes_to_the_same_weights(digits, tiny_base, tmp_path):
    resume_and_compare(finetune_command(digits, tiny_base, "lora", {"rank": 2}), tmp_path)


@pytest.mark.slow
def test_blackbox_spsa_killed_mid_epoch_resumes_to_the_same_prompt(digits, tiny_base, tmp_path):
    # SPSA's iterate, momentum, step count and perturbation generator, and the batch order
    resume_and_compare(finetune_command(digits, tiny_base, "blackbox", {"perturbations": 2}),
                       tmp_path)


@pytest.mark.slow
def test_second_stage_of_the_denoiser_resumes(digits, tiny_base, tmp_path):
    # MSE, then stability: killed in the second stage, the first is not trained again
    hparams = {"depth": 3, "channels": 8, "objective": "mse+stability", "stability_epochs": 1.0}
    resume_and_compare(finetune_command(digits, tiny_base, "denoiser", hparams), tmp_path, 1)


def test_a_checkpoint_of_other_settings_is_ignored(digits, tmp_path, capfd):
    out = tmp_path / "base.safetensors"
    stale = Checkpoint(checkpoint_path(out), "other settings", 1.0)
    stale.stage = 0
    stale.save({"model": {}, "step": 3, "batch": 0, "epoch_start": torch.Generator().get_state()})
    train = {"epochs": 1, "batch_size": 128, "lr": 3e-3}
    train_base(digits, out, TINY_SPEC, train, False, None, "cpu")
    assert "written with other settings" in capfd.readouterr().err
    assert not checkpoint_path(out).exists()
    again = tmp_path / "again.safetensors"
    train_base(digits, again, TINY_SPEC, train, False, None, "cpu")
    assert_same_weights(out, again)


def test_precision_is_a_recorded_setting(digits, tmp_path):
    fp32, bf16 = tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors"
    train = {"epochs": 0.2, "batch_size": 128, "lr": 3e-3}
    train_base(digits, fp32, TINY_SPEC, train, False, None, "cpu")
    meta = train_base(digits, bf16, TINY_SPEC, {**train, "precision": "bf16", "tf32": True},
                      False, None, "cpu")
    assert meta["train"]["precision"] == "bf16" and meta["train"]["tf32"] is True
    assert any(not torch.equal(a, b) for a, b in
               zip(load_file(fp32).values(), load_file(bf16).values(), strict=True))
    with pytest.raises(PeftsError, match="training option precision must be one of"):
        train_base(digits, fp32, TINY_SPEC, {"precision": "fp16"}, False, None, "cpu")


# an augmented image folder loaded by 2 workers: the presets' case
FOLDER_TRAIN = {**TRAIN, "batch_size": 8, "num_workers": 2}


@pytest.fixture(scope="module")
def augmented_folder(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest of an augmented 3-class folder, the uninterrupted run's weights with 0
    workers: with 2 workers and any interruption the weights must be these)."""
    root = tmp_path_factory.mktemp("augmented")
    realsize.image_folder(root / "images", 3, 16, [0, 1, 2], test_name="test")
    prepare("imagefolder", root / "data", root=str(root / "images"),
            images={"crop": 16, "augment": True})
    manifest = root / "data" / "manifest.json"
    whole = root / "whole.safetensors"
    args = folder_command(manifest, {**FOLDER_TRAIN, "num_workers": 0})
    subprocess.run([*args, "--out", str(whole)], check=True, env=ENV, capture_output=True)
    return manifest, whole


def folder_command(manifest: Path, train: dict) -> list[str]:
    return [*base_command(manifest)[:-4], "--train", json.dumps(train), "--device", "cpu"]


def litter(out: Path) -> list[Path]:
    """Temporary files of a checkpoint save in progress (pefts.runtime.files.durable_path)."""
    return list(out.parent.glob(f".{checkpoint_path(out).name}.*.tmp"))


def interrupt(args: list[str], out: Path, sig: signal.Signals, during_save: bool,
              timeout: float = 300) -> subprocess.Popen:
    """Start the command in its own process group; once it is mid-epoch (a checkpoint
    with batch > 0 on disk) or in the middle of a save (its temporary file exists),
    freeze the group, confirm, and send ``sig`` to every process of it, the loader
    workers included, as SLURM does at a time limit."""
    proc = subprocess.Popen([*args, "--out", str(out)], env=ENV, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    ckpt = checkpoint_path(out)

    def caught() -> bool:
        if during_save:  # a save over an earlier checkpoint, which must survive
            return bool(litter(out)) and ckpt.exists()
        state = read_checkpoint(ckpt) if ckpt.exists() else None
        return state is not None and state["batch"] > 0

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if caught():
                os.killpg(proc.pid, signal.SIGSTOP)
                if caught():
                    os.killpg(proc.pid, sig)
                    os.killpg(proc.pid, signal.SIGCONT)
                    proc.wait(timeout=120)
                    return proc
                os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    where = "in a save" if during_save else "mid-epoch"
    pytest.fail(f"the run finished before it could be interrupted {where}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("during_save", [False, True], ids=["mid-epoch", "during-a-save"])
def test_augmented_run_with_workers_interrupted_resumes_to_the_same_weights(
        augmented_folder, tmp_path, sig, during_save):
    manifest, whole = augmented_folder
    args, out = folder_command(manifest, FOLDER_TRAIN), tmp_path / "model.safetensors"
    proc = interrupt(args, out, sig, during_save)
    if sig == signal.SIGTERM:
        # the step in progress ends, the checkpoint is written, the exit is a retryable 75
        assert proc.returncode == INTERRUPTED_EXIT, proc.stderr.read()
        message = proc.stderr.read()
        assert "stopped by SIGTERM at step" in message and "Traceback" not in message
        assert not litter(out)
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and read_checkpoint(checkpoint_path(out)) is not None
    rerun = subprocess.run([*args, "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from checkpoint" in rerun.stderr
    assert not litter(out) and not checkpoint_path(out).exists()
    assert_same_weights(whole, out)


@pytest.mark.slow
def test_a_checkpoint_of_the_presets_lora_run_holds_no_frozen_tensor(digits, tmp_path, monkeypatch):
    """The CIFAR-10 preset's LoRA run on a random ViT-B/16: its checkpoint keeps the LoRA
    factors, the head and their optimiser state, not the 86M frozen weights."""
    import yaml

    from pefts.finetuning import runs

    preset = yaml.safe_load((Path(__file__).parents[1] / "configs/cifar10-vitb16.yaml").read_text())
    weights = realsize.vitb16_weights(tmp_path / "vitb16.safetensors")
    spec = {k: preset["base"][k] for k in ("arch", "input_size", "model_kwargs", "mean", "std")}
    base = tmp_path / "base.safetensors"
    train_base(digits, base, spec, {"epochs": 0}, True, str(weights), "cpu", eval_max=2)
    lora = preset["method_params"]["lora"]
    num_train = json.loads(digits.read_text())["num_train"]
    # fp32: the preset's bf16 runs on a reference path on a CPU without bf16 units (3.7
    # minutes for this one step); what a checkpoint holds does not depend on it
    train = {**lora["train"], "epochs": 2 / num_train, "batch_size": 2, "num_workers": 0,
             "precision": "fp32"}
    out = tmp_path / "lora.safetensors"
    monkeypatch.setattr(runs, "discard", lambda out: None)  # keep the run-end checkpoint
    meta = runs.finetune(digits, base, out, "lora", 0.25, lora["hparams"], train, "cpu", eval_max=2)
    state = torch.load(checkpoint_path(out), weights_only=True)
    size = checkpoint_path(out).stat().st_size
    print(f"\nLoRA checkpoint of the CIFAR-10 preset: {size / 1e6:.2f} MB, "
          f"{sum(t.numel() for t in state['model'].values()):,} tensor entries "
          f"({meta['trainable_params']:,} trainable; the base {weights.stat().st_size / 1e6:.0f} MB)")
    # the LoRA factors and the head: no frozen tensor of the ViT-B/16
    assert all("lora_" in name or "head" in name for name in state["model"]), sorted(state["model"])
    assert sum(t.numel() for t in state["model"].values()) == meta["trainable_params"]
    # weights and AdamW's two moments: about 3 x 4 bytes per trainable parameter
    assert size < 16 * meta["trainable_params"] + 1_000_000
