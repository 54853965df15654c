"""docs/cluster.md's commands run as written: the plan, the fetch (with a stand-in hub,
so nothing is downloaded) and the SLURM run (as a dry run: tests/test_slurm.py submits)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pefts.study import weights

ROOT = Path(__file__).resolve().parents[1]


def cluster_commands() -> list[list[str]]:
    """The indented command lines at the top of docs/cluster.md, comments dropped."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = text.split("\n\n", 2)[1]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("    ")]


@pytest.mark.slow  # two snakemake dry runs of the preset
def test_cluster_doc_commands_run_as_written(run_cli, tmp_path, monkeypatch):
    commands = cluster_commands()
    assert [c[:2] for c in commands] == [["pefts", "plan"], ["pefts", "fetch-weights"],
                                         ["snakemake", "--profile"]]
    # the project as a user has it, with results written here
    for name in ("Snakefile", "config.yaml", "configs", "workflow", "slurm"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    fetched = []

    def hub(name: str) -> dict[str, torch.Tensor]:
        fetched.append(name)
        return {"weight": torch.zeros(2)}

    for kind in ("timm", "open_clip", "diffusion"):
        monkeypatch.setitem(weights.FETCHERS, kind, hub)
    plan, fetch, run = commands

    code, out, err = run_cli(*plan[1:])
    assert code == 0, err
    assert "(run, sigma) certified (from the DAG)" in out and "GPU-hours" in out

    code, out, err = run_cli(*fetch[1:])
    assert code == 0, err
    assert sorted(fetched) == ["ViT-B-16:openai", "improved-diffusion-cifar10-uncond",
                               "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.mae"]
    assert len(list((tmp_path / "results").rglob("*.safetensors"))) == 4

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", *run, "-n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # the fetched weights are there: the dry run plans no fetch, only the work (the
    # preset's runs certify their sigmas in packed jobs, diffusion's in shards)
    assert "rule certify_packed_lora_0:" in done.stdout and "rule fetch_weights" not in done.stdout
