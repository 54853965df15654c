"""Kill a real `pefts certify` mid-shard: the resume tests of fixed and adaptive runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pefts.certification.shard_io import partial_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args: list[str], out: Path) -> None:
    subprocess.run([*args, "--out", str(out)], check=True, env=ENV, capture_output=True)


def kill_after_rows(args: list[str], out: Path, rows: int = 3, timeout: float = 300) -> None:
    """Start the command, SIGKILL it once its partial holds ``rows`` finished rows."""
    proc = subprocess.Popen([*args, "--out", str(out)], env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        partial = partial_path(out)
        if partial.exists() and partial.read_text().count("\n") >= 2 + rows:  # settings, header
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("certify finished before it could be killed")  # a very fast machine
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_path(out).exists()
