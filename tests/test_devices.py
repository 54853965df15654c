"""GPU leasing by lock file: each job takes a GPU no other job holds, and a dead job's
lock is released by the kernel."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from pefts.devices import lease_gpu, lock_folder, physical_ids, resolve_device, scheduler_gpus, wait_for_gpu
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
        with pytest.raises(PeftsError, match="no usable CUDA"):
            resolve_device("cuda:0")
    # devices torch knows but pefts was never run on are refused before any work starts
    for name in ("mps", "xpu:0", "meta"):
        with pytest.raises(PeftsError, match="not supported"):
            resolve_device(name)


# --- GPU choice in real processes: a scheduler's binding, a shared box, another user's file

CHOOSE = ("import sys; from pefts.devices import choose_gpu; "
          "print(choose_gpu(int(sys.argv[1]), poll=0.05), flush=True); sys.stdin.read()")


def _chooser(count: int, env: dict, python: str = sys.executable, **popen) -> subprocess.Popen:
    """A process that picks a GPU, prints its index and holds it until stdin closes."""
    return subprocess.Popen([python, "-c", CHOOSE, str(count)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def _base_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    return {**env, "PEFTS_GPU_LOCK_DIR": str(tmp_path),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


def _release(procs) -> None:
    for proc in procs:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # still waiting for a GPU: it never reads stdin
            proc.kill()
            proc.wait()


def test_slurm_jobs_each_use_their_own_gpu_at_once(tmp_path):
    # four one-GPU jobs on one node under ConstrainDevices: each sees CUDA_VISIBLE_DEVICES=0
    procs = [_chooser(1, {**_base_env(tmp_path), "SLURM_JOB_ID": str(100 + job),
                          "SLURM_JOB_GPUS": str(job), "CUDA_VISIBLE_DEVICES": "0"})
             for job in range(4)]
    try:
        assert [_readline(p, 60) for p in procs] == ["0"] * 4  # all hold it at the same time
        assert not list(tmp_path.glob("*.lock"))  # and took no lock
    finally:
        _release(procs)


def test_slurm_binding_without_job_gpus_still_binds(tmp_path):
    env = {**_base_env(tmp_path), "SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}
    assert scheduler_gpus(env) == ["0"]
    assert scheduler_gpus({**env, "CUDA_VISIBLE_DEVICES": ""}) is None  # CPU-only job
    assert scheduler_gpus({"CUDA_VISIBLE_DEVICES": "0"}) is None  # no scheduler
    # several GPUs in one allocation (Snakemake inside salloc): lease by physical id
    assert physical_ids(2, {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "4,6",
                            "CUDA_VISIBLE_DEVICES": "0,1"}) == ["4", "6"]


def test_shared_box_still_runs_one_job_per_gpu(tmp_path):
    env = _base_env(tmp_path)
    first = [_chooser(2, env) for _ in range(2)]
    try:
        assert sorted(_readline(p, 60) for p in first) == ["0", "1"]
        waiting = [_chooser(2, env) for _ in range(2)]
        try:
            assert [_readline(p, 3) for p in waiting] == [None, None]  # both GPUs are taken
            freed = first.pop(0)
            _release([freed])
            ready, _, _ = select.select([p.stdout for p in waiting], [], [], 30)
            assert len(ready) == 1  # exactly one waiting job moved in
            assert ready[0].readline().strip() in {"0", "1"}
            other = next(p for p in waiting if p.stdout is not ready[0])
            assert _readline(other, 1) is None
        finally:
            _release(waiting)
    finally:
        _release(first)


def _as_another_user():
    """Popen arguments that run the chooser as a user other than the lock file's owner.
    As root: user nobody, with a Python nobody may execute (the choice is stdlib only)."""
    if os.getuid() != 0:
        return {}, sys.executable
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([python, "-c", "pass"], user="nobody", capture_output=True)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return {"user": "nobody"}, python
    pytest.fail("running as root and no Python that user nobody can execute")


@pytest.mark.parametrize("mode", [0o444, 0o600])
def test_a_lock_file_of_another_user_does_not_break_the_lease(mode):
    # a lock folder several users share, like /tmp itself (pytest's tmp_path is private)
    shared = Path(tempfile.mkdtemp(prefix="pefts-shared-locks-"))
    shared.chmod(0o1777)
    try:
        _lease_beside_another_users_file(shared, mode)
    finally:
        shutil.rmtree(shared)


def _lease_beside_another_users_file(shared: Path, mode: int) -> None:
    lock = shared / "pefts-gpu-0.lock"
    lock.write_text("")
    lock.chmod(mode)  # as root the file's owner is root: another user for nobody
    popen, python = _as_another_user()
    proc = _chooser(1, {**_base_env(shared), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                    python=python, **popen)
    try:
        assert _readline(proc, 60) == "0", proc.stderr.read() if proc.poll() is not None else ""
    finally:
        _release([proc])
    assert lock.read_text() == ""  # never truncated or taken over


def test_default_lock_folder_is_private_to_the_user(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = lock_folder({})
    assert folder == tmp_path / f"pefts-locks-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    runtime = tmp_path / "run"
    runtime.mkdir()
    assert lock_folder({"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "pefts-locks"
