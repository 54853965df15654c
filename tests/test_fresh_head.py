"""Two birds, one stone with as many downstream classes as source classes (5 -> 5,
disjoint): the downstream task still gets a fresh head, in one round and in two."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pefts.data import prepare
from pefts.finetuning.runs import adapt_base, finetune, train_base
from pefts.methods import load_model

from .conftest import TINY_SPEC

HEAD = "net.head.weight"


@pytest.fixture(scope="module")
def same_size_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("fivefive")
    prepare("digits", root / "source", classes=[0, 1, 2, 3, 4])
    prepare("digits", root / "target", classes=[5, 6, 7, 8, 9])
    base = root / "base_source.safetensors"
    train_base(root / "source" / "manifest.json", base, TINY_SPEC,
               {"epochs": 1, "batch_size": 128, "lr": 3e-3}, False, None, "cpu")
    return root, base


def head_change(weights, source) -> float:
    return (load_file(str(weights))[HEAD] - load_file(str(source))[HEAD]).abs().max().item()


def test_adapt_base_gives_a_downstream_task_a_fresh_head(same_size_tasks):
    root, base = same_size_tasks
    adapted = root / "adapted.safetensors"
    # no training at all: any change of the head is the fresh head
    adapt_base(root / "target" / "manifest.json", base, adapted, {"epochs": 0}, "cpu")
    assert head_change(adapted, base) > 1e-2


def test_one_round_gives_a_downstream_task_a_fresh_head(same_size_tasks):
    root, base = same_size_tasks
    out = root / "oneround.safetensors"
    # one step at a tiny learning rate moves a kept head by about 1e-6, not 1e-2
    meta = finetune(root / "target" / "manifest.json", base, out, "lora", 0.25, {"rank": 2},
                    {"epochs": 0.01, "batch_size": 64, "lr": 1e-6}, "cpu")
    assert meta["classes"] == ["5", "6", "7", "8", "9"]
    model, _ = load_model(out, base)
    source_head = load_file(str(base))[HEAD]
    assert (model.state_dict()[HEAD] - source_head).abs().max().item() > 1e-2
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 5)


def test_main_task_keeps_the_base_head(same_size_tasks):
    root, base = same_size_tasks
    out = root / "same.safetensors"
    finetune(root / "source" / "manifest.json", base, out, "lora", 0.25, {"rank": 2},
             {"epochs": 0.01, "batch_size": 64, "lr": 1e-6}, "cpu")
    model, _ = load_model(out, base)
    assert (model.state_dict()[HEAD] - load_file(str(base))[HEAD]).abs().max().item() < 1e-3


@pytest.mark.parametrize("method", ["none", "denoiser", "blackbox"])
def test_a_method_without_a_trainable_head_is_refused_in_one_line(same_size_tasks, run_cli, method):
    root, base = same_size_tasks
    out = root / f"{method}.safetensors"
    code, _, err = run_cli("finetune", "--data", root / "target" / "manifest.json", "--base", base,
                           "--method", method, "--sigma", "0.25", "--out", out, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and f"method {method!r} keeps the base" in lines[0], err
    assert not out.exists()
