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

from pefts.errors import PeftsError
from pefts.runtime.devices import (
    Gpu,
    lease_gpu,
    lock_folder,
    resolve_device,
    scheduler_gpus,
    task_gpus,
    wait_for_gpu,
)


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
    assert wait_for_gpu([Gpu(0, "0")], tmp_path, poll=0.05) == Gpu(0, "0")
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


# --- GPU choice in real processes, with the environment each way SLURM hands out GPUs sets

# prints "<torch index> <node-wide name>" or "cpu", then holds the GPU until stdin closes
CHOOSE = ("import sys; from pefts.runtime.devices import bind_gpu; from pefts.errors import PeftsError\n"
          "gpus = None if sys.argv[2] == '-' else int(sys.argv[2])\n"
          "try:\n    gpu = bind_gpu(int(sys.argv[1]), poll=0.05, gpus=gpus)\n"
          "except PeftsError as err:\n    sys.exit(f'error: {err}')\n"
          "print('cpu' if gpu is None else f'{gpu.index} {gpu.name}', flush=True); sys.stdin.read()")


def _chooser(count: int, env: dict, gpus: int | None = 1, python: str = sys.executable,
             **popen) -> subprocess.Popen:
    """A process that sees ``count`` GPUs (what torch would count), picks one for a rule
    asking for ``gpus``, prints it and holds it until stdin closes."""
    return subprocess.Popen([python, "-c", CHOOSE, str(count), "-" if gpus is None else str(gpus)],
                            env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def _base_env(lock_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    return {**env, "PEFTS_GPU_LOCK_DIR": str(lock_dir),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


def _answers(procs: list[subprocess.Popen], timeout: float, grace: float) -> list[str | None]:
    """Each process's line: up to ``timeout`` for the first to answer, ``grace`` more for
    the rest. Jobs started together race for the lease, so either may be the one that
    waits; reading them in turn waited out the full timeout whenever the second won."""
    answers: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < len(procs) and (left := deadline - time.monotonic()) > 0:
        waiting = {p.stdout: i for i, p in enumerate(procs) if i not in answers}
        ready, _, _ = select.select(list(waiting), [], [], left)
        if not ready:
            break
        for stream in ready:
            answers[waiting[stream]] = stream.readline().strip()
        deadline = min(deadline, time.monotonic() + grace)
    return [answers.get(i) for i in range(len(procs))]


def _release(procs) -> None:
    for proc in procs:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # still waiting for a GPU: it never reads stdin
            proc.kill()
            proc.wait()


def _all_at_once(tmp_path, count: int, envs: list[dict], gpus: int | None = 1) -> list[str]:
    """What each of several jobs started together chose, all holding it at the same time."""
    procs = [_chooser(count, {**_base_env(tmp_path), **env}, gpus) for env in envs]
    try:
        return [_readline(p, 60) for p in procs]
    finally:
        _release(procs)


def _refusal(tmp_path, count: int, env: dict, gpus: int | None) -> str:
    proc = _chooser(count, {**_base_env(tmp_path), **env}, gpus)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == "", out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# sbatch --gpus=1 and sbatch --gres=gpu:1 under ConstrainDevices: four jobs on one node,
# each sees CUDA_VISIBLE_DEVICES=0; only SLURM_JOB_GPUS names the physical GPU
GPUS_FLAG = {"SLURM_GPUS": "1"}
GRES_FLAG = {"SLURM_JOB_GRES": "gpu:1"}


@pytest.mark.parametrize("flag", [GPUS_FLAG, GRES_FLAG], ids=["--gpus", "--gres"])
def test_slurm_jobs_each_use_their_own_gpu_at_once(tmp_path, flag):
    envs = [{**flag, "SLURM_JOB_ID": str(100 + job), "SLURM_JOB_GPUS": str(job),
             "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0"} for job in range(4)]
    assert _all_at_once(tmp_path, 1, envs) == ["0 0", "0 1", "0 2", "0 3"]
    assert not list(tmp_path.glob("*.lock"))  # no lock: never queued behind each other


def test_an_srun_step_uses_its_step_gpus_not_the_jobs(tmp_path):
    # one job of 4 GPUs runs two one-GPU steps (srun --gpus=1 ... &): each step's GPU is
    # in SLURM_STEP_GPUS; SLURM_JOB_GPUS lists all four
    envs = [{"SLURM_JOB_ID": "9", "SLURM_STEP_ID": str(step), "SLURM_JOB_GPUS": "0,1,2,3",
             "SLURM_STEP_GPUS": gpu, "CUDA_VISIBLE_DEVICES": "0"}
            for step, gpu in enumerate(["1", "3"])]
    assert _all_at_once(tmp_path, 1, envs) == ["0 1", "0 3"]


def test_gpus_per_task_bound_per_task(tmp_path):
    # srun --ntasks=2 --gpus-per-task=1 with per-task binding: each task sees its own GPU
    step = {"SLURM_JOB_ID": "11", "SLURM_STEP_GPUS": "4,6", "SLURM_JOB_GPUS": "4,6",
            "SLURM_GPUS_PER_TASK": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}
    envs = [{**step, "SLURM_LOCALID": str(task), "CUDA_VISIBLE_DEVICES": str(task)}
            for task in range(2)]  # renumbered under confinement: 0 is 4, 1 is 6
    assert _all_at_once(tmp_path, 1, envs) == ["0 4", "0 6"]
    unconfined = [{**env, "CUDA_VISIBLE_DEVICES": gpu} for env, gpu in zip(envs, ["4", "6"], strict=True)]
    assert _all_at_once(tmp_path, 1, unconfined) == ["0 4", "0 6"]
    assert not list(tmp_path.glob("*.lock"))


def test_gpus_per_task_without_per_task_binding_takes_the_tasks_share(tmp_path):
    # --gpu-bind=none (or an old SLURM): every task sees both GPUs; SLURM_LOCALID decides
    step = {"SLURM_JOB_ID": "12", "SLURM_STEP_GPUS": "0,1", "SLURM_JOB_GPUS": "0,1",
            "SLURM_GPUS_PER_TASK": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
            "CUDA_VISIBLE_DEVICES": "0,1"}
    envs = [{**step, "SLURM_LOCALID": str(task)} for task in range(2)]
    assert _all_at_once(tmp_path, 2, envs) == ["0 0", "1 1"]
    assert not list(tmp_path.glob("*.lock"))
    # more tasks than GPUs to share: refused, not doubled up on one
    err = _refusal(tmp_path, 2, {**step, "SLURM_LOCALID": "2", "SLURM_NTASKS": "3",
                                 "SLURM_STEP_NUM_TASKS": "3"}, 1)
    assert "task 2" in err


@pytest.mark.slow  # three leasing processes and a timeout
def test_snakemake_inside_an_allocation_leases_among_its_gpus(tmp_path):
    # salloc --gpus=2, then snakemake --resources gpu=2 inside it: every job sees both
    # GPUs of the allocation, wants one, and leases it by physical id
    env = {"SLURM_JOB_ID": "13", "SLURM_JOB_GPUS": "4,6", "CUDA_VISIBLE_DEVICES": "0,1"}
    first = [_chooser(2, {**_base_env(tmp_path), **env}) for _ in range(2)]
    try:
        assert sorted(_readline(p, 60) for p in first) == ["0 4", "1 6"]
        assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["pefts-gpu-4.lock",
                                                                 "pefts-gpu-6.lock"]
        third = _chooser(2, {**_base_env(tmp_path), **env})
        try:
            assert _readline(third, 3) is None  # both taken: it waits, never doubles up
        finally:
            _release([third])
    finally:
        _release(first)


def test_uuids_in_cuda_visible_devices_name_the_locks(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "GPU-8f2e4b1a-0c3d,MIG-GPU-8f2e/1/0"}
    assert sorted(_all_at_once(tmp_path, 2, [env, env])) == ["0 GPU-8f2e4b1a-0c3d",
                                                             "1 MIG-GPU-8f2e/1/0"]
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == [
        "pefts-gpu-GPU-8f2e4b1a-0c3d.lock", "pefts-gpu-MIG-GPU-8f2e_1_0.lock"]
    # under SLURM a UUID binding is the job's own GPU: used at once
    slurm = {"SLURM_JOB_ID": "14", "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "GPU-8f2e4b1a-0c3d"}
    assert _all_at_once(tmp_path, 1, [slurm]) == ["0 2"]


def test_a_slurm_job_given_no_gpu_never_uses_one(tmp_path):
    no_gpu = {"SLURM_JOB_ID": "15"}  # sbatch without --gpus/--gres on an unconfined node
    # the rule asked for a GPU (gpus_per_job: 1): refused whatever torch sees
    for count in (0, 2):
        assert "gave it none" in _refusal(tmp_path, count, no_gpu, 1)
    # by hand (no --gpus): refused while another job's GPU is in sight, the CPU otherwise
    assert "gave it none" in _refusal(tmp_path, 2, no_gpu, None)
    assert _all_at_once(tmp_path, 0, [no_gpu], gpus=None) == ["cpu"]
    # the CPU by choice (gpus_per_job: 0 passes --gpus 0)
    assert _all_at_once(tmp_path, 2, [no_gpu], gpus=0) == ["cpu"]
    # CUDA_VISIBLE_DEVICES exported by the submitting shell is not a binding
    assert "gave it none" in _refusal(tmp_path, 1, {**no_gpu, "CUDA_VISIBLE_DEVICES": "0"}, 1)
    assert not list(tmp_path.glob("*.lock"))


def test_an_exported_cuda_visible_devices_is_not_a_binding_outside_slurm(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0"}  # a shell's export on a shared box
    first = _chooser(1, {**_base_env(tmp_path), **env})
    second = _chooser(1, {**_base_env(tmp_path), **env})
    try:
        assert sorted(_answers([first, second], 60, 3), key=str) == ["0 0", None]
    finally:
        _release([first, second])


def test_more_than_one_gpu_per_job_is_refused_in_one_line(tmp_path, run_cli):
    assert "runs on one GPU" in _refusal(tmp_path, 4, {"SLURM_JOB_ID": "16", "SLURM_JOB_GPUS": "0,1",
                                                       "CUDA_VISIBLE_DEVICES": "0,1"}, 2)
    code, _, err = run_cli("certify", "--model", "m", "--base", "b", "--data", "d", "--sigma", "0.5",
                           "--out", str(tmp_path / "o.tsv"), "--gpus", "2")
    assert code == 1 and err.count("\n") == 1 and "gpus_per_job: 1" in err
    assert not (tmp_path / "o.tsv").exists()
    # and the config that would ask for it is refused before any job starts
    from pefts.study.experiments import load_config

    two = tmp_path / "two.yaml"
    two.write_text("gpus_per_job: 2\n")
    with pytest.raises(PeftsError, match="runs on one GPU"):
        load_config(["configs/cifar10-vitb16.yaml", str(two)])


def test_gpus_zero_runs_on_the_cpu_and_contradicts_cuda():
    from pefts.runtime.devices import DeviceRequest

    assert resolve_device(DeviceRequest("auto", 0)) == torch.device("cpu")
    with pytest.raises(PeftsError, match="contradict"):
        resolve_device(DeviceRequest("cuda:0", 0))


def test_slurm_binding_needs_slurms_own_variables():
    assert scheduler_gpus({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}) == []
    assert scheduler_gpus({"CUDA_VISIBLE_DEVICES": "0"}) is None  # no scheduler
    assert scheduler_gpus({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1",
                           "SLURM_STEP_GPUS": "1"}) == ["1"]
    # no CUDA_VISIBLE_DEVICES: torch sees the node by physical id, or (confined) only ours
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2,3"}
    assert task_gpus(4, job) == [Gpu(2, "2"), Gpu(3, "3")]
    assert task_gpus(2, job) == [Gpu(0, "2"), Gpu(1, "3")]


@pytest.mark.slow  # four leasing processes and timeouts (test_two_users_coordinate_on_one_gpu: quick)
def test_shared_box_still_runs_one_job_per_gpu(tmp_path):
    env = _base_env(tmp_path)
    first = [_chooser(2, env) for _ in range(2)]
    try:
        assert sorted(_readline(p, 60) for p in first) == ["0 0", "1 1"]
        waiting = [_chooser(2, env) for _ in range(2)]
        try:
            assert _answers(waiting, 3, 0) == [None, None]  # both GPUs are taken
            freed = first.pop(0)
            _release([freed])
            ready, _, _ = select.select([p.stdout for p in waiting], [], [], 30)
            assert len(ready) == 1  # exactly one waiting job moved in
            assert ready[0].readline().strip() in {"0 0", "1 1"}
            other = next(p for p in waiting if p.stdout is not ready[0])
            assert _readline(other, 1) is None
        finally:
            _release(waiting)
    finally:
        _release(first)


# --- one lock folder for every user of the box

def _other_user():
    """Popen arguments that run the chooser as another user than this test's: as root,
    user nobody with a Python nobody may execute (the choice is stdlib only)."""
    if os.getuid() != 0:
        pytest.fail("these tests switch users: run them as root (CI and this box do)")
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([python, "-c", "pass"], user="nobody", capture_output=True)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return {"user": "nobody"}, python
    pytest.fail("running as root and no Python that user nobody can execute")


@pytest.fixture
def shared_dir():
    """A lock folder several users share, like /var/tmp (pytest's tmp_path is private)."""
    shared = Path(tempfile.mkdtemp(prefix="pefts-shared-locks-"))
    shared.chmod(0o1777)
    yield shared
    shutil.rmtree(shared)


def test_two_users_coordinate_on_one_gpu(shared_dir):
    popen, python = _other_user()
    mine = _chooser(1, _base_env(shared_dir))
    try:
        assert _readline(mine, 60) == "0 0"
        lock = shared_dir / "pefts-gpu-0.lock"
        assert lock.stat().st_mode & 0o777 == 0o644  # readable by all whatever the umask
        theirs = _chooser(1, _base_env(shared_dir), python=python, **popen)
        try:
            assert _readline(theirs, 3) is None  # they wait for my GPU...
            _release([mine])
            assert _readline(theirs, 30) == "0 0"  # ...and take it once I am done
        finally:
            _release([theirs])
    finally:
        _release([mine])


def test_a_lock_file_is_never_truncated(shared_dir):
    # a file in the lock's place with content (another user's, read-only; or this user's
    # own, writable): leasing must neither truncate nor replace it
    popen, python = _other_user()
    lock = shared_dir / "pefts-gpu-0.lock"
    for mode, who in ((0o644, {}), (0o444, popen)):
        lock.write_text("kept\n")
        lock.chmod(mode)
        proc = _chooser(1, _base_env(shared_dir), python=python if who else sys.executable, **who)
        try:
            assert _readline(proc, 60) == "0 0", proc.stderr.read() if proc.poll() is not None else ""
        finally:
            _release([proc])
        assert lock.read_text() == "kept\n"
        assert os.stat(lock).st_mode & 0o777 == mode
        lock.unlink()


def test_a_lock_file_no_one_else_can_read_is_refused_in_one_line(shared_dir):
    popen, python = _other_user()
    lock = shared_dir / "pefts-gpu-0.lock"
    lock.write_text("")
    lock.chmod(0o600)  # root's; nobody could neither lock it nor coordinate beside it
    proc = _chooser(1, _base_env(shared_dir), python=python, **popen)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == "" and err.count("\n") == 1 and "chmod 644" in err


def test_default_lock_folder_is_shared_sticky_and_not_the_login_session(tmp_path, monkeypatch):
    import pefts.runtime.devices as devices

    fixed = tmp_path / "var-tmp" / "pefts-gpu-locks"
    (tmp_path / "var-tmp").mkdir()
    monkeypatch.setattr(devices, "SHARED_LOCK_DIRS", (fixed, tmp_path / "tmp" / "pefts-gpu-locks"))
    runtime = tmp_path / "run-user"
    runtime.mkdir()
    old = os.umask(0o077)
    try:
        assert lock_folder({"XDG_RUNTIME_DIR": str(runtime)}) == fixed
    finally:
        os.umask(old)
    assert fixed.stat().st_mode & 0o7777 == 0o1777  # sticky, world-writable, like /tmp
    assert not list(runtime.iterdir())
    # a symlink planted under the fixed name is refused, not followed
    fixed.rmdir()
    fixed.symlink_to(runtime)
    with pytest.raises(PeftsError, match="not a folder"):
        lock_folder({})
