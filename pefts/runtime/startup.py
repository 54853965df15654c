"""What Python's cyclic garbage collector costs a `pefts` process, and where it is spared.

torch, torchvision and timm allocate a few million Python objects at import, and they
live until the process ends. The collector walks all of them at every full collection
the imports themselves trigger (about 0.7 s of a job's start on one core) and again at
exit (about 1 s more): seconds of every job of a study spent on nothing. So a process of
its own (the `pefts` executable, not pefts called in-process by a user's program or a
test) imports the network stack with the collector paused and then freezes what exists
(``gc.freeze``: never scanned again and never freed before the process ends, which those
modules never are), and freezes everything once its command is over, so the exit skips
that last walk. Cycles made after the freeze are collected as always: a long training
run keeps its collector.
"""

from __future__ import annotations

import gc
import importlib
import sys

# what every command that runs a network imports (timm imports torchvision)
NETWORK_STACK = ("torch", "timm")

_own_process = False


def own_process() -> None:
    """Mark this process as one `pefts` command's, which ends with the command."""
    global _own_process
    _own_process = True


def import_network_stack() -> None:
    """Import ``NETWORK_STACK`` with the collector paused, then freeze (own process only)."""
    if not _own_process or all(name in sys.modules for name in NETWORK_STACK):
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in NETWORK_STACK:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def command_over() -> None:
    """The command returned or failed: what is left is freed by the process's end, not
    by a last full collection (own process only)."""
    if _own_process:
        gc.freeze()
