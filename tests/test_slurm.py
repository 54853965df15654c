"""The cluster path: the tiny config through `snakemake --profile slurm` on a real SLURM
(one node with placeholder GPUs, started by slurm/local-cluster.sh), every compute job
through sbatch with one GPU, the cheap rules on the submit host, giving the same
certification as a local `snakemake --cores` run.

Without a SLURM controller the test skips, except under CI=true, where it fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_workflow import TINY, job_counts, snakemake

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
START = "start one as root with `slurm/local-cluster.sh start`"


def slurm_missing() -> str | None:
    """Why no job can be submitted here, or None when an idle node answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return f"SLURM is not installed (no sbatch/sinfo); {START}"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # sinfo retries a missing slurm.conf for a minute
        return f"no SLURM controller answers within 20 s; {START}"
    if info.returncode != 0:
        return f"no SLURM controller answers ({info.stderr.strip()}); {START}"
    if "idle" not in info.stdout.split() and "mix" not in info.stdout.split():
        return f"no SLURM node is idle (states: {info.stdout.split()}); {START}"
    return None


@pytest.fixture
def slurm(no_slurm_controller, monkeypatch) -> None:
    # this test talks to the real controller: the conftest's stand-in scontrol goes
    path = os.environ["PATH"].split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in path if p != str(no_slurm_controller)))
    reason = slurm_missing()
    if reason:
        if IN_CI:
            pytest.fail(f"CI must run the SLURM test: {reason}")
        pytest.skip(reason)


# the cheap rules: run on the submit host (localrules), never through sbatch
LOCAL_RULES = {"all", "merge_shards", "summarize", "plot_certified", "parameters", "training_curves"}


def run_config(tmp_path: Path, name: str, gpus_per_job: int = 0) -> Path:
    # one method: every rule of the main comparison, the fewest job waves on a small node
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**TINY, "methods": ["lora"], "results": str(tmp_path / name),
                                      "gpus_per_job": gpus_per_job}))
    return config


def gpus_requested(job_id: str) -> str | None:
    """The GPUs a job asked sbatch for (--gpus=N is TresPerJob=gres/gpu:N)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    found = re.search(r"TresPerJob=\S*gpu:(\d+)", out)
    return found[1] if found else None


def certified(results: Path) -> dict[str, pd.DataFrame]:
    """The merged certification tables, without the wall-clock column."""
    tables = sorted((results / "certify").glob("*/sigma*/certified.tsv"))
    return {str(t.relative_to(results)): pd.read_csv(t, sep="\t").drop(columns="time") for t in tables}


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    # no accounting here: squeue still lists finished jobs for MinJobAge
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.mark.slow
def test_profile_runs_every_job_through_sbatch_like_a_local_run(slurm, tmp_path):
    logs = tmp_path / "slurm_logs"
    # one (placeholder) GPU per job: slurm/local-cluster.sh declares GPUs as a gres
    result = snakemake("--profile", "slurm", "--profile", "slurm/local",
                       "--configfile", str(run_config(tmp_path, "cluster", gpus_per_job=1)),
                       "--resources", "gpu=2", "--nolock",
                       "--slurm-logdir", str(logs), "--slurm-keep-successful-logs", timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counts = job_counts(output)
    counts.pop("total")
    # exactly the cheap rules ran in the submitting process, none of them through sbatch
    assert set(re.findall(r"^localrule (\w+):", output, re.M)) == LOCAL_RULES, output[-4000:]
    for rule in LOCAL_RULES:
        counts.pop(rule)

    # the executor names each job's log after its SLURM job id: one per job, per rule
    job_logs = sorted(logs.rglob("*.log"))
    per_rule: dict[str, int] = {}
    for log in job_logs:
        rule = log.relative_to(logs).parts[0].removeprefix("rule_")
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert per_rule == counts
    job_ids = [log.stem for log in job_logs]
    assert set(slurm_states(job_ids).values()) == {"COMPLETED"}, slurm_states(job_ids)
    # the GPU rules' sbatch lines carried --gpus=1 (prepare asks for none)
    gpus = {rule: {gpus_requested(log.stem) for log in job_logs
                   if log.relative_to(logs).parts[0].removeprefix("rule_") == rule}
            for rule in per_rule}
    assert gpus == {rule: {None} if rule == "prepare" else {"1"} for rule in per_rule}, gpus

    local = snakemake("--cores", "2", "--configfile", str(run_config(tmp_path, "local")), "--nolock",
                      timeout=900)
    assert local.returncode == 0, local.stderr[-4000:]
    on_cluster, here = certified(tmp_path / "cluster"), certified(tmp_path / "local")
    assert list(on_cluster) == ["certify/lora/sigma0.5/certified.tsv"]
    assert list(here) == list(on_cluster)
    for name, table in on_cluster.items():
        pd.testing.assert_frame_equal(table, here[name], obj=name)


# 225 epochs of 76 steps (small batches): 17,100 steps, some 120 s of training on this
# idle 2-core machine (about 140 steps a second). An attempt trains until SLURM's
# warning, which came 80 to 88 s into the 2-minute limit here (its nominal 110 s less
# SLURM's timer resolution), some 75 s of steps after the start: two attempts here idle,
# and on a machine up to about 1.5 times faster; a loaded machine needs more, which the
# test's own --retries allows. Each attempt beyond the second costs its training, its
# start and some 40 s before Snakemake's SLURM executor, polling less often the longer a
# job runs, sees it end (300 epochs needed a third attempt for its last 1,600 steps).
LIMITED_TRAIN = {"epochs": 225, "batch_size": 16, "checkpoint_minutes": 0}


@pytest.mark.slow
def test_training_past_its_time_limit_resumes_and_finishes_by_retry(slurm, tmp_path):
    """train_base with a 2-minute limit and a warning (SIGTERM 10 s ahead, which SLURM
    sends up to a minute early) and training that needs more: pefts writes its checkpoint
    and exits, Snakemake's retry resumes from it, and the last attempt completes. The
    resume names the signal that wrote its checkpoint: not an epoch end's (a position
    check cannot tell them apart, since the warning may come during an epoch end's
    validation or save) and not SLURM's kill at the limit."""
    logs = tmp_path / "slurm_logs"
    config = tmp_path / "limited.yaml"
    base = {**TINY["base"], "train": {**TINY["base"]["train"], **LIMITED_TRAIN}}
    config.write_text(yaml.safe_dump({**TINY, "base": base, "results": str(tmp_path / "limited"),
                                      "gpus_per_job": 0, "threads": 1}))
    result = snakemake("--profile", "slurm", "--profile", "slurm/local", "--configfile", str(config),
                       "--nolock", "--slurm-logdir", str(logs), "--slurm-keep-successful-logs",
                       "--set-resources", "train_base:runtime=2",
                       "train_base:slurm_extra='--signal=TERM@10'", "--retries", "30",
                       "--", "train_base", timeout=3600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    attempts = sorted(logs.glob("rule_train_base/*.log"), key=lambda log: int(log.stem))
    states = slurm_states([log.stem for log in attempts])
    assert len(attempts) >= 2, ("training finished within one attempt: this machine is faster "
                                "than LIMITED_TRAIN is sized for; raise its epochs", states)
    assert states[attempts[-1].stem] == "COMPLETED", states
    # stopped by the warning before the limit: the job's own exit, not SLURM's TIMEOUT kill
    assert all(states[log.stem] == "FAILED" for log in attempts[:-1]), states
    results = tmp_path / "limited"
    assert not list(results.rglob("*.ckpt")) and next(results.rglob("base/*.safetensors"))
    # the rule's log is the last attempt's stderr: it resumed from the checkpoint that
    # the previous attempt wrote on SLURM's warning
    log = next(results.rglob("train_base.log")).read_text()
    assert re.search(r"resuming from checkpoint \S+ \(stage 0, step \d+, written when "
                     r"SIGTERM stopped the run\)", log), log[-4000:]
