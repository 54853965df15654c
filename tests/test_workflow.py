"""The Snakemake pipeline: DAGs of the default and the paper presets, lint, config errors,
and one small end-to-end run through every rule of the main comparison."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pefts.study.experiments import Study, load_config, sigma_label
from pefts.study.plan import job_stats

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # the venv's bin first, so rules find the `pefts` console script of this interpreter
    # HF_HUB_OFFLINE: a test never reaches for the network, even by mistake
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def in_workdir(tmp_path: Path) -> list[str]:
    """Snakemake options that write docs/ under tmp_path, never over the committed pages."""
    (tmp_path / "docs").mkdir(parents=True)
    for head in (ROOT / "docs").glob("*.head.md"):
        (tmp_path / "docs" / head.name).write_text(head.read_text())
    return ["-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]


job_counts = job_stats  # tests read the table as snakemake prints it, total included


@pytest.mark.parametrize("configfile", [None, "configs/cifar10-vitb16.yaml",
                                        "configs/imagenet-vitb16.yaml"])
def test_dry_run_builds_the_full_dag(configfile, tmp_path):
    config = yaml.safe_load((ROOT / (configfile or "config.yaml")).read_text())
    extra = ["--configfile", configfile] if configfile else []
    # a fresh results folder: the DAG must be complete without any data or weights present
    result = snakemake("-n", "--cores", "1", *extra, "--config", f"results={tmp_path}/r")
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    grid = len(config["methods"]) * len(config["sigmas"])
    assert counts["finetune"] == grid
    # shards per (run, sigma): a number, or the presets' auto sized by each one's work,
    # which packs a run's one-shard sigmas into jobs of certify_packed_* rules
    study = Study(load_config([configfile] if configfile else []))
    grid_pairs = [(m, sigma_label(s)) for m in config["methods"] for s in config["sigmas"]]
    alone = [(m, s) for m, s in grid_pairs if study.pack_of(m, s) is None]
    assert counts.get("certify_shard", 0) == sum(study.shards(m, s) for m, s in alone)
    packs = {(m, study.pack_of(m, s)) for m, s in grid_pairs} - {(m, None) for m, _ in grid_pairs}
    assert sum(n for rule, n in counts.items() if rule.startswith("certify_packed_")) == len(packs)
    assert bool(packs) == (configfile is not None)  # the default's shards: 1 packs nothing
    assert counts["merge_shards"] == grid
    # certify.sound_compare (the default's LoRA; the presets leave it off): one run again
    compared = 1 if config["certify"].get("sound_compare") else 0
    assert counts.get("certify_sound_shard", 0) == compared == (configfile is None)
    assert counts.get("sound_comparison", 0) == compared


def test_dry_run_of_every_experiment():
    result = snakemake("-n", "--cores", "1", "experiments", "--config", "results=/nonexistent/r")
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    for rule in ("train_base_source", "adapt_base", "twobirds_report", "noise_learning_report"):
        assert counts[rule] == 1
    assert counts["ablation_report"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["configs/cifar10-vitb16.yaml", "configs/imagenet-vitb16.yaml"])
def test_preset_without_data_stops_naming_the_config_key(configfile, tmp_path):
    result = snakemake("--cores", "1", "--configfile", configfile, "--nolock",
                       "--config", f"results={tmp_path}/r", f"dataset={{'root': '{tmp_path}/none'}}")
    assert result.returncode != 0
    assert "set dataset.root" in result.stdout + result.stderr
    assert not (tmp_path / "r" / "base").exists()  # nothing ran past the data


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("override, needle", [
    ("sigmas=[-0.5]", "sigmas"),
    ("certify={'n': 0}", "n"),
    ("methods=['magic']", "unknown method 'magic'"),
    ("certify={'sound_compare': 'magic'}", "certify.sound_compare 'magic' is not one of methods"),
])
def test_bad_config_is_one_line(override, needle):
    result = snakemake("-n", "--cores", "1", "--config", override)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr


# a --configfile is the whole run (config.yaml does not load under it): a complete config
TINY = {
    "dataset": {"name": "digits"},
    "base": {"arch": "vit_tiny_patch16_224", "input_size": 8,
             "model_kwargs": {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2,
                              "num_heads": 2},
             "train": {"epochs": 3, "lr": 0.003, "batch_size": 128}},
    "sigmas": [0.5],
    "methods": ["none", "lora"],
    "method_params": {"lora": {"hparams": {"rank": 2, "alpha": 2},
                               "train": {"epochs": 2, "lr": 0.005, "batch_size": 128}}},
    "certify": {"n0": 8, "n": 300, "batch": 64, "skip": 30, "shards": 2, "adaptive": True},
}


@pytest.mark.slow
def test_a_runs_sigmas_are_certified_by_one_packed_job(tmp_path):
    """certify.shards: auto on the tiny config: both sigmas of the run fit one job, which
    one `pefts certify-packed` process certifies; merge reads its shard files as a
    single shard's, and a second call finds nothing to do. The run's other sigmas (noise
    learning's) are packed apart, so the main comparison certifies only its own."""
    config = tmp_path / "tiny.yaml"
    certify = {**TINY["certify"], "shards": "auto"}
    config.write_text(yaml.safe_dump({**TINY, "methods": ["none"], "sigmas": [0.25, 0.5],
                                      "certify": certify, "results": str(tmp_path / "results")}))
    results = tmp_path / "results"
    targets = [str(results / "certify" / "none" / f"sigma{s}" / "certified.tsv")
               for s in ("0.25", "0.5")]
    result = snakemake("--cores", "2", "--configfile", str(config), "--nolock", *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr)["certify_packed_none_0"] == 1
    log = results / "logs" / "certify" / "none_sigma0.25+0.5.log"
    assert {"certify 0/1 sigma 0.25: 100%", "certify 0/1 sigma 0.5: 100%"} <= set(
        re.findall(r"certify 0/1 sigma [\d.]+: 100%", log.read_text()))
    # noise learning's other sigmas of the run are a pack of their own, not run here
    assert not (results / "finetune" / "none" / "sigma0.75").exists()
    for target in targets:
        merged = pd.read_csv(target, sep="\t")
        assert merged["idx"].tolist() == list(range(0, 450, 30))
        shards = Path(target).parent / "shards"
        assert sorted(f.name for f in shards.iterdir()) == ["0-of-1.tsv", "0-of-1.tsv.json",
                                                            "0-of-1.tsv.partial.lock"]
    again = snakemake("-n", "--cores", "2", "--configfile", str(config), "--nolock", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_main_pipeline_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    # LoRA at sigma 0.5 also in sound mode, as the default does at its first sigma
    certify = {**TINY["certify"], "sound_compare": "lora"}
    # the throughput page's benchmark at 2,000 samples a measure, not its 20,000 (minutes)
    config.write_text(yaml.safe_dump({**TINY, "certify": certify, "docs": {"throughput_n": 2000},
                                      "results": str(tmp_path / "results")}))
    result = snakemake("--cores", "2", "--configfile", str(config), "--nolock")
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    summary = pd.read_csv(results / "summary" / "certified.tsv", sep="\t")
    assert list(summary["method"]) == ["none", "lora"]
    assert (results / "summary" / "certified.md").read_text().startswith("| method")
    assert (results / "figures" / "certified_sigma0.5.png").stat().st_size > 10_000
    params = pd.read_csv(results / "summary" / "parameters.tsv", sep="\t")
    assert params.set_index("method").loc["none", "trainable"] == 0
    assert "queries" in params.columns and "| none " in (results / "summary" / "parameters.md").read_text()
    merged = pd.read_csv(results / "certify" / "lora" / "sigma0.5" / "certified.tsv", sep="\t")
    assert list(merged.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert merged["idx"].tolist() == list(range(0, 450, 30))
    assert (merged["n_max"] == 300).all() and (merged["n_used"] <= 300).all()  # adaptive, as the default
    # the sound run has its own rows; both modes side by side, counts within a few images
    sound = pd.read_csv(results / "certify" / "lora" / "sigma0.5" / "sound" / "certified.tsv", sep="\t")
    assert sound["idx"].tolist() == merged["idx"].tolist()
    both = pd.read_csv(results / "summary" / "sound_comparison.tsv", sep="\t").set_index("mode")
    assert list(both.index) == ["standard", "sound"] and set(both["images"]) == {15}
    radii = [f"r={r:g}" for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    standard_counts = [int(((merged["correct"] == 1) & (merged["radius"] >= float(r[2:]))).sum())
                       for r in radii]
    assert both.loc["standard", radii].tolist() == standard_counts
    assert (both.loc["sound", radii] - both.loc["standard", radii]).abs().max() <= 3, both
    assert both.loc["sound", "samples"] == (sound["n0"] + sound["n_used"]).sum()
    assert "Sound mode is Voracek & Hein" in (results / "summary" / "sound_comparison.md").read_text()
    # a second call finds nothing to do
    again = snakemake("-n", "--cores", "2", "--configfile", str(config), "--nolock")
    assert "Nothing to be done" in again.stdout + again.stderr
    # the reports say how the runs were certified
    assert set(summary["mode"]) == {"adaptive"} and set(summary["n"]) == {300}
    caption = (results / "summary" / "certified.md").read_text().strip().splitlines()[-1]
    assert caption.startswith("Certified: adaptive (n_max 300, stops on grid 0,0.25,0.5,0.75,1")
    # a new reporting radius reruns the reports, never certification (its grid is its own)
    overlay = tmp_path / "wider.yaml"  # a second --configfile overlays the first
    overlay.write_text("summary: {radii: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]}\n")
    wider = snakemake("-n", "--cores", "2", "--configfile", str(config), str(overlay), "--nolock")
    assert wider.returncode == 0, wider.stderr[-3000:]
    jobs = set(job_counts(wider.stdout))
    assert "summarize" in jobs and jobs <= {"summarize", "plot_certified", "parameters",
                                            "sound_comparison", "all", "total"}, jobs
    # snakemake --report holds the tables as well as the figures
    html = tmp_path / "report.html"
    report = snakemake("--cores", "1", "--configfile", str(config), "--nolock", "--report", str(html))
    assert report.returncode == 0, report.stderr[-3000:]
    text = html.read_text()
    for name in ("certified.tsv", "certified.md", "parameters.tsv", "certified_sigma0.5.png",
                 "sound_comparison.tsv"):
        assert name in text, name
    # docs/ pages come from their targets, run for real in a work folder (the committed
    # pages stay as they are)
    work = tmp_path / "work"
    docs = snakemake("docs", "docs/measurements/throughput-cpu.md", "--cores", "1",
                     *in_workdir(work), "--configfile", str(config), "--nolock")
    assert docs.returncode == 0, docs.stderr[-3000:]
    page = (work / "docs" / "default-run.md").read_text()
    assert "## Certified accuracy" in page and "| lora " in page and "| none " in page
    assert "## Sound mode beside the standard mode" in page and "| sound " in page
    assert (work / "docs" / "figures" / "certified.png").stat().st_size > 10_000
    throughput = (work / "docs" / "measurements" / "throughput-cpu.md").read_text()
    assert throughput.startswith("Written by `pefts benchmark ") and "certifier/raw forward" in throughput
    assert "--n 2000 " in throughput.splitlines()[0]  # the config's docs.throughput_n
