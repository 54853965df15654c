"""Write a shard of per-image rows resumably into a Cohen-format TSV.

Finished rows go to ``<out>.partial`` (fsynced per row) behind a line that records the
run's settings; a rerun with the same settings resumes there. The partial is only ever
replaced whole (temp file, fsync, rename, fsync of the folder), so a kill at any moment
leaves either the old or the new partial, never a truncated one. The output appears by
atomic rename only when every image of the shard is done, with its settings beside it
in ``<out>.json`` (``pefts.runtime.provenance``). One process writes a shard at a time: it holds
an exclusive lock on ``<out>.partial.lock`` (the kernel frees it if the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.progress import progress
from pefts.runtime.files import atomic_write_text, naming
from pefts.runtime.provenance import write_sidecar

SETTINGS_PREFIX = "# pefts "
# a shard's files in a layout folder: K-of-N.tsv, its .partial (rows so far) and .json
SHARD_FILE = re.compile(r"^(\d+)-of-(\d+)\.tsv(\.partial|\.json)?$")


def shard_layouts(folder: str | Path) -> set[int]:
    """The shard counts N of the K-of-N shard files (finished or partial) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {int(m[2]) for m in map(SHARD_FILE.match, (f.name for f in folder.iterdir())) if m}


def check_layout(out: str | Path, shards: int) -> None:
    """Refuse to write shard ``out`` of ``shards`` beside shards of another count: the
    layout on disk is part of the run, and two layouts would certify images twice."""
    out = Path(out)
    if not SHARD_FILE.match(out.name):
        return  # not a layout folder's shard (a single output named freely)
    other = shard_layouts(out.parent) - {shards}
    if other:
        have = max(other)
        raise PeftsError(f"{out.parent} has shards of a {have}-shard layout, this is one of "
                         f"{shards}: certify with --shard K/{have}, or remove that folder")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def replace_durably(path: Path, lines: Iterable[str]) -> None:
    """Replace ``path`` by ``lines`` through the one durable writer (``pefts.runtime.files``)."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def settings_line(settings: dict[str, Any]) -> str:
    return SETTINGS_PREFIX + json.dumps(settings, sort_keys=True)


def read_partial(path: Path, settings: dict[str, Any], columns: list[str],
                 force: bool = False) -> list[str]:
    """Rows already finished under the same settings; a torn last line is dropped, any
    other bad row refused naming its line. A partial of other settings is refused, or
    with ``force`` discarded."""
    from pefts.certification.results import check_rows

    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PeftsError(f"{path} is corrupt (not UTF-8 text); move it away to start afresh"
                         ) from None
    lines = text.split("\n")
    if lines[0] != settings_line(settings):
        if force:
            path.unlink()
            return []
        raise PeftsError(
            f"{path} holds rows of a run with other settings, data or model; "
            "pass --force to discard it, or move it away to keep it"
        )
    if len(lines) < 3:  # stopped before the header was complete
        return []
    complete = lines[2:-1]  # after settings and header; the last piece lacks its newline
    if lines[1] != "\t".join(columns):
        raise PeftsError(f"{path} has an unexpected header; move it away to start afresh")
    check_rows(path, [lines[1], *complete], first_line=3)
    return complete


RowSource = Callable[[list[int]], Iterable[list[Any]]]


@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the shard's lock, or refuse at once: two writers would interleave rows."""
    lock = out.with_name(out.name + ".partial.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PeftsError(f"{out} is being written by another process (it holds {lock}); "
                             "wait for it to finish or stop it") from None
        yield  # the lock file stays: removing it would let a third writer lock a new one


def run_shard(
    out: str | Path,
    indices: list[int],
    settings: dict[str, Any],
    columns: list[str],
    rows: RowSource,
    desc: str = "certify",
    force: bool = False,
    keep_partial: bool = False,
) -> Path:
    """Write ``rows(todo)`` for the indices not yet done and publish the TSV.

    ``rows`` gets the indices still to do and yields one finished row per index, in any
    order (a pool of images may finish out of order); each is on disk before the next.
    ``force`` discards a partial of other settings instead of refusing it.
    ``keep_partial`` leaves the finished partial beside the output (``finish_partials``
    removes it): a job of several shards whose failure makes Snakemake delete every
    output it declared then resumes the finished ones from their rows.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):
        try:
            return _write_shard(out, indices, settings, columns, rows, desc, force, keep_partial)
        except OSError as err:  # e.g. a full disk while appending a row: name the shard
            raise naming(err, partial_path(out)) from err


def finish_partials(outs: Iterable[str | Path]) -> None:
    """Remove the partials ``run_shard(keep_partial=True)`` left beside finished outputs,
    once all of them are finished (each under its writer's lock)."""
    for out in map(Path, outs):
        if not out.exists():
            raise PeftsError(f"{out} is not finished: its partial stays")
        with writer_lock(out):
            partial_path(out).unlink(missing_ok=True)


def _write_shard(out: Path, indices: list[int], settings: dict[str, Any], columns: list[str],
                 rows: RowSource, desc: str, force: bool, keep_partial: bool = False) -> Path:
    partial = partial_path(out)
    done_rows = read_partial(partial, settings, columns, force)
    done = {int(row.split("\t", 1)[0]) for row in done_rows}
    # drop a torn tail before appending; never truncate the file that holds finished rows
    replace_durably(partial, [settings_line(settings), "\t".join(columns), *done_rows])
    todo = [i for i in indices if i not in done]
    with open(partial, "a") as handle, progress(desc=desc, unit="img", initial=len(indices) - len(todo),
                                                total=len(indices)) as bar:
        for row in rows(todo):
            handle.write("\t".join(str(v) for v in row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update()
    by_idx = {int(r.split("\t", 1)[0]): r for r in read_partial(partial, settings, columns)}
    text = "\t".join(columns) + "\n" + "".join(by_idx[i] + "\n" for i in indices)
    # the settings go beside the output first: an output without them would be refused
    write_sidecar(out, settings, text)
    replace_durably(out, text.rstrip("\n").split("\n"))
    if not keep_partial:
        partial.unlink()
    return out
