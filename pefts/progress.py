"""Progress bars that stay readable in a terminal and in Snakemake or SLURM log files,
and never leave the next message glued to the end of a bar."""

from __future__ import annotations

import sys
import weakref
from typing import Any

from tqdm import tqdm

# bars made by progress() still open, and the stream a bar last wrote to if that write
# did not end a line
_open: weakref.WeakSet[tqdm] = weakref.WeakSet()
_mid_line: dict[str, Any] = {"stream": None}


class _Tracked:
    """stderr as a bar sees it: records whether the bar's last write ended a line (a bar
    redraws with carriage returns and leaves the cursor after its text)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> Any:
        if text:
            _mid_line["stream"] = None if text.endswith("\n") else self._stream
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    # a log file gets a line every 30 s rather than thousands of carriage returns
    kwargs.setdefault("mininterval", 0.2 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", _Tracked(sys.stderr))
    bar = tqdm(iterable, **kwargs)
    _open.add(bar)
    return bar


def end_line() -> None:
    """Before a message on stderr: close the bars still drawing (an error left them
    open; they show where the run stopped) and end the line a bar left unfinished."""
    for bar in list(_open):
        bar.leave = True  # keep the last state on screen: it says how far the run got
        bar.close()
    _open.clear()
    if _mid_line["stream"] is sys.stderr:  # (tests swap stderr between commands)
        sys.stderr.write("\n")
        sys.stderr.flush()
    _mid_line["stream"] = None
