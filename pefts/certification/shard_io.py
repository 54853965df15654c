"""Write a shard of per-image rows resumably into a Cohen-format TSV.

Finished rows go to ``<out>.partial`` (flushed per row) behind a line that records the
run's settings; a rerun with the same settings resumes there. The output appears by
atomic rename only when every image of the shard is done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.progress import progress

SETTINGS_PREFIX = "# pefts "


def file_digest(path: str | Path) -> str:
    """Fingerprint of the weights, so rows from another model are never resumed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def read_partial(path: Path, settings: dict[str, Any], columns: list[str]) -> list[str]:
    """Rows already finished under the same settings; a torn last line is dropped."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if lines[0] != SETTINGS_PREFIX + json.dumps(settings, sort_keys=True):
        raise PeftsError(
            f"{path} holds rows of a run with other settings or another model; "
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
    # rewrite the partial without any torn tail before appending to it
    with open(partial, "w") as handle:
        handle.write(SETTINGS_PREFIX + json.dumps(settings, sort_keys=True) + "\n")
        handle.write("\t".join(columns) + "\n")
        handle.writelines(row + "\n" for row in done_rows)
    todo = [i for i in indices if i not in done]
    with open(partial, "a") as handle, progress(desc=desc, unit="img", initial=len(indices) - len(todo),
                                                total=len(indices)) as bar:
        for row in rows(todo):
            handle.write("\t".join(str(v) for v in row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update()
    by_idx = {int(r.split("\t", 1)[0]): r for r in read_partial(partial, settings, columns)}
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write("\t".join(columns) + "\n")
        handle.writelines(by_idx[i] + "\n" for i in indices)
    os.replace(tmp, out)
    partial.unlink()
    return out
