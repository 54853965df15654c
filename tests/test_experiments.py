"""The study's run table, and the two-birds path: a base trained on other classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate

from pefts.data import prepare
from pefts.errors import PeftsError
from pefts.finetuning.runs import adapt_base, finetune, train_base
from pefts.methods import load_model
from pefts.study.config import check_config
from pefts.study.experiments import Study, sigma_label

from .conftest import TINY_SPEC

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: Path = ROOT / "config.yaml", **changes) -> dict:
    config = {**yaml.safe_load(path.read_text()), **changes}
    validate(config, str(SCHEMA))  # fills the schema's defaults, as the Snakefile does
    return config


def test_default_config_is_valid_and_runs_every_method():
    config = load_config()
    check_config(config)
    study = Study(config)
    # diffusion needs a pretrained DDPM, so only the presets list it
    assert set(config["methods"]) == {"none", "lora", "prompt", "adapter", "full", "denoiser",
                                      "sunet", "blackbox"}
    assert study.main_grid() == [(m, s) for m in config["methods"] for s in study.sigmas]


def test_runs_share_a_name_when_they_are_the_same_run():
    study = Study(load_config())
    # the noise-learning figure reuses the main comparison's models at the main sigmas
    assert set(study.main_grid()) & set(study.noise_grid())
    assert study.model("lora", "0.5") == "results/finetune/lora/sigma0.5/model.safetensors"
    assert study.runs["lora"].hparams == {"rank": 4, "alpha": 4}


def test_ablation_runs_override_only_their_hyper_parameter():
    config = load_config()
    study = Study(config)
    ablation = config["experiments"]["ablation"]
    lengths = [study.runs[r].hparams["length"] for r, _ in study.ablation_grid("prompt_length")]
    assert lengths == ablation["prompt_length"]
    for run, sigma in study.ablation_grid("lora_rank"):
        hparams = study.runs[run].hparams
        assert hparams["rank"] == hparams["alpha"] and sigma == sigma_label(ablation["sigma"])
    prompt_defaults = config["method_params"]["prompt"]["hparams"]
    assert study.runs["prompt_length1"].hparams["dropout"] == prompt_defaults["dropout"]


def test_twobirds_setups_differ_only_in_the_base():
    study = Study(load_config())
    one, two = study.runs["oneround_lora"], study.runs["tworound_lora"]
    assert (one.method, one.hparams) == (two.method, two.hparams)
    assert study.data("oneround_lora") == study.data("tworound_lora")
    assert study.base("oneround_lora") != study.base("tworound_lora")
    assert study.base("lora") == study.setups()["main"]["base"]


def test_sigma_label_matches_config_spelling():
    assert [sigma_label(s) for s in (0.25, 0.5, 1.0, 1, 0.125)] == ["0.25", "0.5", "1", "1", "0.125"]


@pytest.mark.parametrize("changes, needle", [
    ({"methods": ["none", "magic"]}, "unknown method 'magic'"),
    # a repeated sigma is the schema's (uniqueItems): tests/test_config_errors.py
    ({"experiments": {"twobirds": {"source_classes": [0, 1], "target_classes": [1, 2]}}},
     "overlap"),
    ({"dataset": {"name": "cifar10"}}, "dataset.root"),
])
def test_check_config_refuses(changes, needle):
    with pytest.raises(PeftsError, match=needle):
        check_config(load_config(**changes))


# --- two birds, one stone: adapting a base trained on other classes -----------------------

@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("twobirds")
    source = prepare("digits", root / "source", classes=[0, 1, 2])["num_classes"]
    target = prepare("digits", root / "target", classes=[5, 6, 7, 8])["num_classes"]
    assert (source, target) == (3, 4)
    base = root / "base_source.safetensors"
    train_base(root / "source" / "manifest.json", base, TINY_SPEC,
               {"epochs": 1, "batch_size": 128}, False, None, "cpu")
    return root, base


def test_one_round_replaces_the_head_and_reloads(tasks):
    root, base = tasks
    out = root / "oneround.safetensors"
    meta = finetune(root / "target" / "manifest.json", base, out, "lora", 0.25, {"rank": 2},
                    {"epochs": 0.2, "batch_size": 64}, "cpu")
    assert meta["num_classes"] == 4 and meta["classes"] == ["5", "6", "7", "8"]
    model, _ = load_model(out, base)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_a_method_with_a_frozen_head_refuses_other_classes(tasks):
    root, base = tasks
    with pytest.raises(PeftsError, match="3-class head"):
        finetune(root / "target" / "manifest.json", base, root / "none.safetensors", "none",
                 0.25, {}, {}, "cpu")


def test_two_rounds_adapt_the_base_on_clean_data_first(tasks):
    root, base = tasks
    adapted = root / "base_target.safetensors"
    meta = adapt_base(root / "target" / "manifest.json", base, adapted,
                      {"epochs": 1, "batch_size": 128}, "cpu")
    assert meta["spec"]["num_classes"] == 4 and meta["adapted_from"] == str(base)
    assert 0.0 <= meta["metrics"]["clean_test_accuracy"] <= 1.0
    out = root / "tworound.safetensors"
    finetune(root / "target" / "manifest.json", adapted, out, "lora", 0.25, {"rank": 2},
             {"epochs": 0.2, "batch_size": 64}, "cpu")
    model, _ = load_model(out, adapted)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)
