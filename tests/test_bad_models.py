"""Models and options that do not fit each other: a --pretrained-file whose keys or shapes
do not fit the architecture, --model-kwargs the architecture rejects, a method that cannot
wrap the base. Each is one line naming the problem, never a timm/peft/torch traceback,
and nothing trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pefts.errors import PeftsError
from pefts.methods import build_model, get_method
from pefts.models.classifier import BaseSpec, build_classifier

VIT = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}


def spec(**changes) -> BaseSpec:
    return BaseSpec(**{"arch": "vit_tiny_patch16_224", "num_classes": 10, "input_size": 8,
                       "model_kwargs": dict(VIT), **changes})


def saved(path, net_spec: BaseSpec, rename=None):
    state = build_classifier(net_spec).net.state_dict()
    if rename:
        state = {rename(k): v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_fitting_weights_load_and_are_used(tmp_path):
    from safetensors.torch import load_file

    path = saved(tmp_path / "w.safetensors", spec())
    net = build_classifier(spec(), pretrained_file=str(path)).net
    weights = load_file(str(path))
    assert torch.equal(net.state_dict()["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("make, needle", [
    # keys that match none of the model's (another naming): timm would keep random weights
    (lambda p: saved(p, spec(), rename=lambda k: "model." + k), "parameters missing"),
    # another width
    (lambda p: saved(p, spec(model_kwargs={**VIT, "embed_dim": 64})), "of another shape"),
    # another depth: blocks.1 absent from a 1-block file
    (lambda p: saved(p, spec(model_kwargs={**VIT, "depth": 1})), "blocks.1."),
])
def test_weights_that_do_not_fit_are_refused_naming_keys(tmp_path, make, needle):
    path = make(tmp_path / "w.safetensors")
    with pytest.raises(PeftsError, match="does not fit the model") as caught:
        build_classifier(spec(), pretrained_file=str(path))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_corrupt_weights_file_is_one_line(tmp_path):
    path = saved(tmp_path / "w.safetensors", spec())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PeftsError, match="is corrupt or not a state dict"):
        build_classifier(spec(), pretrained_file=str(path))
    junk = tmp_path / "w.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PeftsError, match="is corrupt or not a state dict"):
        build_classifier(spec(), pretrained_file=str(junk))


@pytest.mark.parametrize("kwargs", [
    {**VIT, "colour": 3},  # no such argument
    {**VIT, "embed_dim": 30, "num_heads": 4},  # not divisible by the heads
])
def test_model_kwargs_the_architecture_rejects(kwargs):
    with pytest.raises(PeftsError, match="rejects model kwargs"):
        build_classifier(spec(model_kwargs=kwargs))


def test_train_base_cli_refuses_them_in_one_line(run_cli, digits, tmp_path):
    out = tmp_path / "b.safetensors"
    code, _, err = run_cli("train-base", "--data", digits, "--out", out, "--arch",
                           "vit_tiny_patch16_224", "--input-size", "8", "--model-kwargs",
                           '{"img_size": 8, "patch_size": 2, "colour": 3}', "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "rejects model kwargs" in lines[0], err
    assert not out.exists()
    wrong = saved(tmp_path / "w.safetensors", spec(), rename=lambda k: "model." + k)
    code, _, err = run_cli("train-base", "--data", digits, "--out", out, "--arch",
                           "vit_tiny_patch16_224", "--input-size", "8", "--model-kwargs",
                           '{"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}',
                           "--pretrained-file", wrong, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "does not fit the model" in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("method, needle", [
    ("lora", "method 'lora' cannot wrap the base test_resnet"),  # peft finds no q/v to target
    ("prompt", "prompt tuning needs a timm VisionTransformer"),
    ("adapter", "adapters need a timm VisionTransformer"),
])
def test_a_method_that_cannot_wrap_a_cnn(method, needle):
    base = build_classifier(BaseSpec(arch="test_resnet", num_classes=10, input_size=8))
    classes = [str(i) for i in range(10)]
    with pytest.raises(PeftsError, match=needle):
        build_model(get_method(method), base, classes, classes)
