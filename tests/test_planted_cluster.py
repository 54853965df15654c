"""The cluster's arithmetic, each against the realistic bug that would break it unnoticed
(issue 29, item 6): --gpus-per-task shares sliced by the task index instead of index x
per-task, a GPU rule of the workflow missing from the plan's GPU jobs, and one sigma's
replay priced for every sigma. In-process: no SLURM, no snakemake."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pefts.certification.adaptive import AdaptivePlan
from pefts.runtime.devices import bind_gpu, task_gpus
from pefts.study.experiments import load_config
from pefts.study.plan import GPU_RULES, PACKED_RULE, adaptive_per_sigma, protocols, replay_samples

ROOT = Path(__file__).resolve().parents[1]

# srun --ntasks=2 --gpus-per-task=2 --gpu-bind=none: both tasks see the step's 4 GPUs
STEP = {"SLURM_JOB_ID": "21", "SLURM_STEP_GPUS": "0,1,2,3", "SLURM_JOB_GPUS": "0,1,2,3",
        "SLURM_GPUS_PER_TASK": "2", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_gpus_per_task_of_two_gives_each_task_its_own_pair(tmp_path):
    """With one GPU per task, index and index x per-task agree: two per task tell them apart."""
    shares = [task_gpus(4, {**STEP, "SLURM_LOCALID": str(task)}) for task in range(2)]
    assert [[(g.index, g.name) for g in share] for share in shares] == \
        [[(0, "0"), (1, "1")], [(2, "2"), (3, "3")]]
    # physical ids renumbered by confinement name the same pairs
    confined = {**STEP, "SLURM_STEP_GPUS": "4,5,6,7", "SLURM_JOB_GPUS": "4,5,6,7"}
    assert [g.name for g in task_gpus(4, {**confined, "SLURM_LOCALID": "1"})] == ["6", "7"]
    # the job then leases among its own pair only: task 1's first free GPU is torch's 2
    gpu = bind_gpu(4, tmp_path, env={**STEP, "SLURM_LOCALID": "1"}, gpus=1)
    assert (gpu.index, gpu.name) == (2, "2")


def workflow_gpu_rules() -> set[str]:
    """The rules of workflow/rules/*.smk that ask Snakemake for a GPU (``gpu=`` in their
    resources), those made by ``use rule A as B`` from one of them included unless they
    set resources of their own without a GPU."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    blocks = re.split(r"\n(?=rule \w+:|use rule |for )", text)
    gpu, derived = set(), []
    for block in blocks:
        asks = re.search(r"^\s+gpu\s*=", block, re.M) is not None
        if found := re.match(r"rule (\w+):", block):
            if asks:
                gpu.add(found[1])
        elif block.startswith("for "):
            # rules made in a loop, one per pack: named by a function, counted by family
            if asks and re.search(r"^\s+rule:\n\s+name:\n\s+packed_rule\(", block, re.M):
                gpu.add(PACKED_RULE)
        elif found := re.match(r"use rule (\w+) as (\w+)", block):
            derived.append((found[1], found[2], asks, re.search(r"^\s+resources:", block, re.M)))
    for _ in derived:  # a rule derived from a derived one: repeat until nothing changes
        for source, name, asks, own_resources in derived:
            if asks or (source in gpu and not own_resources):
                gpu.add(name)
    return gpu


def test_the_plan_counts_every_rule_that_asks_for_a_gpu():
    """Every GPU job pays the start-up; a GPU rule left out of GPU_RULES goes unpriced
    (certify_shard: most of the study's GPU jobs)."""
    found = workflow_gpu_rules()
    assert {"train_base", "finetune", "certify_shard", PACKED_RULE, "certify_sound_shard"} <= found
    assert set(GPU_RULES) == found


def write_replay(path: Path, p: np.ndarray, n: int = 10_000) -> Path:
    pd.DataFrame({"idx": range(len(p)), "nA": np.round(p * n).astype(int), "n": n}).to_csv(
        path, sep="\t", index=False)
    return path


def test_each_sigma_is_priced_by_its_own_replay(tmp_path):
    """Two replays, clear abstentions at sigma 0.25 and images near a grid threshold at
    0.5 (several times the samples): each sigma's samples
    per image are its own replay's, and the adaptive protocol prices each sigma so."""
    config = load_config([])
    cert = config["certify"]
    rates = {0.25: np.round(np.linspace(0.1, 0.3, 30), 4),
             0.5: np.round(np.linspace(0.985, 0.995, 30), 4)}
    replays = [(write_replay(tmp_path / f"sigma_{s}.tsv", p), s) for s, p in rates.items()]
    estimated = adaptive_per_sigma(config, replays, None, None, seed=3)
    own = {}
    for sigma, p in rates.items():
        plan = AdaptivePlan(sigma, cert["alpha"], cert["n"], tuple(cert["grid"]), cert.get("rtol"))
        own[sigma] = float(replay_samples(p, plan, seed=3).mean())
        assert estimated[sigma][0] == pytest.approx(own[sigma], rel=1e-12), sigma
        assert f"sigma_{sigma}.tsv" in estimated[sigma][1]
    assert own[0.5] > 3 * own[0.25]  # the two replays cost apart: a mix-up shows
    adaptive = protocols(config, estimated, None, None)[-1]
    for sigma in rates:
        assert adaptive.passes_per_image[sigma] == pytest.approx(cert["n0"] + own[sigma])
