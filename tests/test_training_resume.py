"""Training that survives a kill: SIGKILL a real `pefts train-base` / `pefts finetune`
(gradient methods, the denoiser's two stages, the black box's SPSA) mid-epoch, run the
same command again, and the final weights equal an uninterrupted run's."""

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

from pefts.checkpoints import Checkpoint, checkpoint_path
from pefts.errors import PeftsError
from pefts.runs import train_base
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
