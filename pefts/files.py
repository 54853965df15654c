"""Durable file writes and fingerprints; free of torch, so a killed-shard test (and the
Snakefile) can import them cheaply."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pefts.errors import PeftsError


def file_digest(path: str | Path) -> str:
    """sha256 of a file: the fingerprint of weights and manifests in provenance records."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def durable_path(path: str | Path) -> Iterator[Path]:
    """The one way pefts writes a file durably: yield a temporary path in ``path``'s folder
    for the caller to fill, then fsync it, rename it over ``path`` and fsync the folder.

    A kill at any moment leaves either the old file or the new one, never half a file;
    on an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs get the usual mode
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the writer may have closed its handle: fsync by name
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` durably (``durable_path``): readers never see half a file."""
    with durable_path(path) as tmp, open(tmp, "w") as handle:
        handle.writelines(text.splitlines(keepends=True))  # by line: a kill test hooks each


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the entry lives in the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(path: str | Path, force: bool) -> None:
    """Nothing costly is replaced without --force."""
    if Path(path).exists() and not force:
        raise PeftsError(f"{path} already exists; pass --force to replace it")
