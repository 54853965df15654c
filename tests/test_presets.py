"""A preset passed with --configfile is the whole run: nothing of config.yaml leaks into
any job (checked on the shell commands of a dry run), and a second --configfile overlays it."""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.test_workflow import ROOT, snakemake

PRESETS = ["configs/cifar10-vitb16.yaml", "configs/imagenet-vitb16.yaml"]


# the results folder of the dry runs that several tests read: the same command line, so
# one dry run (seconds for a preset) serves them all (commands keeps each output)
DRY_RESULTS = "/nonexistent/pefts-dry-run/r"


@functools.cache
def _dry_run(*args: str) -> str:
    result = snakemake("-n", "-p", "--cores", "1", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def commands(*args: str) -> list[dict[str, str]]:
    """The `pefts` commands of a dry run, each as {"command": ..., option: value}. A
    `certify-packed` job is read as the `certify` calls it stands for, one per --job
    SIGMA MODEL OUT (with "packed" set). The same arguments dry-run once per worker
    (overlays written by a test have paths of their own)."""
    jobs = []
    for line in _dry_run(*map(str, args)).splitlines():
        line = line.removeprefix("Shell command: ").strip()
        if line.startswith("pefts "):
            words = shlex.split(line.split(" 2>", 1)[0].split(" > ", 1)[0])
            job = {"command": words[1], "words": words}
            triples = []
            for i, word in enumerate(words):
                if word == "--job":
                    triples.append(words[i + 1:i + 4])
                elif word.startswith("--"):
                    nxt = words[i + 1] if i + 1 < len(words) else ""
                    job[word[2:]] = "" if nxt.startswith("--") else nxt
            if job["command"] == "certify-packed":
                assert len(triples) >= 2, line  # a pack of one is a plain shard job
                jobs += [{**job, "command": "certify", "packed": "", "sigma": sigma,
                          "model": model, "out": out, "shard": job.get("shard", "0/1")}
                         for sigma, model, out in triples]
            else:
                jobs.append(job)
    return jobs


def expected_train(preset: dict, method: str) -> dict:
    return preset.get("method_params", {}).get(method, {}).get("train", {})


@pytest.mark.parametrize("configfile", PRESETS)
def test_nothing_of_config_yaml_leaks_into_a_preset(configfile, tmp_path):
    preset = yaml.safe_load((ROOT / configfile).read_text())
    jobs = commands("experiments", "--configfile", configfile, "--config", f"results={DRY_RESULTS}")
    by_command: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        by_command.setdefault(job["command"], []).append(job)
    base = preset["base"]
    # the dry run lists jobs in no fixed order: tell them apart by their data
    [main_base, source_base] = sorted(by_command["train-base"], key=lambda j: "twobirds" in j["data"])
    for job in (main_base, source_base):
        assert job["arch"] == base["arch"] and int(job["input-size"]) == base["input_size"]
        assert json.loads(job["model-kwargs"]) == base["model_kwargs"]
        assert job["mean"] == ",".join(map(str, base["mean"]))
    assert json.loads(main_base["train"]) == base["train"]
    source_train = preset["experiments"]["twobirds"].get("source_train") or base["train"]
    assert json.loads(source_base["train"]) == source_train
    for job in by_command["prepare"]:
        assert job["dataset"] == preset["dataset"]["name"]
        assert job["root"] == preset["dataset"]["root"]
    [adapt] = by_command["adapt-base"]
    assert json.loads(adapt["train"]) == preset["experiments"]["twobirds"]["adapt_train"]
    finetunes = by_command["finetune"]
    assert {j["method"] for j in finetunes} >= set(preset["methods"])
    for job in finetunes:
        params = preset.get("method_params", {}).get(job["method"], {})
        assert json.loads(job["train"]) == params.get("train", {}), job
        hparams = json.loads(job["hparams"])
        # the ablations change exactly their own hyper-parameter
        varied = {"length"} if "prompt_length" in job["out"] else (
            {"rank", "alpha"} if "lora_rank" in job["out"] else set())
        # a hub encoder and CLIP are read from their fetched local copies (test_weights)
        varied |= {"encoder_file", "clip_file"} if job["method"] == "blackbox" else set()
        varied |= {"weights", "classifier_file"} if job["method"] == "diffusion" else set()
        assert {k: v for k, v in hparams.items() if k not in varied} == {
            k: v for k, v in params.get("hparams", {}).items() if k not in varied}, job
    sigmas = {float(j["sigma"]) for j in finetunes}
    assert sigmas == {float(s) for s in [*preset["sigmas"],
                                         *preset["experiments"]["twobirds"]["sigmas"],
                                         *preset["experiments"]["noise_learning"]["sigmas"]]}
    cert = preset["certify"]
    twobirds = {**cert, **preset["experiments"]["twobirds"].get("certify", {})}
    for job in by_command["certify"]:
        own = twobirds if "twobirds" in job["data"] else cert
        assert (int(job["n0"]), int(job["n"]), int(job["batch"]), int(job["skip"])) == (
            cert["n0"], cert["n"], cert["batch"], own["skip"])
        # a number caps the shards; auto sizes them by their work (tests/test_shard_sizing.py)
        cap = certified_images(preset, job) if own["shards"] == "auto" else own["shards"]
        assert int(job["shard"].split("/")[1]) <= cap
    # the paper's numbers beside ours, for every main run of the preset
    [compare] = by_command["compare-paper"]
    assert compare["dataset"] == preset["summary"]["paper"]


# test images per class of the presets' datasets (ImageNet: its validation set)
TEST_PER_CLASS = {"cifar10": 1000, "imagenet": 50}
ALL_CLASSES = {"cifar10": 10, "imagenet": 1000}


def certified_images(preset: dict, job: dict) -> int:
    """How many images a certify job's run certifies: every skip-th test image of its
    data (two birds: the target classes only), at most max."""
    name = preset["dataset"]["name"]
    classes = (len(preset["experiments"]["twobirds"]["target_classes"]) if "twobirds" in job["data"]
               else ALL_CLASSES[name])
    count = -(-TEST_PER_CLASS[name] * classes // int(job["skip"]))
    return min(count, int(job["max"])) if int(job["max"]) > 0 else count


@pytest.mark.parametrize("configfile", PRESETS)
def test_each_run_once_and_no_empty_shard(configfile, tmp_path):
    preset = yaml.safe_load((ROOT / configfile).read_text())
    jobs = commands("experiments", "--configfile", configfile, "--config", f"results={DRY_RESULTS}")
    finetunes = [j for j in jobs if j["command"] == "finetune"]
    # no two jobs train the same thing (lora_rank2 is the main LoRA run, prompt_length100
    # the main prompt run: shared, not trained again)
    keys = [(j["method"], j["hparams"], j["train"], float(j["sigma"]), j["data"], j["base"])
            for j in finetunes]
    assert len(keys) == len(set(keys)), sorted(keys)
    assert len({j["out"] for j in finetunes}) == len(finetunes)
    certify = [j for j in jobs if j["command"] == "certify"]
    assert certify
    for job in certify:
        k, shards = map(int, job["shard"].split("/"))
        assert k < shards <= certified_images(preset, job), job  # no shard without images
    models = {j["model"] for j in certify}
    assert models == {j["out"] for j in finetunes}  # each model certified, once per shard
    twobirds = [j for j in certify if "twobirds" in j["data"]]
    assert twobirds and all(certified_images(preset, j) >= 100 for j in twobirds)


def test_a_second_configfile_overlays_a_preset(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"certify": {"n": 500},
                                       "method_params": {"lora": {"train": {"epochs": 1}}}}))
    preset = yaml.safe_load((ROOT / PRESETS[1]).read_text())
    jobs = commands("--configfile", PRESETS[1], str(overlay), "--config", f"results={tmp_path}/r")
    lora = next(j for j in jobs if j.get("method") == "lora")
    assert json.loads(lora["train"]) == {**preset["method_params"]["lora"]["train"], "epochs": 1}
    assert {j["n"] for j in jobs if j["command"] == "certify"} == {"500"}
    assert {j["n0"] for j in jobs if j["command"] == "certify"} == {str(preset["certify"]["n0"])}


def test_plain_config_overrides_still_use_config_yaml(tmp_path):
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    jobs = commands("--config", f"results={tmp_path}/r", "device=cpu")
    [base] = [j for j in jobs if j["command"] == "train-base"]
    assert json.loads(base["model-kwargs"]) == default["base"]["model_kwargs"]
    assert {j["device"] for j in jobs if "device" in j} == {"cpu"}
    assert {j["n"] for j in jobs if j["command"] == "certify"} == {str(default["certify"]["n"])}


@pytest.mark.parametrize("configfile", PRESETS)
def test_presets_take_the_fast_path(configfile, tmp_path):
    jobs = [j for j in commands("--configfile", configfile, "--config", f"results={tmp_path}/r")
            if j["command"] == "certify"]
    assert jobs
    for job in jobs:
        assert "adaptive" in job and "merge-lora" in job, job
        assert (job["n"], job["precision"]) == ("100000", "bf16"), job
        radii = yaml.safe_load((ROOT / configfile).read_text())["summary"]["radii"]
        assert [float(r) for r in job["grid"].split(",")] == radii  # the preset's own grid
        # compiled but for the black box and diffusion, with the run's own cache
        run = job["model"].split("/finetune/")[1].split("/")[0]
        assert ("compile" in job) == (run not in ("blackbox", "diffusion")), job
        if "compile" in job:
            assert job["compile-cache"] == f"{tmp_path}/r/certify/{run}/compile-cache"
    # a run's sigmas that fit one job together are certified by one process
    assert {"packed"} <= {key for job in jobs for key in job}


@pytest.mark.slow  # certifies in two real processes
def test_fixed_n_option_reproduces_cohens_protocol(tmp_path, digits, none_model, tiny_base):
    overlay = tmp_path / "fixed.yaml"
    overlay.write_text(yaml.safe_dump({"certify": {"adaptive": False, "precision": "fp32",
                                                   "merge_lora": False}}))
    jobs = [j for j in commands("--configfile", PRESETS[0], str(overlay),
                                "--config", f"results={tmp_path}/r") if j["command"] == "certify"]
    job = jobs[0]
    assert not {"adaptive", "merge-lora", "grid"} & set(job) and job["precision"] == "fp32"
    # the preset's certify options, run on a small model with a small n
    out = tmp_path / "fixed.tsv"
    options = [f"--{k}={job[k]}" for k in ("n0", "alpha", "seed", "precision")]
    result = subprocess.run(
        [sys.executable, "-m", "pefts", "certify", "--model", str(none_model), "--base",
         str(tiny_base), "--data", str(digits), "--sigma", "0.5", *options, "--n", "200",
         "--max", "3", "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header = next(line for line in out.read_text().splitlines() if not line.startswith("#"))
    # Cohen's columns first, then his n (fixed) and counts: no adaptive n_used / n_max
    assert header.split("\t") == ["idx", "label", "predict", "radius", "correct", "time",
                                  "n0", "n", "nA", "pA_lower"]
