"""A `pefts` process's start and exit (pefts.runtime.startup): the network stack imported
with the collector paused and frozen, only in a process of its own; in-process callers'
collectors left alone; no peft import where no LoRA layer can be."""

from __future__ import annotations

import gc
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


STACK = """
import gc
from pefts.runtime import startup
{own}
startup.import_network_stack()
import sys
print(gc.get_freeze_count(), gc.isenabled(), all(m in sys.modules for m in startup.NETWORK_STACK))
"""


def test_a_pefts_process_imports_the_stack_frozen_and_keeps_its_collector():
    frozen, enabled, loaded = python(STACK.format(own="startup.own_process()")).split()
    # the stack's objects are out of the collector's walks, and collection goes on
    assert int(frozen) > 100_000 and enabled == "True" and loaded == "True"


def test_pefts_called_in_process_leaves_the_callers_collector_alone():
    frozen, enabled, loaded = python(STACK.format(own="")).split()
    assert (frozen, enabled, loaded) == ("0", "True", "False")


def test_the_in_process_entry_point_freezes_nothing(run_cli, digits, tiny_base, none_model,
                                                    tmp_path):
    before = gc.get_freeze_count()
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                           "--sigma", "0.5",
                           "--n0", "4", "--n", "16", "--max", "1", "--out", tmp_path / "o.tsv",
                           "--device", "cpu")
    assert code == 0, err
    assert gc.get_freeze_count() == before


def test_the_executable_freezes_its_heap_when_its_command_is_over():
    code = ("import gc, sys\nfrom pefts.cli import run\nsys.argv = ['pefts', '--version']\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\nprint(gc.get_freeze_count())")
    assert int(python(code).splitlines()[-1]) > 0
    # called by a program of the user's, the command's end freezes nothing
    assert python("import gc\nfrom pefts.runtime import startup\nstartup.command_over()\n"
                  "print(gc.get_freeze_count())") == "0"


def test_the_executable_is_the_own_process_entry_point():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.name == "pefts"]
    assert script.value == "pefts.cli:run"
    assert (ROOT / "pefts" / "__main__.py").read_text().strip().endswith("run()")


def test_merging_lora_into_a_network_without_it_imports_no_peft():
    out = python("import sys, torch\n"
                 "from pefts.certification.fastpath import merge_lora\n"
                 "print(merge_lora(torch.nn.Sequential(torch.nn.Linear(3, 2))), 'peft' in sys.modules)")
    assert out == "0 False"
