"""Durable file writes and fingerprints; free of torch, so a killed-shard test (and the
Snakefile) can import them cheaply."""

from __future__ import annotations

import hashlib
import os
import re
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
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file
        raise naming(err, path) from err
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` durably (``durable_path``): readers never see half a file."""
    with durable_path(path) as tmp, open(tmp, "w") as handle:
        handle.writelines(text.splitlines(keepends=True))  # by line: a kill test hooks each


# how Rust writers (safetensors) report the machine's refusal: "... (os error 28)"
OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def naming(err: BaseException, path: str | Path) -> BaseException:
    """An OSError that names the file it was writing (fsync's and write's do not), so the
    command line can say which path the machine refused. A library's own error that
    carries an OS error (safetensors on a full disk) becomes that OSError."""
    if isinstance(err, OSError):
        return err if err.filename else type(err)(err.errno, err.strerror or str(err), str(path))
    found = OS_ERROR_IN_TEXT.search(str(err)) if isinstance(err, Exception) else None
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    return err


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


def resolved(path: str | Path, option: str) -> Path:
    """The real path of a file that may not exist yet, refused in one line when its
    folders hold a symbolic link loop (pathlib raises a bare RuntimeError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:
        raise PeftsError(f"{option} {path} cannot be reached: a symbolic link loop in its "
                         f"folders ({err})") from None


def refuse_clashes(outputs: dict[str, str | Path | None], inputs: list[str | Path]) -> None:
    """No output may be one of the command's inputs or another of its outputs (or a
    sidecar of one): writing it would destroy what the command is reading or writing.
    ``outputs`` maps each option name to its path (None: not written)."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    where = {str(path): option for option, path in given}

    def same(a: str | Path, b: str | Path) -> bool:
        return resolved(a, where.get(str(a), "path")) == resolved(b, where.get(str(b), "path"))

    for option, path in given:
        for source in inputs:
            # the output, its sidecar over the input, or the output over the input's sidecar
            if any(same(a, b) for a, b in ((path, source), (f"{path}.json", source),
                                           (path, f"{source}.json"))):
                raise PeftsError(f"{option} {path} is one of the command's inputs; "
                                 "write the output elsewhere")
    for i, (option, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if same(path, other_path):
                raise PeftsError(f"{option} and {other} are the same file {path}")
