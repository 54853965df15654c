"""Start-up of a certification job: the compile cache shared by a run's shards, the
preset's cases, what `pefts plan` reads, and (slow) the benchmark run end to end at
tiny size, each method in a fresh process."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from pefts.benchmarks.startup import (
    COLUMNS,
    PHASES,
    job_seconds,
    preset_cases,
    read_startup,
)
from pefts.certification import fastpath
from pefts.errors import PeftsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_env(monkeypatch):
    """Whatever the test sets, the process's Inductor cache folder is restored after it."""
    monkeypatch.delenv(fastpath.CACHE_ENV, raising=False)
    yield
    monkeypatch.delenv(fastpath.CACHE_ENV, raising=False)


def test_a_compiled_network_keeps_its_artifacts_in_the_given_folder(tmp_path, cache_env):
    net = fastpath.executed(nn.Linear(3, 2), compile_net=True, compile_cache=tmp_path / "run" / "cc")
    assert isinstance(net, torch._dynamo.eval_frame.OptimizedModule)
    assert os.environ[fastpath.CACHE_ENV] == str((tmp_path / "run" / "cc").resolve())
    assert (tmp_path / "run" / "cc").is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str((tmp_path / "run" / "cc").resolve())  # what Inductor reads


def test_an_uncompiled_network_leaves_the_cache_alone(tmp_path, cache_env):
    fastpath.executed(nn.Linear(3, 2), compile_cache=tmp_path / "cc")
    assert fastpath.CACHE_ENV not in os.environ and not (tmp_path / "cc").exists()


def test_a_cache_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path, cache_env):
    (tmp_path / "file").write_text("")
    with pytest.raises(PeftsError, match="compile cache folder .* cannot be created"):
        fastpath.executed(nn.Linear(3, 2), compile_net=True, compile_cache=tmp_path / "file" / "cc")


def test_the_shards_of_a_run_share_one_cache_beside_their_outputs(tmp_path):
    from pefts.cli.certification import default_compile_cache

    shards = tmp_path / "certify" / "lora" / "sigma0.25" / "shards"
    caches = {default_compile_cache(str(shards / f"{k}-of-3.tsv")) for k in range(3)}
    assert caches == {shards.resolve() / "compile-cache"}


def test_the_preset_cases_take_the_preset_path():
    with open(ROOT / "configs" / "cifar10-vitb16.yaml") as handle:
        config = yaml.safe_load(handle)
    subject, cases, batch = preset_cases(config, None, ["lora"])
    assert (subject.arch, subject.input_size, subject.image_size) == ("vit_base_patch16_224", 224, 32)
    assert batch == config["certify"]["batch"]
    paths = {(c.method, c.path) for c in cases}
    assert len(cases) == len(config["methods"]) + 1
    assert {("lora", "bf16, merged"), ("lora", "bf16, merged, compiled"), ("prompt", "bf16")} <= paths
    with pytest.raises(PeftsError, match="sgd not in the preset's methods"):
        preset_cases(config, ["lora", "sgd"], [])


def test_plan_reads_a_cold_first_job_and_warm_later_shards(tmp_path):
    table = pd.DataFrame([{"method": "lora", "path": "bf16", "start": s, "total_s": t}
                          for s, t in (("cold", 30.0), ("warm", 12.0))]
                         + [{"method": "lora", "path": "bf16, compiled", "start": "cold",
                             "total_s": 99.0}])
    table.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    startup = read_startup(tmp_path / "s.tsv")
    assert startup[("lora", "cold")] == 30.0  # the preset's path: the method's first row
    assert job_seconds(startup, "lora", 1) == 30.0
    assert job_seconds(startup, "lora", 5) == 30.0 + 4 * 12.0
    with pytest.raises(PeftsError, match="no start-up measured for method 'prompt'"):
        job_seconds(startup, "prompt", 2)
    with pytest.raises(PeftsError, match="shards must be at least 1"):
        job_seconds(startup, "lora", 0)
    table.drop(columns="total_s").to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(PeftsError, match="lack columns total_s"):
        read_startup(tmp_path / "bad.tsv")


TINY = {
    "base": {"arch": "vit_tiny_patch16_224", "input_size": 8,
             "model_kwargs": {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2,
                              "num_heads": 2}},
    "methods": ["none", "lora"],
    "method_params": {"lora": {"hparams": {"rank": 2, "alpha": 2}}},
    "dataset": {"image_size": 8},
    "certify": {"precision": "fp32", "merge_lora": True, "batch": 4},
}


@pytest.mark.slow
def test_the_benchmark_times_each_method_in_a_fresh_process(tmp_path, run_cli):
    """Tiny size, one method compiled: every phase measured, the page and the TSV
    written, and the compile cache of the run's folder filled by the cold job."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out, page = tmp_path / "startup.tsv", tmp_path / "startup.md"
    code, printed, err = run_cli("benchmark-startup", "--configfile", config, "--compile", "none",
                                 "--threads", "1", "--device", "cpu", "--folder", tmp_path / "w",
                                 "--out", out, "--out-md", page)
    assert code == 0, err
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == list(COLUMNS)
    assert list(zip(table.method, table.path, table.start, strict=True)) == [
        ("none", "fp32", "cold"), ("none", "fp32", "warm"),
        ("lora", "fp32, merged", "cold"), ("lora", "fp32, merged", "warm"),
        ("none", "fp32, compiled", "cold"), ("none", "fp32, compiled", "warm")]
    assert (table[[f"{p}_s" for p in PHASES]] >= 0).all().all()
    assert (table.total_s >= table[[f"{p}_s" for p in PHASES]].sum(axis=1) - 1e-6).all()
    assert (table.imports_s > 0.5).all()  # torch alone: a fresh process each
    assert (table.exit_s > 0).all() and (table.exit_s < table.total_s).all()
    compiled = table[table.path.str.contains("compiled")].set_index("start")
    assert compiled.loc["cold", "compile_s"] > 0 and (table[~table.path.str.contains(
        "compiled")].compile_s == 0).all()
    assert any((tmp_path / "w" / "compile-cache-none").rglob("*"))
    assert page.read_text().startswith("Written by `pefts benchmark-startup") and "| none" in printed
