"""Shared fixtures: prepared digits data and a tiny, quickly trained base classifier."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pefts.data import prepare
from pefts.finetuning.runs import finetune, train_base
from pefts.study import plan

# pytest-xdist (pyproject's `-n auto`) runs one worker per core: each worker and the
# processes it starts get their share of the cores, not all of them (torch's default),
# which would oversubscribe the machine and spin
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# seconds each long test took in the last whole-tier run (`python -m tests.tier_times
# --durations-out tests/durations.json` writes it); a scheduling hint, never an assertion
DURATIONS = Path(__file__).with_name("durations.json")
GUESS_S = {"slow": 10.0, "quick": 0.3}  # a test the file does not list


def estimates(items: list[pytest.Item]) -> list[float]:
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    return [known.get(item.nodeid, GUESS_S["slow" if item.get_closest_marker("slow") else "quick"])
            for item in items]


def balanced(items: list[pytest.Item], seconds: list[float], workers: int) -> list[pytest.Item]:
    """The order that gives each pytest-xdist worker an even share of the long tests.

    xdist's scheduler cuts the collected order into one run of consecutive tests per
    worker (worker i gets len // (workers - i) of what is left) and later moves tests from
    the end of a queue to an idle worker. So the long tests are dealt out longest first
    to the chunk with the least work (each starts its chunk, while every worker is
    busy), and the short ones fill the chunks in their collected order (a module's
    tests stay together, and they are what the stealing moves)."""
    sizes, left = [], len(items)
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    chunks: list[list[int]] = [[] for _ in sizes]
    load = [0.0] * workers
    long = sorted((i for i, s in enumerate(seconds) if s >= 1.0), key=lambda i: -seconds[i])
    for i in long:
        room = [w for w in range(workers) if len(chunks[w]) < sizes[w]]
        w = min(room, key=lambda w: load[w])
        chunks[w].append(i)
        load[w] += seconds[i]
    taken = set(long)
    rest = iter(i for i in range(len(items)) if i not in taken)
    for w in range(workers):
        chunks[w] += [next(rest) for _ in range(sizes[w] - len(chunks[w]))]
    return [items[i] for chunk in chunks for i in chunk]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests first, dealt out evenly across pytest-xdist's workers (see balanced):
    left in the collected order, the two real-size preset runs landed in one worker's
    queue and ran one after the other while the other worker ran out of work."""
    items[:] = balanced(items, estimates(items), max(1, _WORKERS))


def _dry_run_once(real: Callable[[tuple[str, ...], str], str]) -> Callable[[tuple[str, ...], str], str]:
    """`snakemake -n` of a preset takes seconds and a dozen tests ask for the same one
    (directly, or through `pefts plan` run in-process); the workflow does not change
    within a run, so each (target, config files and their contents) runs once per
    worker. A dry run that fails is not kept: each test sees its own refusal."""
    done: dict[tuple, str] = {}

    def dry_run(configfiles: tuple[str, ...], target: str) -> str:
        key = (target, *((str(Path(f).resolve()), Path(f).read_bytes() if Path(f).is_file() else None)
                         for f in configfiles))
        if key not in done:
            done[key] = real(configfiles, target)
        return done[key]

    return dry_run


# before any test module imports the name
plan.dry_run = _dry_run_once(plan.dry_run)


TINY_SPEC = {
    "arch": "vit_tiny_patch16_224",
    "input_size": 8,
    "model_kwargs": {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


@pytest.fixture(scope="session", autouse=True)
def no_slurm_controller(tmp_path_factory):
    """Every snakemake process imports the SLURM executor plugin, which asks `scontrol show
    config` for its help text; where SLURM's client is installed but no controller runs
    (a laptop with the client, or this box after CI stopped its one-node cluster) each ask
    waits for a timeout, 9 s per snakemake start. Only the SLURM test talks to a
    controller (it takes this stand-in off PATH); every other test gets an answer at once."""
    shim = tmp_path_factory.mktemp("no-slurm-controller")
    scontrol = shim / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'scontrol: no SLURM controller in this test' >&2\nexit 1\n")
    scontrol.chmod(0o755)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{shim}{os.pathsep}{path}"
    yield shim
    os.environ["PATH"] = path


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare("digits", out, seed=0)
    return out / "manifest.json"


@pytest.fixture(scope="session")
def tiny_base(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    train_base(digits, out, TINY_SPEC, {"epochs": 2, "batch_size": 128, "lr": 3e-3},
               pretrained=False, pretrained_file=None, device="cpu")
    return out


@pytest.fixture(scope="session")
def none_model(digits, tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("none") / "model.safetensors"
    finetune(digits, tiny_base, out, "none", 0.5, {}, {}, device="cpu")
    return out


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `pefts ARGS...` in-process through the real entry point; returns (code, out, err)."""
    from pefts.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pefts", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
