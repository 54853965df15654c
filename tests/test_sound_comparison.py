"""`pefts compare-sound` and certify.sound_compare: one run's two modes side by side, each
row read from its own file, refused when the two files are not the same run."""

from __future__ import annotations

import pandas as pd
import pytest

from pefts.certification.results import write_tsv
from pefts.errors import PeftsError
from pefts.reporting.sound_comparison import SOUND_MODE, comparison_table
from pefts.study.config import check_config
from pefts.study.experiments import Study
from tests.test_experiments import load_config
from tests.test_workflow import ROOT

SETTINGS = {"dataset": "digits", "class_subset": None, "split": "test", "manifest": "abc",
            "skip": 1, "max": -1, "command": "certify", "model": "m", "method": "lora",
            "sigma": 0.25, "n0": 8, "n": 100, "alpha": 0.001, "seed": 0, "adaptive": True,
            "n_max": 100, "radii": [0.0, 0.5], "rtol": None, "precision": "fp32"}


def run_tsv(path, radius: list[float], n_used: list[int], seconds: float, **settings) -> str:
    """Four images, the first three correct (the last abstains)."""
    frame = pd.DataFrame({"idx": [0, 1, 2, 3], "label": [1, 2, 3, 4], "predict": [1, 2, 3, -1],
                          "radius": [*radius, 0.0], "correct": [1, 1, 1, 0],
                          "time": [seconds / 4] * 4, "n0": [8] * 4, "n_used": n_used,
                          "nA": [1] * 4, "pA_lower": [0.5] * 4, "n_max": [100] * 4})
    write_tsv(frame, path, {**SETTINGS, **settings})
    return str(path)


@pytest.fixture
def runs(tmp_path):
    standard = run_tsv(tmp_path / "standard.tsv", [0.1, 0.3, 0.5], [10, 20, 30, 40], 2.0)
    sound = run_tsv(tmp_path / "sound.tsv", [0.1, 0.6, 0.6], [10, 20, 30, 100], 3.0,
                    sound=True, pixel_levels=16)
    return standard, sound


def test_each_mode_is_its_own_files_counts_samples_and_seconds(run_cli, tmp_path, runs):
    standard, sound = runs
    code, _, err = run_cli("compare-sound", "--standard", standard, "--sound", sound,
                           "--radii", "0,0.25,0.5", "--out-tsv", tmp_path / "c.tsv",
                           "--out-md", tmp_path / "c.md")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "c.tsv", sep="\t").set_index("mode")
    assert list(table.index) == ["standard", "sound"]
    assert table.loc["standard", ["r=0", "r=0.25", "r=0.5"]].tolist() == [3, 2, 1]
    assert table.loc["sound", ["r=0", "r=0.25", "r=0.5"]].tolist() == [3, 2, 2]
    # n0 + n_used summed over all images, abstentions included
    assert table.loc["standard", "samples"] == 4 * 8 + 100
    assert table.loc["sound", "samples"] == 4 * 8 + 160
    assert table.loc["standard", "seconds"] == pytest.approx(2.0)
    assert table.loc["sound", "seconds"] == pytest.approx(3.0)
    page = (tmp_path / "c.md").read_text()
    assert "1.45x the samples, 1.50x the seconds" in page and SOUND_MODE in page


@pytest.mark.parametrize("change, needle", [
    ({"model": "other"}, "model is 'other'"),
    ({"sigma": 0.5}, "sigma is 0.5"),
    ({"skip": 5}, "skip is 5"),
    ({"radii": [0.0, 0.25]}, "radii"),
    # the stopping rule, whatever its name: passes of two rules are not comparable
    ({"stopping_rule": "another"}, "stopping_rule"),
])
def test_two_different_runs_are_refused(tmp_path, runs, change, needle):
    standard, _ = runs
    other = run_tsv(tmp_path / "other.tsv", [0.1, 0.3, 0.6], [10] * 4, 1.0, sound=True, **change)
    with pytest.raises(PeftsError, match="not the same run in two modes") as err:
        comparison_table(standard, other, [0.0])
    assert needle in str(err.value)


def test_modes_given_the_wrong_way_round_are_refused(run_cli, tmp_path, runs):
    standard, sound = runs
    code, _, err = run_cli("compare-sound", "--standard", sound, "--sound", standard,
                           "--out-tsv", tmp_path / "c.tsv", "--out-md", tmp_path / "c.md")
    assert code != 0 and "was certified in sound mode" in err and "Traceback" not in err
    assert not (tmp_path / "c.tsv").exists()


def test_a_missing_run_or_bad_radii_is_one_line(run_cli, tmp_path, runs):
    standard, sound = runs
    md = ["--out-md", tmp_path / "c.md"]
    for args, needle in ((["--standard", tmp_path / "none.tsv", "--out-tsv", tmp_path / "c.tsv"],
                          "none.tsv"),
                         (["--standard", standard, "--radii", "0,nan", "--out-tsv", tmp_path / "c.tsv"],
                          "--radii"),
                         (["--standard", standard, "--out-tsv", standard], "--out-tsv")):
        code, _, err = run_cli("compare-sound", "--sound", sound, *args, *md)
        assert code != 0 and needle in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert pd.read_csv(standard, sep="\t")["idx"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("certify, needle", [
    ({"sound_compare": "magic"}, "certify.sound_compare 'magic' is not one of methods"),
    ({"sound_compare": "lora", "sound": True}, "every run is already sound"),
])
def test_config_names_the_problem(certify, needle):
    config = load_config()
    config["certify"].update(certify)
    with pytest.raises(PeftsError, match=needle):
        check_config(config)


def test_the_default_compares_lora_at_its_first_sigma_and_the_presets_nothing():
    study = Study(load_config())
    assert study.sound_grid() == [("lora", "0.25")]
    # its own folder: never the standard run's rows
    assert study.sound_certified("lora", "0.25") != study.certified("lora", "0.25")
    for preset in ("cifar10-vitb16", "imagenet-vitb16"):
        assert Study(load_config(ROOT / "configs" / f"{preset}.yaml")).sound_grid() == []


def shard_of(path, source: str, keep: list[int], **settings) -> str:
    """The rows ``keep`` of ``source`` with its settings, as one shard of it would be."""
    from pefts.certification.results import read_tsv
    from pefts.runtime.provenance import read_sidecar

    frame = read_tsv(source)
    write_tsv(frame[frame["idx"].isin(keep)], path,
              {**read_sidecar(source)["settings"], **settings})
    return str(path)


def test_a_shard_is_not_compared_with_the_whole_run(tmp_path, runs):
    """Settings agree but the sound file is one shard (images 0 and 2 of 4): its counts
    and samples would be put beside the whole run's as "0.50x the samples"."""
    standard, sound = runs
    shard = shard_of(tmp_path / "shard.tsv", sound, [0, 2], shard="0/2")
    with pytest.raises(PeftsError, match=r"standard.tsv and .*shard.tsv certified different "
                                         r"images: 4 vs 2 images, image 1 only in .*standard"):
        comparison_table(standard, shard, [0.0])


def test_the_comparisons_refuse_other_images_in_one_line_in_a_process(tmp_path, runs):
    """The real command, as a job runs it: one line, no traceback, nothing written."""
    from tests.test_cli_errors import error_line, pefts_process

    standard, sound = runs
    shard = shard_of(tmp_path / "shard.tsv", sound, [0, 2], shard="0/2")
    result = pefts_process("compare-sound", "--standard", standard, "--sound", shard,
                           "--out-tsv", tmp_path / "c.tsv", "--out-md", tmp_path / "c.md")
    error_line(result, "certified different images: 4 vs 2 images")
    assert not (tmp_path / "c.tsv").exists()


@pytest.mark.parametrize("command", ["summarize", "plot", "compare-paper"])
def test_summaries_refuse_runs_of_other_images_even_mixed(run_cli, tmp_path, runs, command):
    standard, _ = runs
    shard = shard_of(tmp_path / "shard.tsv", standard, [1, 3], shard="1/2", method="prompt")
    params = tmp_path / "parameters.tsv"
    params.write_text("method\ttrainable\nlora\t81418\n")
    outs = {"summarize": ["--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md"],
            "plot": ["--out", tmp_path / "f.png"],
            "compare-paper": ["--dataset", "cifar10", "--parameters", params,
                              "--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md"]}
    code, _, err = run_cli(command, "--run", "lora", "0.25", standard,
                           "--run", "prompt", "0.25", shard, *outs[command], "--mixed")
    assert code != 0 and err.count("\n") == 1, err
    assert "certified different images: 2 vs 4 images, image 0 only in" in err
    assert not (tmp_path / "s.tsv").exists() and not (tmp_path / "f.png").exists()
