"""Progress bars that stay readable in a terminal and in Snakemake or SLURM log files."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    # a log file gets a line every 30 s rather than thousands of carriage returns
    kwargs.setdefault("mininterval", 0.2 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
