"""Pick the device for a job: the GPU a scheduler gave it, or one leased by lock file.

Under SLURM a job or task uses the GPUs SLURM bound to it (SLURM_STEP_GPUS, else
SLURM_JOB_GPUS: physical ids) and takes no lock: with cgroup confinement every one-GPU
job sees CUDA_VISIBLE_DEVICES=0, so a lock named by what torch sees would queue every
job of a node on one file. Several tasks of one step (--gpus-per-task) each take their
own share by SLURM_LOCALID when SLURM did not bind each task to its own. A job given
more GPUs than it uses (Snakemake running inside one allocation) leases among them. A
job SLURM gave no GPU never touches one: any GPU it can see belongs to another job, and
a CUDA_VISIBLE_DEVICES exported from the submitting shell is not a binding.

On a shared box without a scheduler, Snakemake never tells a job which GPU it holds,
so each job takes a non-blocking flock on one lock file per GPU, named node-wide
(physical id or UUID). The kernel frees the lock when the job dies. The lock folder is
one fixed sticky, world-writable folder for every user of the box (not
$XDG_RUNTIME_DIR, which a login session removes with its locks in it), and lock files
are made readable by everyone and opened read-only, never truncated: flock needs no
write access, so any user can lock any GPU's file.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pefts.errors import PeftsError

_held: list[int] = []  # keep lock descriptors open for the life of the process

# one folder for every user of the box: /var/tmp survives reboots and logouts and is
# seldom private to a job or service; the temp folder only where /var/tmp is absent
SHARED_LOCK_DIRS = (Path("/var/tmp/pefts-gpu-locks"),
                    Path(tempfile.gettempdir()) / "pefts-gpu-locks")


@dataclass(frozen=True)
class Gpu:
    index: int  # torch's index, within what CUDA_VISIBLE_DEVICES shows
    name: str  # node-wide: a physical id or a UUID; names the lock file


class DeviceRequest(str):
    """A --device value that also carries --gpus (the rule's `resources: gpu=`), so
    every command reaches resolve_device with both without a second parameter."""

    gpus: int | None = None

    def __new__(cls, device: str, gpus: int | None) -> DeviceRequest:
        request = super().__new__(cls, device)
        request.gpus = gpus
        return request


def _ids(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def in_scheduler_job(env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_ID"))


def scheduler_gpus(env: Mapping[str, str]) -> list[str] | None:
    """The GPUs SLURM bound to this step (srun) or job (sbatch), node-wide ids; [] in a
    job given none, None outside a scheduler. CUDA_VISIBLE_DEVICES alone is not a
    binding: sbatch exports the submitting shell's environment, which may hold one."""
    if not in_scheduler_job(env):
        return None
    return _ids(env.get("SLURM_STEP_GPUS")) or _ids(env.get("SLURM_JOB_GPUS"))


def _is_index(value: str) -> bool:
    return value.isdigit()


def visible_gpus(count: int, env: Mapping[str, str]) -> list[Gpu]:
    """The ``count`` GPUs torch sees, with node-wide names.

    CUDA_VISIBLE_DEVICES entries are physical ids, UUIDs, or (under cgroup confinement)
    indices renumbered from 0 into the bound ids; where it is unset torch sees the node's
    GPUs by physical id."""
    bound = scheduler_gpus(env) or []
    if "CUDA_VISIBLE_DEVICES" not in env:
        if bound and count == len(bound):  # confined to the bound GPUs, renumbered
            return [Gpu(i, name) for i, name in enumerate(bound)]
        return [Gpu(i, str(i)) for i in range(count)]
    visible = _ids(env["CUDA_VISIBLE_DEVICES"])[:count]
    if bound and len(visible) == len(bound):
        return [Gpu(i, name) for i, name in enumerate(bound)]  # same GPUs, same order
    gpus = []
    for i, entry in enumerate(visible):
        if bound and entry not in bound and _is_index(entry) and int(entry) < len(bound):
            entry = bound[int(entry)]  # renumbered by confinement
        gpus.append(Gpu(i, entry))
    return gpus


def _gpus_per_task(env: Mapping[str, str]) -> int | None:
    value = env.get("SLURM_GPUS_PER_TASK", "")
    value = value.rsplit(":", 1)[-1]  # "a100:1" names a type
    return int(value) if value.isdigit() and int(value) > 0 else None


def task_gpus(count: int, env: Mapping[str, str]) -> list[Gpu] | None:
    """The GPUs SLURM gave this task (all that torch sees of them); None outside a
    scheduler, [] when it gave none."""
    bound = scheduler_gpus(env)
    if bound is None or not bound:
        return bound
    if "CUDA_VISIBLE_DEVICES" not in env and count > len(bound) and all(map(_is_index, bound)):
        # not confined and CUDA_VISIBLE_DEVICES unset: torch sees the node by physical id
        return [Gpu(int(b), b) for b in bound if int(b) < count]
    gpus = visible_gpus(count, env)
    per_task = _gpus_per_task(env)
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if per_task and tasks > 1 and len(gpus) > per_task:
        # every task of the step sees all its GPUs (no per-task binding): take our share
        local = int(env.get("SLURM_LOCALID") or 0)
        share = gpus[local * per_task:(local + 1) * per_task]
        if len(share) < per_task:
            raise PeftsError(f"SLURM task {local} should get {per_task} GPU(s) of the "
                             f"{len(gpus)} it sees ({', '.join(g.name for g in gpus)}), "
                             "but they run out: check --gpus-per-task and --ntasks-per-node")
        return share
    return gpus


def lock_folder(env: Mapping[str, str] | None = None) -> Path:
    """The folder of GPU lock files every user of the box shares: $PEFTS_GPU_LOCK_DIR if
    set, else /var/tmp/pefts-gpu-locks (the temp folder's where /var/tmp is absent),
    created sticky and world-writable like /tmp itself."""
    env = os.environ if env is None else env
    if env.get("PEFTS_GPU_LOCK_DIR"):
        return _shared_folder(Path(env["PEFTS_GPU_LOCK_DIR"]), "PEFTS_GPU_LOCK_DIR")
    for folder in SHARED_LOCK_DIRS:
        if folder.parent.is_dir():
            return _shared_folder(folder, "the shared lock folder")
    raise PeftsError("no folder for GPU lock files; set PEFTS_GPU_LOCK_DIR")


def _shared_folder(folder: Path, what: str) -> Path:
    try:
        folder.mkdir(parents=True)
        folder.chmod(0o1777)  # mkdir's mode passes through the umask: set it after
    except FileExistsError:
        pass
    except OSError as err:
        raise PeftsError(f"cannot make {what} {folder} for GPU lock files: {err.strerror}; "
                         "set PEFTS_GPU_LOCK_DIR") from None
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):  # a symlink planted under the fixed name is refused
        raise PeftsError(f"{what} {folder} is not a folder; set PEFTS_GPU_LOCK_DIR")
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o1777:
        folder.chmod(0o1777)
    return folder


def lock_path(folder: Path, name: str) -> Path:
    # UUIDs of MIG instances may hold "/": keep the name one path component
    return folder / f"pefts-gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock"


def _open_lock(path: Path) -> int:
    """A descriptor to lock ``path`` with, made on first use. Read-only and never
    truncating: flock needs no write access, and an existing file of another user is
    opened without O_CREAT, which fs.protected_regular refuses in sticky folders."""
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        except PermissionError:
            owner = path.stat().st_uid
            raise PeftsError(f"GPU lock file {path} (owner uid {owner}) cannot be read by "
                             "this user: its owner must `chmod 644` it") from None
        # made readable by all under a private name, then linked into place, so the
        # file never exists with a mode other users cannot open
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(fd, 0o644)
        os.close(fd)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another job made it first: lock theirs
        finally:
            os.unlink(draft)


def lease(gpus: list[Gpu], lock_dir: str | Path | None = None,
          env: Mapping[str, str] | None = None) -> Gpu | None:
    """Lock a free GPU among ``gpus`` by its node-wide name, or None if all are taken."""
    env = os.environ if env is None else env
    folder = Path(lock_dir) if lock_dir is not None else lock_folder(env)
    for gpu in gpus:
        fd = _open_lock(lock_path(folder, gpu.name))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)
        return gpu
    return None


def lease_gpu(count: int, lock_dir: str | Path | None = None,
              env: Mapping[str, str] | None = None) -> int | None:
    """Lock a free GPU among the ``count`` visible ones and return its torch index,
    or None if every GPU is taken."""
    env = os.environ if env is None else env
    gpu = lease(visible_gpus(count, env), lock_dir, env)
    return None if gpu is None else gpu.index


def check_gpus(gpus: int | None) -> None:
    """One GPU per job: more would leave all but one idle, so it is refused."""
    if gpus is not None and gpus >= 2:
        raise PeftsError(f"{gpus} GPUs per job asked for, but a pefts job runs on one GPU "
                         "(no data parallelism): set gpus_per_job: 1 and run jobs side by "
                         "side (--resources gpu=N)")


def bind_gpu(count: int, lock_dir: str | Path | None = None, poll: float = 2.0,
             env: Mapping[str, str] | None = None, gpus: int | None = None) -> Gpu | None:
    """The GPU this job uses among the ``count`` torch sees, or None for the CPU.

    ``gpus`` is what the job's rule asked for (None: called by hand, one if there is
    one). Under a scheduler: the task's own GPU at once, no lock; a share of several
    (Snakemake inside an allocation): lease among them; none given: refused where the
    rule asked for one or a GPU is in sight (another job's). No scheduler: lease."""
    env = os.environ if env is None else env
    check_gpus(gpus)
    if gpus == 0:
        return None
    bound = scheduler_gpus(env)
    if bound is None:
        return wait_for_gpu(visible_gpus(count, env), lock_dir, poll, env) if count else None
    job = env.get("SLURM_JOB_ID")
    if not bound:
        if gpus or count:
            raise PeftsError(f"SLURM job {job} wants a GPU but SLURM gave it none: ask for "
                             "one (gpus_per_job: 1) or run on the CPU (device: cpu / --gpus 0)")
        return None
    if count == 0:  # bound, but this torch has no CUDA: the CPU is the only choice
        print(f"pefts: SLURM bound GPU(s) {', '.join(bound)} but torch has no usable CUDA; "
              "running on the CPU", file=sys.stderr, flush=True)
        return None
    given = task_gpus(count, env)
    if not given:
        raise PeftsError(f"SLURM job {job} was bound GPU(s) {', '.join(bound)} but torch "
                         f"sees none of them (CUDA_VISIBLE_DEVICES="
                         f"{env.get('CUDA_VISIBLE_DEVICES', '')!r})")
    if len(given) == 1:
        return given[0]
    return wait_for_gpu(given, lock_dir, poll, env)


def choose_gpu(count: int, lock_dir: str | Path | None = None, poll: float = 2.0,
               env: Mapping[str, str] | None = None, gpus: int | None = None) -> int | None:
    """The torch index of the GPU this job uses, or None for the CPU (see bind_gpu)."""
    gpu = bind_gpu(count, lock_dir, poll, env, gpus)
    return None if gpu is None else gpu.index


def wait_for_gpu(gpus: list[Gpu], lock_dir: str | Path | None = None, poll: float = 2.0,
                 env: Mapping[str, str] | None = None) -> Gpu:
    """Lease a GPU, waiting while all are taken. With --resources gpu=N Snakemake never
    starts more GPU jobs than there are GPUs, so this returns at once; without it, extra
    jobs queue here instead of failing or crowding one GPU."""
    gpu = lease(gpus, lock_dir, env)
    if gpu is None:
        print(f"pefts: all {len(gpus)} GPU(s) are leased by other jobs; waiting "
              "(limit parallel GPU jobs with --resources gpu=N)", file=sys.stderr, flush=True)
    while gpu is None:
        time.sleep(poll)
        gpu = lease(gpus, lock_dir, env)
    return gpu


def resolve_device(name: str):  # -> torch.device; torch imported lazily (cheap choice tests)
    """'auto' takes the scheduler's or a leased GPU when CUDA is there, else the CPU
    (with the refusals of bind_gpu); 'cpu', 'cuda', 'cuda:N' as given. A DeviceRequest
    also carries the rule's GPU count: 0 is the CPU by choice."""
    import torch

    gpus = getattr(name, "gpus", None)
    check_gpus(gpus)
    if name == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpu = bind_gpu(count, gpus=gpus)
        if gpu is None:
            return torch.device("cpu")
        torch.cuda.set_device(gpu.index)
        return torch.device(f"cuda:{gpu.index}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PeftsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta...: no code path here is tested on them
        raise PeftsError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and gpus == 0:
        raise PeftsError(f"--device {name} and --gpus 0 contradict each other")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PeftsError(f"device {name} requested but this torch has no usable CUDA "
                         f"(torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PeftsError(f"device {name} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
