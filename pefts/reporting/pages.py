"""Pages of docs/ written by the command that measures or computes what they show, so a
reader can regenerate them instead of trusting a paste."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path


def this_command() -> str:
    """The command line this process was started with, as a user would type it."""
    return shlex.join(["pefts", *sys.argv[1:]])


def measurement_page(printed: str, command: str) -> str:
    """What a measuring command printed, headed by that command, the date and torch's
    version (the figures mean little without them)."""
    import torch

    return (f"Written by `{command}` on {datetime.date.today()} (torch {torch.__version__});"
            " rerun it to regenerate this page.\n\n" + printed.rstrip("\n") + "\n")


def assembled_page(head: str, sections: list[tuple[str, str | Path]], by: str) -> str:
    """Prose written by hand, then tables each written by a command, under their headings."""
    parts = [head.rstrip("\n"), "",
             f"The tables below were written by `{by}` on {datetime.date.today()} from the files"
             " named under each heading; rerun it to regenerate them.", ""]
    for heading, path in sections:
        parts += [f"## {heading}", "", f"`{path}`:", "", Path(path).read_text().rstrip("\n"), ""]
    return "\n".join(parts)
