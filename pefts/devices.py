"""Pick the device for a job: the GPU a scheduler gave it, or one leased by lock file.

Under a scheduler that binds devices (SLURM with cgroup confinement, the common setup),
a job sees only its own GPUs, renumbered from 0: every one-GPU job has
CUDA_VISIBLE_DEVICES=0, so it must use that GPU at once and take no lock (a lock
named "0" would queue every job of the node on one file).

On a shared box without a scheduler, Snakemake never tells a job which GPU it holds,
so each job takes a non-blocking flock on one lock file per GPU, named by physical id.
The kernel frees the lock when the job dies. Lock files live in a per-user folder and
are opened without truncation, so a file left by another user never breaks the lease.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from pefts.errors import PeftsError

_held: list[int] = []  # keep lock descriptors open for the life of the process


def _ids(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def scheduler_gpus(env: Mapping[str, str]) -> list[str] | None:
    """The physical GPU ids a scheduler bound to this job, or None outside one.

    SLURM sets SLURM_JOB_ID for every job; with GPUs it also sets SLURM_STEP_GPUS /
    SLURM_JOB_GPUS (physical ids) and CUDA_VISIBLE_DEVICES (what torch sees)."""
    if not env.get("SLURM_JOB_ID"):
        return None
    physical = _ids(env.get("SLURM_STEP_GPUS")) or _ids(env.get("SLURM_JOB_GPUS"))
    visible = _ids(env.get("CUDA_VISIBLE_DEVICES"))
    if not physical and not visible:
        return None  # a CPU-only allocation: nothing bound, fall back to leasing
    return physical or visible


def physical_ids(count: int, env: Mapping[str, str]) -> list[str]:
    """Node-wide names of the ``count`` GPUs torch sees, in torch's order."""
    bound = scheduler_gpus(env)
    visible = bound if bound is not None else _ids(env.get("CUDA_VISIBLE_DEVICES"))
    return [visible[i] if i < len(visible) else str(i) for i in range(count)]


def lock_folder(env: Mapping[str, str] | None = None) -> Path:
    """This user's folder for GPU lock files: $PEFTS_GPU_LOCK_DIR if set, else
    $XDG_RUNTIME_DIR/pefts-locks, else <tmp>/pefts-locks-<uid> (created 0700).
    Per user, so another user's files can never block or break ours."""
    env = os.environ if env is None else env
    if env.get("PEFTS_GPU_LOCK_DIR"):
        folder = Path(env["PEFTS_GPU_LOCK_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    candidates = []
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "pefts-locks")
    candidates.append(Path(tempfile.gettempdir()) / f"pefts-locks-{os.getuid()}")
    candidates.append(Path.home() / ".cache" / "pefts" / "gpu-locks")
    for folder in candidates:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if folder.stat().st_uid == os.getuid() and os.access(folder, os.W_OK):
            return folder  # a folder someone else planted under our name is skipped
    raise PeftsError("no writable folder for GPU lock files; set PEFTS_GPU_LOCK_DIR")


def _open_lock(folder: Path, physical: str) -> int | None:
    """A descriptor to lock for GPU ``physical``. Never truncates, never needs to own
    the file: flock works on a read-only descriptor, and a file we cannot open at all
    (another user's, mode 0600) gives way to a per-user name."""
    path = folder / f"pefts-gpu-{physical}.lock"
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o644)
        except PermissionError:
            continue
    try:
        return os.open(folder / f"pefts-gpu-{physical}.{os.getuid()}.lock",
                       os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None


def lease_gpu(count: int, lock_dir: str | Path | None = None,
              env: Mapping[str, str] | None = None) -> int | None:
    """Lock a free GPU among the ``count`` visible ones and return its torch index,
    or None if every GPU is taken. Locks are named by physical id, so jobs that see
    different CUDA_VISIBLE_DEVICES still agree."""
    env = os.environ if env is None else env
    folder = Path(lock_dir) if lock_dir is not None else lock_folder(env)
    for index, physical in enumerate(physical_ids(count, env)):
        fd = _open_lock(folder, physical)
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)
        return index
    return None


def choose_gpu(count: int, lock_dir: str | Path | None = None, poll: float = 2.0,
               env: Mapping[str, str] | None = None) -> int:
    """The torch index of the GPU this job uses, among ``count`` visible ones.

    One GPU bound by a scheduler: index 0 at once, no lock. Several bound (a Snakemake
    run inside one allocation): lease among them by physical id. No scheduler: lease."""
    env = os.environ if env is None else env
    bound = scheduler_gpus(env)
    if bound is not None and count >= 1 and len(bound) == 1:
        return 0
    return wait_for_gpu(count, lock_dir, poll, env)


def wait_for_gpu(count: int, lock_dir: str | Path | None = None, poll: float = 2.0,
                 env: Mapping[str, str] | None = None) -> int:
    """Lease a GPU, waiting while all are taken. With --resources gpu=N Snakemake never
    starts more GPU jobs than there are GPUs, so this returns at once; without it, extra
    jobs queue here instead of failing or crowding one GPU."""
    gpu = lease_gpu(count, lock_dir, env)
    if gpu is None:
        print(f"pefts: all {count} GPU(s) are leased by other jobs; waiting "
              "(limit parallel GPU jobs with --resources gpu=N)", file=sys.stderr, flush=True)
    while gpu is None:
        time.sleep(poll)
        gpu = lease_gpu(count, lock_dir, env)
    return gpu


def resolve_device(name: str):  # -> torch.device; torch imported lazily (cheap choice tests)
    """'auto' takes the scheduler's or a leased GPU when CUDA is there, else the CPU;
    'cpu', 'cuda', 'cuda:N' as given."""
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        gpu = choose_gpu(torch.cuda.device_count())
        torch.cuda.set_device(gpu)
        return torch.device(f"cuda:{gpu}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PeftsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta...: no code path here is tested on them
        raise PeftsError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PeftsError(f"device {name} requested but this torch has no usable CUDA "
                         f"(torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PeftsError(f"device {name} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
