"""Shared fixtures: prepared digits data and a tiny, quickly trained base classifier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pefts.data import prepare
from pefts.finetuning.runs import finetune, train_base

# pytest-xdist (pyproject's `-n auto`) runs one worker per core: each worker and the
# processes it starts get their share of the cores, not all of them (torch's default),
# which would oversubscribe the machine and spin
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first, the real-size preset runs (the longest, about ten minutes each on
    two cores) before them: pytest-xdist hands the collected order out to its workers, so
    the long runs start while every worker is free instead of ending the run on one."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if "realsize" in item.path.name else 1

    items.sort(key=rank)


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
