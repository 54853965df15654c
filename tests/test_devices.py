"""GPU leasing by lock file: each job takes a GPU no other job holds, and a dead job's
lock is released by the kernel."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from pefts.devices import lease_gpu, resolve_device, wait_for_gpu
from pefts.errors import PeftsError


def test_each_lease_takes_a_free_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert lease_gpu(2, tmp_path) == 0
    assert lease_gpu(2, tmp_path) == 1
    assert lease_gpu(2, tmp_path) is None  # both held by this process


def test_locks_follow_physical_ids_and_die_with_their_holder(tmp_path, monkeypatch):
    # another job holds physical GPU 3, then exits: the kernel frees its lock
    hold = ("import fcntl, sys; h = open(sys.argv[1], 'w'); "
            "fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "pefts-gpu-3.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert lease_gpu(2, tmp_path) == 1  # torch index 1 is physical GPU 5
    holder.stdin.close()
    holder.wait()
    assert lease_gpu(2, tmp_path) == 0


def test_a_job_waits_for_a_gpu_to_free(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hold = ("import fcntl, sys, time; h = open(sys.argv[1], 'w'); "
            "fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); print('held', flush=True); "
            "time.sleep(0.5)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "pefts-gpu-0.lock")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    assert wait_for_gpu(1, tmp_path, poll=0.05) == 0
    assert time.monotonic() - start > 0.3  # it could only get the lock once the holder exited
    assert holder.wait(timeout=10) == 0
    assert "waiting" in capfd.readouterr().err


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PeftsError, match="unknown device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(PeftsError, match="CUDA is not available"):
            resolve_device("cuda:0")
