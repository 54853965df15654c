"""Shards sized by their work (certify.shards: auto), the layout on disk kept, and the
plan's model of what each job costs (rates per path, training, the default hit rates)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pefts.certification.results import check_shard_set
from pefts.certification.shard_io import check_layout, shard_layouts
from pefts.errors import PeftsError
from pefts.study.experiments import Study, load_config
from pefts.study.hit_rate_model import RECORDED, model_hit_rates, record
from pefts.study.plan import (
    PATH_RATES,
    SHARD_MINUTES,
    certify_seconds,
    dag_packs,
    dag_pairs,
    dry_run,
    pack_sigmas,
    path_rate,
    shard_count,
    training_jobs,
)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["configs/cifar10-vitb16.yaml", "configs/imagenet-vitb16.yaml"]


def test_shard_count_takes_the_fewest_shards_that_fit():
    # 100 images of 60 s each, jobs of at most 45 min: 45 images a shard, 3 shards
    assert shard_count(100, 6000, 45) == 3
    assert shard_count(100, 45 * 60, 45) == 1  # exactly one job's work
    assert shard_count(100, 45 * 60 + 1, 45) == 2
    assert shard_count(500, 0, 45) == 1  # no work: still one job
    assert shard_count(5, 10 * 3600, 45) == 5  # an image is not split: one a shard at most
    for images, seconds in [(7, 1e4), (500, 3e5), (100, 5401), (3, 2e3)]:
        n = shard_count(images, seconds, 45)
        largest = -(-images // n) * seconds / images
        assert largest <= 45 * 60 or n == images
        if n > 1:  # and no fewer shards would do
            assert -(-images // (n - 1)) * seconds / images > 45 * 60
    for bad in [(0, 1, 45), (10, -1, 45), (10, float("nan"), 45), (10, 1, 0)]:
        with pytest.raises(ValueError):
            shard_count(*bad)


def test_sigmas_pack_by_their_planned_minutes():
    # the fewest jobs of at most 45 minutes, first fit by decreasing minutes
    assert pack_sigmas({"0.25": 10, "0.5": 10, "0.75": 10, "1": 10}, 45) == [
        ("0.25", "0.5", "0.75", "1")]
    assert pack_sigmas({"0.25": 30, "0.5": 20, "1": 14}, 45) == [("0.25", "1"), ("0.5",)]
    # sigmas that do not fit together stay separate, one job each
    assert pack_sigmas({"0.25": 30, "0.5": 20, "1": 40}, 45) == [("0.25",), ("0.5",), ("1",)]
    assert pack_sigmas({"0.5": 45, "1": 0.01}, 45) == [("0.5",), ("1",)]
    assert pack_sigmas({"0.5": 22.5, "1": 22.5}, 45) == [("0.5", "1")]  # exactly one job's
    assert pack_sigmas({"1": 60}, 45) == [("1",)]  # more than a job alone: still one
    assert pack_sigmas({}, 45) == []
    for bad in [({"1": -1}, 45), ({"1": float("nan")}, 45), ({"1": 1}, 0)]:
        with pytest.raises(ValueError):
            pack_sigmas(*bad)


def test_only_sigmas_that_fit_one_job_together_are_packed():
    config = load_config(["configs/cifar10-vitb16.yaml"])
    study = Study(config)
    # 500 images a sigma, 6 to 11 minutes each: a run's four sigmas in one job
    assert study.pack_of("lora", "0.5") == ("0.25", "0.5", "0.75", "1")
    assert study.pack_of("lora_rank2", "0.5") == ("0.25", "0.5", "0.75", "1")  # the same run
    assert study.pack_of("lora_rank4", "0.5") is None  # an ablation run has one sigma
    # every image to n_max: each sigma alone is many shards, nothing packs
    config["certify"]["samples_per_image"] = 100_000
    assert Study(config).packs() == []
    # a shorter job: the four sigmas of the black box (about 10 minutes each) no longer fit
    # one job, and split into jobs that do
    config = load_config(["configs/cifar10-vitb16.yaml"])
    config["certify"]["shard_minutes"] = 25
    study = Study(config)
    groups = [g for r, g in study.packs() if r == "blackbox"]
    assert len(groups) == 2 and sorted(s for g in groups for s in g) == ["0.25", "0.5", "0.75", "1"]
    # a number of shards is the user's layout: nothing packs
    config["certify"]["shards"] = 1
    config["experiments"]["twobirds"]["certify"]["shards"] = 1
    assert Study(config).packs() == []
    # each grid packs its own sigmas: the default's main comparison (0.25, 0.5) apart
    # from noise learning's other two, so the main target certifies only its own
    config = load_config([])
    config["certify"]["shards"] = "auto"
    study = Study(config)
    assert study.pack_of("lora", "0.5") == ("0.25", "0.5")
    assert study.pack_of("lora", "1") == ("0.75", "1")


@pytest.fixture(scope="module", params=PRESETS)
def preset_dag(request):
    """A preset, the (run, sigma) -> shards of its `experiments` dry run (every run) and
    the packed jobs it lists."""
    config = load_config([request.param])
    output = dry_run((request.param,), "experiments")
    return config, dag_pairs(output), dag_packs(output)


def test_every_certify_job_of_a_preset_plans_within_the_target(preset_dag):
    config, pairs, packs = preset_dag
    study = Study(config)
    target = config["certify"]["shard_minutes"]
    assert config["certify"]["shards"] == "auto"
    longest = 0.0
    minutes = {}
    for (run, sigma), shards in pairs.items():
        spec, images = study.runs[run], study.certified_images(run)
        seconds = certify_seconds(config, spec.method, spec.hparams, float(sigma), images)
        # the DAG has as many certify_shard jobs as the plan's function asks for
        assert shards == shard_count(images, seconds, target), (run, sigma)
        minutes[run, sigma] = seconds / 60 * -(-images // shards) / images  # its largest shard
        assert minutes[run, sigma] <= target, (run, sigma, shards, minutes)
        longest = max(longest, minutes[run, sigma])
    # the sizes are the work's: no (run, sigma) runs in more shards than it needs
    assert longest > target / 10
    # packed jobs: the DAG's are the package's, each of one-shard sigmas, within the target
    assert sorted(packs) == study.packs() and packs
    for run, sigmas in packs:
        assert all(pairs[run, s] == 1 for s in sigmas)
        job = sum(minutes[run, s] for s in sigmas)
        assert job <= target, (run, sigmas, job)
        longest = max(longest, job)
    assert longest > target / 2  # jobs of about the target, not many small ones


def test_imagenet_diffusion_is_cut_by_its_work_and_cheap_runs_are_not():
    config = load_config(["configs/imagenet-vitb16.yaml"])
    study = Study(config)
    # guided diffusion's UNet and BEiT-L per sample: hours of work, so many shards
    assert study.shards("diffusion", "1") > 5
    assert study.shards("lora", "1") == 1
    # a number works as before, capped at the images
    config["certify"]["shards"] = 7
    assert Study(config).shards("diffusion", "1") == 7


def shard_files(folder: Path, count: int, done: int = 2) -> None:
    folder.mkdir(parents=True)
    for k in range(done):
        (folder / f"{k}-of-{count}.tsv").write_text("idx\n")
    (folder / f"{done}-of-{count}.tsv.partial").write_text("# pefts {}\n")


def test_a_changed_shard_count_under_shards_on_disk_is_refused(tmp_path):
    config = load_config(["configs/cifar10-vitb16.yaml"])
    config["results"] = str(tmp_path / "r")
    shard_files(tmp_path / "r" / "certify" / "lora" / "sigma0.25" / "shards", 20)
    study = Study(config)
    assert study.shards("lora", "0.25") != 20
    with pytest.raises(PeftsError) as refused:
        study.check_shard_layouts()
    message = str(refused.value)
    assert message == (f"{tmp_path}/r/certify/lora/sigma0.25 has 20 shards on disk, the config now "
                       f"asks for {study.shards('lora', '0.25')}: set certify.shards: 20 or remove "
                       "that folder")
    config["certify"]["shards"] = 20  # the fix it names
    Study(config).check_shard_layouts()


def test_snakemake_refuses_the_changed_count_in_one_line(tmp_path):
    results = tmp_path / "r"
    shard_files(results / "certify" / "lora" / "sigma0.5" / "shards", 20)
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1",
               "--configfile", str(ROOT / "configs/cifar10-vitb16.yaml"),
               "--config", f"results={results}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines()
             if line.strip() and not line.startswith("Using workflow specific profile")]
    assert lines == [f"error: {results}/certify/lora/sigma0.5 has 20 shards on disk, the config "
                     "now asks for 1: set certify.shards: 20 or remove that folder"], done.stderr


def test_certify_and_merge_refuse_to_mix_layouts(tmp_path):
    folder = tmp_path / "shards"
    shard_files(folder, 20)
    assert shard_layouts(folder) == {20}
    check_layout(folder / "3-of-20.tsv", 20)  # the same layout resumes
    with pytest.raises(PeftsError, match="has shards of a 20-shard layout, this is one of 7: "
                                         "certify with --shard K/20, or remove that folder"):
        check_layout(folder / "3-of-7.tsv", 7)
    check_layout(tmp_path / "free.tsv", 7)  # an output outside a layout folder
    paths = ["a", "b", "c"]
    check_shard_set(["0/3", "2/3", "1/3"], paths)
    with pytest.raises(PeftsError, match="mix layouts of 3 and 7 shards"):
        check_shard_set(["0/3", "1/7", "2/3"], paths)
    with pytest.raises(PeftsError, match="shard 1/3 is missing"):
        check_shard_set(["0/3", "2/3"], paths[:2])
    with pytest.raises(PeftsError, match="given twice"):
        check_shard_set(["0/2", "1/2", "1/2"], paths)


def test_each_path_has_its_measured_rate():
    assert path_rate("fp32", False, False, "lora") == PATH_RATES["fp32"] == (
        1187.0, PATH_RATES["fp32"][1])
    assert path_rate("bf16", False, False, "lora")[0] == 7358  # unmerged
    assert path_rate("bf16", True, False, "lora")[0] == 9292  # merged: a plain ViT-B/16
    assert path_rate("bf16", True, False, "adapter")[0] == 7358  # adapters do not merge
    assert path_rate("bf16", True, True, "lora")[0] == 10695  # merged and compiled
    assert path_rate("bf16", True, True, "prompt")[0] == 10695  # a plain ViT, compiled
    # compiled but not measured so: side branches keep their eager rate
    assert path_rate("bf16", True, True, "adapter")[0] == 7358
    assert path_rate("bf16", False, True, "lora")[0] == 7358
    # not compiled by the certifier (pefts.study.experiments.UNCOMPILED_METHODS)
    assert path_rate("bf16", True, True, "blackbox")[0] == path_rate("bf16", True, True,
                                                                   "diffusion")[0] == 9292
    assert all("measured" in source for _, source in PATH_RATES.values())


def test_training_is_priced_by_what_backpropagates():
    config = load_config(["configs/cifar10-vitb16.yaml"])
    output = dry_run(("configs/cifar10-vitb16.yaml",), "all")
    jobs = {(j.run, j.sigma): j for j in training_jobs(config, output)}
    lora, full = jobs["lora", "0.5"], jobs["full", "0.5"]
    # every weight trains: forward, input and weight gradients; PEFT: no weight gradients
    assert full.gflop_per_image / lora.gflop_per_image == pytest.approx(3 / 2, rel=0.01)
    assert (lora.epochs, lora.images) == (10, 45_000)  # 10% of 50,000 held out
    assert jobs["none", "0.5"].hours(35.155) == 0  # a GPU job that trains nothing
    denoiser = jobs["denoiser", "0.5"]
    assert denoiser.epochs == 90 + 20  # MSE, then stability through the classifier
    assert lora.hours(35.155) == pytest.approx(
        10 * 45_000 * lora.gflop_per_image / (7358 * 35.155) / 3600)
    assert len([j for j in jobs.values() if j.job == "finetune"]) == 36


def test_default_hit_rates_are_cohens_logs():
    """The recorded quantiles are what the committed logs give, and replay close to them."""
    assert record(ROOT / "tests/data/cohen") == RECORDED
    p, how = model_hit_rates("imagenet", 0.5)
    assert len(p) == 100 and "imagenet/resnet50 log at sigma 0.5" in how
    # abstentions at p = 1/2, the share Cohen's log has (16% at sigma 0.5)
    assert np.mean(p == 0.5) == pytest.approx(0.16, abs=0.02)
    scaled, how = model_hit_rates("digits", 0.75)
    assert "cifar10/resnet110 log at sigma 1 scaled to 0.75" in how


def test_stated_samples_per_image_size_the_shards():
    config = load_config(["configs/imagenet-vitb16.yaml"])
    spec = Study(config).runs["diffusion"]
    modelled = certify_seconds(config, "diffusion", spec.hparams, 1.0, 500)
    config["certify"]["samples_per_image"] = 100_000  # every image to n_max
    stated = certify_seconds(config, "diffusion", spec.hparams, 1.0, 500)
    assert stated > 10 * modelled
    assert SHARD_MINUTES == 45


def test_the_readme_cost_table_is_the_plans():
    """Every figure of the README's cost table is in docs/cost.md, which the plan writes."""
    readme = (ROOT / "README.md").read_text()
    cost = (ROOT / "docs/cost.md").read_text()
    sections = {"CIFAR-10": cost.split("## `configs/cifar10-vitb16.yaml`")[1].split("## `")[0],
                "ImageNet": cost.split("## `configs/imagenet-vitb16.yaml`")[1]}
    rows = [line for line in readme.splitlines() if line.startswith(("| CIFAR-10,", "| ImageNet,"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        section = sections[cells[0].split(",")[0]]
        headline = section.split("\n\n")[1]
        training, certify, startup, whole, cohen = (c.replace(",", "") for c in cells[1:])
        assert headline.startswith(f"Whole study: {whole} H200-hours ({training} training, "
                                   f"{certify} certification, {startup} start-up"), (row, headline)
        cohen_row = next(line for line in section.splitlines()
                         if line.startswith("| fixed n = 100,000 (Cohen, fp32)"))
        assert cohen_row.split("|")[6].strip() == cohen


def test_packed_jobs_take_the_resources_set_for_certify_shard(tmp_path):
    """A profile names certify_shard's partition once; every pack's generated rule takes
    it, unless the profile names that rule itself (docs/cluster.md)."""
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all",
         "--configfile", str(ROOT / "configs" / "cifar10-vitb16.yaml"),
         "--config", f"results={tmp_path}/r", "--set-resources",
         "certify_shard:slurm_partition='gpu'", "certify_packed_prompt_0:slurm_partition='mine'"],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    partitions = {block.split(":", 1)[0][len("rule "):]: re.search(r"slurm_partition=(\w+)", block)
                  for block in re.split(r"\n(?=rule \w+:)", done.stdout)
                  if block.startswith("rule certify_packed_")}
    assert len(partitions) == 9, partitions  # one pack per method of the main comparison
    assert {rule: found and found[1] for rule, found in partitions.items()} == {
        rule: "mine" if rule == "certify_packed_prompt_0" else "gpu" for rule in partitions}
