# Config validation and the study's runs, paths and grids (pefts.study.experiments);
# every rule calls the pefts CLI.
import functools
import json
import os
import sys

from pefts.study.config import validated
from pefts.errors import PeftsError
from pefts.study.experiments import Study, external_weights
from pefts.reporting.paper_values import compared_methods

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
try:
    # config.yaml was not loaded under --configfile (see the Snakefile): check it is complete
    validated(config, SCHEMA, workflow.overwrite_configfiles)
except PeftsError as err:
    sys.exit(f"error: config is invalid: {str(err).strip().splitlines()[0]}")


STUDY = Study(config)
try:
    # a (run, sigma) with shards on disk keeps its layout (pefts.study.experiments)
    STUDY.check_shard_layouts()
except PeftsError as err:
    sys.exit(f"error: {str(err).strip().splitlines()[0]}")
CERT = config["certify"]
EXP = config["experiments"]
DEVICE = config["device"]
RADII = ",".join(map(str, config["summary"]["radii"]))
path = STUDY.path
ENV = "../../envs/pefts.yaml"  # used only with --sdm conda (opt-in)


def data_options(dataset):
    """The `pefts prepare` options shared by the main data and the two-birds tasks."""
    images = {k: dataset[k] for k in ("resize", "crop", "augment") if dataset.get(k) is not None}
    words = [f"--dataset {dataset['name']}", f"--seed {dataset['seed']}"]
    if dataset["root"]:
        words.append(f"--root {dataset['root']}")
    if dataset["download"]:
        words.append("--download")
    if images:
        words.append(f"--images '{json.dumps(images)}'")
    return " ".join(words)


DATA_OPTIONS = data_options(config["dataset"])


wildcard_constraints:
    # only distinct runs have folders (pefts.study.experiments.Study.folders)
    runname="|".join(sorted(STUDY.distinct_runs(), key=len, reverse=True)),
    shards="[0-9]+",
    sigma="[0-9.e+-]+",
    k="[0-9]+",
    task="source|target",


def run_field(key):
    """A field of the wildcard's run, JSON-encoded when it is a dict, for the CLI."""

    def get(w):
        value = getattr(STUDY.runs[w.runname], key)
        return json.dumps(value) if isinstance(value, dict) else value

    return get


@functools.cache
def shard_count(run, sigma):
    """Shards of the (run, sigma): the configured number, or sized by its planned work."""
    return STUDY.shards(run, sigma)


def packed_rule(run, sigmas):
    """The name of the rule that certifies the run's pack of sigmas (certify.smk)."""
    index = [group for r, group in STUDY.packs() if r == run].index(tuple(sigmas))
    return f"certify_packed_{run}_{index}"


def compile_options(run):
    """certify.compile: --compile for the runs whose method compiles, with the run's cache
    (pefts.study.experiments.Study.compiles)."""
    if not STUDY.compiles(run):
        return ""
    return f"--compile --compile-cache {STUDY.compile_cache(run)}"


def shard_files(pattern, w):
    count = shard_count(w.runname, w.sigma)
    return expand(pattern, runname=w.runname, sigma=w.sigma, k=range(count), shards=count)


def certified(grid):
    return [STUDY.certified(r, s) for r, s in grid]


def models(grid):
    return [STUDY.model(r, s) for r, s in grid]


def run_args(grid):
    return lambda w, input: STUDY.run_args(grid, list(input))


def figure(name, category):
    return report(path("figures", name), category=category)


def table(name, category):
    """A summary table, also shown in `snakemake --report` (TSV rendered as a table)."""
    return report(path("summary", name), category=category)


def main_outputs():
    return [
        path("summary", "certified.tsv"),
        path("summary", "parameters.tsv"),
        *[path("figures", f"certified_sigma{s}.png") for s in STUDY.sigmas],
        path("figures", "accuracy_vs_parameters.png"),
        # pefts.training.curves: each trained run's curve, one figure per method and one of the base
        *[path("figures", f"training_curves_{r}.png")
          for r in [*dict.fromkeys(r for r, _ in STUDY.main_grid()), "base"]],
        # a preset that reproduces the paper also puts its numbers beside the paper's
        *([path("summary", "paper_comparison.tsv")] if config["summary"]["paper"] else []),
        # certify.sound_compare: one run in the sound mode beside the standard mode
        *([path("summary", "sound_comparison.tsv")] if config["certify"]["sound_compare"] else []),
    ]


def twobirds_outputs():
    return [path("summary", "twobirds.tsv"), path("figures", "twobirds.png")]


def ablation_outputs():
    return [
        out
        for kind in ("prompt_length", "lora_rank")
        for out in (path("summary", f"ablation_{kind}.tsv"), path("figures", f"ablation_{kind}.png"))
    ]


def noise_outputs():
    return [path("summary", "noise_learning.tsv"), path("figures", "noise_learning.png")]


# our stopping rule, fixed n and an oracle on Cohen et al.'s committed CERTIFY logs
# (paths from the working directory, which tests move away from the repository)
def in_repo(relative):
    return os.path.relpath(os.path.join(workflow.basedir, relative))


COHEN_LOGS = [in_repo(f"tests/data/cohen/{net}/noise_{s}/test/sigma_{s}")
              for net in ("cifar10/resnet110", "imagenet/resnet50") for s in ("0.25", "0.50", "1.00")]


def replay_grids(wildcards):
    if wildcards.grid == "sigma":
        return "--grid sigma"
    return " ".join(f"--grid {in_repo(f'configs/{data}-vitb16.yaml')}"
                    for data in ["cifar10"] * 3 + ["imagenet"] * 3)
