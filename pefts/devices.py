"""Pick the device for a job; on a GPU box, lease one GPU by lock file.

Snakemake never tells a job which GPU it holds, so each job takes a non-blocking
flock on one lock file per GPU. The kernel frees the lock when the job dies.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from pefts.errors import PeftsError

_held: list[object] = []  # keep lock handles open for the life of the process


def lease_gpu(count: int, lock_dir: str | Path | None = None) -> int | None:
    """Lock a free GPU among the ``count`` visible ones and return its torch index,
    or None if every GPU is taken. Locks are named by physical id, so jobs that see
    different CUDA_VISIBLE_DEVICES still agree."""
    lock_dir = Path(lock_dir or os.environ.get("PEFTS_GPU_LOCK_DIR", tempfile.gettempdir()))
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    for index in range(count):
        physical = visible[index] if index < len(visible) else str(index)
        handle = open(lock_dir / f"pefts-gpu-{physical}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return index
    return None


def wait_for_gpu(count: int, lock_dir: str | Path | None = None, poll: float = 2.0) -> int:
    """Lease a GPU, waiting while all are taken. With --resources gpu=N Snakemake never
    starts more GPU jobs than there are GPUs, so this returns at once; without it, extra
    jobs queue here instead of failing or crowding one GPU."""
    gpu = lease_gpu(count, lock_dir)
    if gpu is None:
        print(f"pefts: all {count} GPU(s) are leased by other jobs; waiting "
              "(limit parallel GPU jobs with --resources gpu=N)", file=sys.stderr, flush=True)
    while gpu is None:
        time.sleep(poll)
        gpu = lease_gpu(count, lock_dir)
    return gpu


def resolve_device(name: str) -> torch.device:
    """'auto' leases a GPU when CUDA is there, else the CPU; 'cpu', 'cuda', 'cuda:N' as given."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        gpu = wait_for_gpu(torch.cuda.device_count())
        torch.cuda.set_device(gpu)
        return torch.device(f"cuda:{gpu}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PeftsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PeftsError(f"device {name} requested but CUDA is not available")
    return device
