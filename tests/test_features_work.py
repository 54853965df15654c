"""Features checked by what they do, not that they run: the fast path really executes in
bf16 and really merges LoRA, two-round adaptation trains the body too, and a run's
settings hold n0, n, alpha and seed so that resume and merge never mix runs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import pefts.certification.fastpath as fastpath
import pefts.certification.rows as rows
from pefts.errors import PeftsError
from pefts.finetuning.runs import adapt_base, finetune


@pytest.fixture(scope="module")
def lora_model(digits, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    # a few steps so LoRA's B is not zero (merged and unmerged outputs differ otherwise)
    finetune(digits, tiny_base, out, "lora", 0.5, {"rank": 2}, {"epochs": 0.2, "lr": 0.05},
             device="cpu")
    return out


@pytest.fixture
def spy(monkeypatch):
    """The network certify executes, with the dtype of every Linear's output and the
    calls into LoRA's low-rank matrices recorded."""
    seen: dict = {"dtypes": set(), "lora_calls": 0, "net": None}
    real = fastpath.executed

    def recording(net, *args, **kwargs):
        model = real(net, *args, **kwargs)
        seen["net"] = model
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                if ".lora_A." in name or ".lora_B." in name:
                    module.register_forward_hook(lambda *_: seen.__setitem__(
                        "lora_calls", seen["lora_calls"] + 1))
                else:
                    module.register_forward_hook(lambda m, i, o: seen["dtypes"].add(o.dtype))
        return model

    monkeypatch.setattr(fastpath, "executed", recording)
    return seen


def certify(run_cli, model, base, data, out, *extra):
    return run_cli("certify", "--model", model, "--base", base, "--data", data, "--sigma", "0.5",
                   "--n0", "4", "--n", "16", "--batch", "16", "--max", "1", "--out", out,
                   "--device", "cpu", *extra)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_is_what_the_network_runs_in(run_cli, spy, digits, tiny_base, none_model,
                                               tmp_path, precision, dtype):
    code, _, err = certify(run_cli, none_model, tiny_base, digits, tmp_path / "o.tsv",
                           "--precision", precision)
    assert code == 0, err
    assert spy["dtypes"] == {dtype}
    # and the run says so: a fixed-n bf16 run whose sidecar said fp32 would be summarised
    # beside fp32 runs without --mixed
    import json

    sidecar = json.loads((tmp_path / "o.tsv.json").read_text())
    assert sidecar["certification"]["mode"] == "fixed"
    assert sidecar["certification"]["precision"] == precision
    code, _, err = run_cli("summarize", "--run", "none", "0.5", tmp_path / "o.tsv", "--out-tsv",
                           tmp_path / "s.tsv", "--out-md", tmp_path / "s.md")
    assert code == 0, err
    assert (tmp_path / "s.md").read_text().rstrip().endswith(f", {precision}.")


@pytest.mark.parametrize("merge", [False, True])
def test_merge_lora_leaves_no_low_rank_path(run_cli, spy, digits, tiny_base, lora_model,
                                            tmp_path, merge):
    from peft.tuners.lora import LoraLayer

    code, _, err = certify(run_cli, lora_model, tiny_base, digits, tmp_path / "o.tsv",
                           *(["--merge-lora"] if merge else []))
    assert code == 0, err
    layers = [m for m in spy["net"].modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.merged == merge for m in layers)
    assert (spy["lora_calls"] == 0) == merge


def test_two_round_adaptation_trains_the_body(digits, tiny_base, tmp_path):
    out = tmp_path / "adapted.safetensors"
    adapt_base(digits, tiny_base, out, {"epochs": 1, "lr": 0.01}, device="cpu")
    before, after = load_file(str(tiny_base)), load_file(str(out))
    body = [k for k in before if "blocks." in k and k.endswith("weight")]
    changed = [k for k in body if not torch.equal(before[k], after[k])]
    assert len(changed) == len(body), f"unchanged: {sorted(set(body) - set(changed))[:3]}"


@pytest.mark.parametrize("option, first, second", [
    ("--n0", "4", "5"), ("--n", "16", "17"), ("--alpha", "0.001", "0.002"), ("--seed", "0", "1"),
])
def test_resume_refuses_a_partial_of_other_sampling(run_cli, monkeypatch, digits, tiny_base,
                                                    none_model, tmp_path, option, first, second):
    real = rows.certify_rows

    def interrupted(*args, **kwargs):
        source = real(*args, **kwargs)

        def stop_after_one(todo):
            for i, row in enumerate(source(todo)):
                if i == 1:
                    raise PeftsError("interrupted")
                yield row
        return stop_after_one

    out = tmp_path / "o.tsv"
    base_args = ["--n0", "4", "--n", "16", "--alpha", "0.001", "--seed", "0"]

    def run(value):
        args = list(base_args)
        args[args.index(option) + 1] = value
        return run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                       "--sigma", "0.5", "--batch", "16", "--max", "3", "--out", out,
                       "--device", "cpu", *args)

    monkeypatch.setattr(rows, "certify_rows", interrupted)
    assert run(first)[0] == 1 and (tmp_path / "o.tsv.partial").exists()
    monkeypatch.setattr(rows, "certify_rows", real)
    code, _, err = run(second)
    assert code == 1 and "holds rows of a run with other settings" in err
    assert run(first)[0] == 0  # the same settings resume


@pytest.mark.parametrize("option, value", [("--n0", "5"), ("--n", "17"), ("--alpha", "0.002"),
                                           ("--seed", "1")])
def test_merge_refuses_shards_of_other_sampling(run_cli, digits, tiny_base, none_model, tmp_path,
                                                option, value):
    shards = []
    for k in (0, 1):
        args = ["--n0", "4", "--n", "16", "--alpha", "0.001", "--seed", "0"]
        if k == 1:
            args[args.index(option) + 1] = value
        out = tmp_path / f"{k}.tsv"
        code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data",
                               digits, "--sigma", "0.5", "--batch", "16", "--max", "2",
                               "--shard", f"{k}/2", "--out", out, "--device", "cpu", *args)
        assert code == 0, err
        shards.append(out)
    code, _, err = run_cli("merge", *shards, "--out", tmp_path / "m.tsv")
    assert code == 1 and "shards of different runs" in err and option.lstrip("-") in err, err
