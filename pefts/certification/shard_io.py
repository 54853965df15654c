"""Write a shard of per-image rows resumably into a Cohen-format TSV.

Finished rows go to ``<out>.partial`` (fsynced per row) behind a line that records the
run's settings; a rerun with the same settings resumes there. The partial is only ever
replaced whole (temp file, fsync, rename, fsync of the folder), so a kill at any moment
leaves either the old or the new partial, never a truncated one. The output appears by
atomic rename only when every image of the shard is done, with its settings beside it
in ``<out>.json`` (``pefts.provenance``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.files import atomic_write_text
from pefts.progress import progress
from pefts.provenance import write_sidecar

SETTINGS_PREFIX = "# pefts "


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def replace_durably(path: Path, lines: Iterable[str]) -> None:
    """Replace ``path`` by ``lines`` through the one durable writer (``pefts.files``)."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def settings_line(settings: dict[str, Any]) -> str:
    return SETTINGS_PREFIX + json.dumps(settings, sort_keys=True)


def read_partial(path: Path, settings: dict[str, Any], columns: list[str]) -> list[str]:
    """Rows already finished under the same settings; a torn last line is dropped."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if lines[0] != settings_line(settings):
        raise PeftsError(
            f"{path} holds rows of a run with other settings, data or model; "
            "move it away (or delete it) to start afresh"
        )
    if len(lines) < 3:  # stopped before the header was complete
        return []
    complete = lines[2:-1]  # after settings and header; the last piece lacks its newline
    if lines[1] != "\t".join(columns):
        raise PeftsError(f"{path} has an unexpected header; move it away to start afresh")
    return [row for row in complete if row.count("\t") == len(columns) - 1]


RowSource = Callable[[list[int]], Iterable[list[Any]]]


def run_shard(
    out: str | Path,
    indices: list[int],
    settings: dict[str, Any],
    columns: list[str],
    rows: RowSource,
    desc: str = "certify",
) -> Path:
    """Write ``rows(todo)`` for the indices not yet done and publish the TSV.

    ``rows`` gets the indices still to do and yields one finished row per index, in any
    order (a pool of images may finish out of order); each is on disk before the next.
    """
    out = Path(out)
    partial = partial_path(out)
    done_rows = read_partial(partial, settings, columns)
    done = {int(row.split("\t", 1)[0]) for row in done_rows}
    out.parent.mkdir(parents=True, exist_ok=True)
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
    partial.unlink()
    return out
