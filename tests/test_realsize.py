"""The paper presets at real size, no download: each preset's real DAG (every method and
baseline, two birds, ablations, noise learning) with a random-weight ViT-B/16 from a local
file and a small generated data folder; only epochs, n, images and grids are shrunk.

PEFTS_REALSIZE_GPU=1 runs the same test on a GPU machine (device auto, one GPU per job,
snakemake --resources gpu=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy.stats import norm

from pefts.certification.bounds import radius_cap
from pefts.certification.sequences import cp_lower
from pefts.reporting.paper_values import TABLE1, TABLE2
from tests import realsize
from tests.fixtures_baselines import paper_baseline_overrides

ROOT = Path(__file__).resolve().parents[1]
GPU = os.environ.get("PEFTS_REALSIZE_GPU") == "1"

# preset -> its data fixture: (folder builder, number of training images)
PRESETS = {
    "configs/imagenet-vitb16.yaml": (
        lambda root: (realsize.image_folder(root, 20, 1, [0, 1, 10, 11]), None), 20),
    "configs/cifar10-vitb16.yaml": (
        lambda root: (root, realsize.cifar10_folder(root, 2, [0, 1, 5, 6])), 20),
}


@pytest.fixture(scope="session")
def vitb16(tmp_path_factory) -> Path:
    return realsize.vitb16_weights(tmp_path_factory.mktemp("weights") / "vit_base_patch16_224.safetensors")


def expected_outputs(results: Path, sigma: str) -> list[Path]:
    names = ["summary/certified.tsv", "summary/parameters.tsv", "summary/paper_comparison.md",
             f"figures/certified_sigma{sigma}.png",
             "figures/accuracy_vs_parameters.png", "summary/twobirds.tsv", "figures/twobirds.png",
             "summary/noise_learning.tsv", "figures/noise_learning.png"]
    names += [f"{kind}/ablation_{name}.{ext}" for name in ("prompt_length", "lora_rank")
              for kind, ext in (("summary", "tsv"), ("figures", "png"))]
    return [results / name for name in names]


def body_params(meta: dict, total_key: str) -> int:
    """Parameters of the base network without its head (768 inputs per class + bias)."""
    classes = len(meta["classes"])
    return meta[total_key] - 769 * classes


@pytest.mark.slow
@pytest.mark.parametrize("preset_file", list(PRESETS))
def test_preset_runs_at_real_size(preset_file, vitb16, tmp_path):
    preset = yaml.safe_load((ROOT / preset_file).read_text())
    build, num_train = PRESETS[preset_file]
    root, checksums = build(tmp_path / "data")
    results = tmp_path / "results"
    overlay = tmp_path / "overlay.yaml"
    shrunk = realsize.overlay(preset, weights=vitb16, root=root, results=results,
                              num_train=num_train, gpu=GPU)
    # the paper's baselines need networks of their own: local random stand-ins
    for method, extra in paper_baseline_overrides(tmp_path / "baselines").items():
        entry = shrunk["method_params"].setdefault(method, {})
        entry["hparams"] = {**entry.get("hparams", {}), **extra["hparams"]}
    overlay.write_text(yaml.safe_dump(shrunk))
    args = ["--cores", "all" if GPU else "2", "--configfile", preset_file, str(overlay),
            "--nolock", "experiments", *(["--resources", "gpu=1"] if GPU else [])]
    env = {**os.environ, **realsize.fixture_env(checksums),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=3600)
    print(f"{preset_file}: {time.monotonic() - start:.0f} s")  # shown with pytest -s
    assert result.returncode == 0, result.stderr[-4000:]

    sigma = f"{float(preset['sigmas'][0]):g}"
    missing = [str(p) for p in expected_outputs(results, sigma) if not p.is_file()]
    assert not missing, missing
    summary = pd.read_csv(results / "summary" / "certified.tsv", sep="\t")
    assert list(summary["method"]) == preset["methods"]  # every method and baseline ran
    certified = []
    for method in preset["methods"]:
        rows = pd.read_csv(results / "certify" / method / f"sigma{sigma}" / "certified.tsv", sep="\t")
        assert len(rows) == realsize.certified_images(GPU)
        certified.append(rows[rows["predict"] != -1])
    # at least one non-abstaining certificate at 224 px, and each is the one its counts allow
    certified = pd.concat(certified)
    assert len(certified) >= 1, "every row abstained: n and alpha too small to certify"
    n, alpha, s = realsize.CERTIFY_N, realsize.CERTIFY_ALPHA, float(sigma)
    for row in certified.itertuples():
        assert row.pA_lower == pytest.approx(cp_lower(int(row.nA), n, alpha), rel=1e-9)
        assert row.radius == pytest.approx(s * norm.ppf(row.pA_lower), rel=1e-9, abs=1e-12)
        assert 0 <= row.radius <= radius_cap(s, n, alpha) + 1e-12
    # the network of every job is the real ViT-B/16
    bases = [results / "base", results / "twobirds" / "base_source", results / "twobirds" / "base_target"]
    for folder in bases:
        meta = json.loads((folder / "model.json").read_text())
        assert body_params(meta, "total_params") == realsize.VITB16_BODY_PARAMS, folder
    finetuned = sorted((results / "finetune").glob("*/sigma*/model.json"))
    # main, two birds (4), ablations (4, of which lora_rank2 is the main LoRA run, shared)
    assert len(finetuned) >= len(preset["methods"]) + 7
    for path in finetuned:
        meta = json.loads(path.read_text())
        assert body_params(meta, "base_params") == realsize.VITB16_BODY_PARAMS, path
    # the black box is zero-shot CLIP ViT-B/16, reported apart from what trains
    blackbox = json.loads((results / "finetune" / "blackbox" / f"sigma{sigma}" / "model.json").read_text())
    assert blackbox["hparams"]["query"] == "clip" and blackbox["metrics"]["queries"] > 0
    assert blackbox["frozen_parts"] == {"coordinator encoder": realsize.MAE_ENCODER_PARAMS,
                                        "queried CLIP": realsize.CLIP_VITB16_PARAMS}
    assert blackbox["metrics"]["spsa_steps"] == 1  # the overlay's budget, not the preset's
    params = pd.read_csv(results / "summary" / "parameters.tsv", sep="\t").set_index("method")
    row = params.loc["blackbox"]
    assert row["trainable"] == blackbox["trainable_params"] == 9_920  # BlackVIP's coordinator
    assert "queried CLIP 149,620,737" in row["frozen parts"]
    check_paper_comparison(results, preset, summary, params)
    assert f"coordinator encoder {realsize.MAE_ENCODER_PARAMS:,}" in row["frozen parts"]


def check_paper_comparison(results: Path, preset: dict, summary: pd.DataFrame,
                           params: pd.DataFrame) -> None:
    """Every (row, column) of the paper's Table 1 and every count of its Table 2 is in the
    comparison; where the run covers a row's method, ours is at radius r = column for the
    run at sigma = column (and at r = 0), and no row is matched to our untuned base."""
    table = pd.read_csv(results / "summary" / "paper_comparison.tsv", sep="\t",
                        dtype={"table": str})
    paper = TABLE1[preset["summary"]["paper"]]
    table1 = table[table["table"] == "1"]
    assert len(table1) == len(paper.rows) * len(paper.columns)
    assert "none" not in set(table1["method"].dropna())
    covered = [(row.method, column) for row in paper.rows.values() if row.method
               for column in paper.columns
               if row.method in preset["methods"] and column in summary["sigma"].tolist()]
    assert covered, "the shrunk preset covers no cell of the paper's Table 1"
    for method, column in covered:
        mine = table1[(table1["method"] == method) & (table1["column"] == column)]
        ours = summary[(summary["method"] == method) & (summary["sigma"] == column)]
        assert mine["ours %"].item() == pytest.approx(100 * ours[f"r={column:g}"].item())
        assert mine["ours % at r=0"].item() == pytest.approx(100 * ours["r=0"].item())
    table2 = table[table["table"] == "2"]
    assert set(table2["method"]) == {count.method for count in TABLE2.values()}
    for method, ours in zip(table2["method"], table2["ours params"], strict=True):
        if method in params.index:
            assert ours == params.loc[method, "trainable"]
        else:
            assert pd.isna(ours)


@pytest.mark.parametrize("preset_file", list(PRESETS))
def test_the_overlay_compiles_only_on_a_gpu(preset_file, tmp_path):
    """The presets compile their certifier (certify.compile); on a 2-core CPU compiling
    ViT-B/16 takes minutes, so the overlay turns it off there and leaves it on a GPU."""
    preset = yaml.safe_load((ROOT / preset_file).read_text())
    assert preset["certify"]["compile"] is True
    shrunk = {gpu: realsize.overlay(preset, weights=tmp_path / "w", root=tmp_path, results=tmp_path,
                                    num_train=10, gpu=gpu) for gpu in (False, True)}
    assert shrunk[False]["certify"]["compile"] is False
    assert "compile" not in shrunk[True]["certify"]  # the preset's
