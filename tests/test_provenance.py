"""Finished outputs are never replaced silently, a kill never loses a finished row, and
rows of different runs, data or bases are never mixed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from pefts.certification.rows import CERTIFY_COLUMNS
from pefts.certification.shard_io import partial_path, run_shard
from pefts.finetuning.runs import train_base
from pefts.runtime.provenance import sidecar_path

from .conftest import TINY_SPEC
from .test_cli_errors import one_line_error
from .test_shards import Interrupted, fake_rows

SMALL = ["--n", "32", "--batch", "32", "--skip", "7", "--device", "cpu"]


@pytest.fixture
def sample(run_cli, digits, tiny_base, none_model):
    """Run `pefts certify` (or predict) on a few images; returns (code, err)."""
    def run(out, *extra, command="certify", sigma="0.5", max_count="4", base=tiny_base):
        code, _, err = run_cli(command, "--model", none_model, "--base", base, "--data", digits,
                               "--sigma", sigma, "--max", max_count, *SMALL, "--out", out, *extra,
                               *(["--n0", "8"] if command == "certify" else []))
        return code, err
    return run


# --- overwrites ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["certify", "predict"])
def test_a_finished_output_is_replaced_only_with_force(sample, tmp_path, command):
    out = tmp_path / "out.tsv"
    assert sample(out, command=command)[0] == 0
    finished = out.read_text()
    out.write_text(finished + "# precious\n")
    code, err = sample(out, command=command)
    one_line_error(code, err, "already exists; pass --force")
    assert out.read_text() == finished + "# precious\n"
    assert sample(out, "--force", command=command)[0] == 0
    assert pd.read_csv(out, sep="\t").drop(columns="time").equals(
        pd.read_csv(io.StringIO(finished), sep="\t").drop(columns="time"))


# --- a kill at any moment of a shard ---------------------------------------------------------

KILLER = r'''
import os, signal, sys
from pefts.runtime import files
from pefts.certification import shard_io

kill_at, count = int(sys.argv[2]), [0]
real_open = open


class Killed:
    """A file whose kill_at-th write (counting all files) writes half its text, reaches
    the disk, and SIGKILLs the process."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, text):
        count[0] += 1
        if count[0] == kill_at:
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return self.handle.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def killing_open(path, mode="r", *args, **kwargs):
    handle = real_open(path, mode, *args, **kwargs)
    return Killed(handle) if ("w" in mode or "a" in mode) else handle


# every file a shard writes: its rows (shard_io) and whatever the one durable writer writes
shard_io.open = files.open = killing_open


def rows(todo):
    for idx in todo:
        yield [idx, idx % 10, idx % 10, repr(0.1 * idx), 1, "0.0", 1, 1, 1, "0.9"]


columns = ["idx", "label", "predict", "radius", "correct", "time", "n0", "n", "nA", "pA_lower"]
shard_io.run_shard(sys.argv[1], list(range(12)), {"model": "abc"}, columns, rows)
'''


@pytest.mark.slow  # a real SIGKILL at each of its writes: a process per kill
def test_a_kill_at_any_write_loses_no_finished_row(tmp_path):
    """Five rows are finished; the resumed run is SIGKILLed at its k-th write, for every
    k (the partial's rewrite, each appended row, the output): the five rows always
    survive, and a rerun gives exactly the uninterrupted output."""
    settings, indices = {"model": "abc"}, list(range(12))
    reference = run_shard(tmp_path / "ref.tsv", indices, settings, CERTIFY_COLUMNS,
                          fake_rows()).read_text()
    start = tmp_path / "start" / "shard.tsv"
    start.parent.mkdir()
    with pytest.raises(Interrupted):
        run_shard(start, indices, settings, CERTIFY_COLUMNS, fake_rows(stop_after=5))
    finished = partial_path(start).read_text().split("\n")[2:7]
    assert len(finished) == 5
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # 7 writes rewrite the partial, 7 append rows, 13 publish the output: kill at each
    for k in range(1, 100):
        folder = tmp_path / f"kill{k}"
        shutil.copytree(start.parent, folder)
        out = folder / "shard.tsv"
        result = subprocess.run([sys.executable, str(script), str(out), str(k)], env=env,
                                capture_output=True, text=True)
        if result.returncode == 0:  # k is past the last write
            break
        assert result.returncode == -9, (k, result.stderr[-2000:])
        survived = partial_path(out).read_text().split("\n")
        missing = [row for row in finished if row not in survived]
        assert not missing, f"killed at write {k}: lost {missing}"
        run_shard(out, indices, settings, CERTIFY_COLUMNS, fake_rows())
        assert out.read_text() == reference
    assert k > 20, f"only {k - 1} writes: the kill hook missed the shard's files"


# --- provenance of rows ----------------------------------------------------------------------

def test_settings_identify_data_and_model(sample, tmp_path, digits, none_model, tiny_base):
    from pefts.runtime.artifacts import file_digest

    out = tmp_path / "out.tsv"
    assert sample(out)[0] == 0
    settings = json.loads(sidecar_path(out).read_text())["settings"]
    assert settings["dataset"] == "digits" and settings["split"] == "test"
    assert settings["class_subset"] is None and settings["method"] == "none"
    assert settings["manifest"] == file_digest(digits)
    assert settings["model"] == file_digest(none_model)
    assert settings["base"] == file_digest(tiny_base)


def test_merge_carries_settings_and_keeps_cohens_format(sample, run_cli, tmp_path):
    parts = [tmp_path / f"{k}.tsv" for k in (0, 1)]
    for k, part in enumerate(parts):
        assert sample(part, "--shard", f"{k}/2")[0] == 0
    merged = tmp_path / "merged.tsv"
    code, _, err = run_cli("merge", *parts, "--out", merged)
    assert code == 0, err
    frame = pd.read_csv(merged, sep="\t")
    assert list(frame.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    record = json.loads(sidecar_path(merged).read_text())
    shard_settings = json.loads(sidecar_path(parts[0]).read_text())["settings"]
    assert record["settings"] == {k: v for k, v in shard_settings.items()
                                  if k not in ("shard", "device")}
    assert [s["shard"] for s in record["shards"]] == ["0/2", "1/2"]


def test_merge_refuses_shards_of_different_runs(sample, run_cli, tmp_path):
    a, b, out = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "m.tsv"
    assert sample(a, "--shard", "0/2")[0] == 0
    assert sample(b, "--shard", "1/2", sigma="0.25")[0] == 0
    code, _, err = run_cli("merge", a, b, "--out", out)
    one_line_error(code, err, "shards of different runs: sigma")
    assert not out.exists()


def test_merge_refuses_a_shard_changed_after_it_was_written(sample, run_cli, tmp_path):
    a, b, out = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "m.tsv"
    assert sample(a, "--shard", "0/2")[0] == 0
    assert sample(b, "--shard", "1/2")[0] == 0
    header, first, *rest = b.read_text().splitlines()
    fields = first.split("\t")
    fields[5] = "9.5"  # the time column: any edit at all
    b.write_text("\n".join([header, "\t".join(fields), *rest]) + "\n")
    code, _, err = run_cli("merge", a, b, "--out", out)
    one_line_error(code, err, "was changed after")


def test_predict_shards_merge(sample, run_cli, tmp_path):
    parts = [tmp_path / f"{k}.tsv" for k in (0, 1)]
    for k, part in enumerate(parts):
        assert sample(part, "--shard", f"{k}/2", command="predict")[0] == 0
    merged = tmp_path / "merged.tsv"
    code, _, err = run_cli("merge", *parts, "--out", merged)
    assert code == 0, err
    frame = pd.read_csv(merged, sep="\t")
    assert list(frame.columns[:5]) == ["idx", "label", "predict", "correct", "time"]
    assert frame["idx"].tolist() == [0, 7, 14, 21]


@pytest.mark.parametrize("row, needle", [
    ("3\t1\t1\t0.5\t1", "line 3: 5 fields, the header has 6"),
    ("3\t1\tx\t0.5\t0\t0.1", "line 3: predict 'x' is not an integer"),
    ("3\t1\t1\tnan\t1\t0.1", "line 3: radius 'nan' is not finite"),
    ("3\t1\t2\t0.5\t1\t0.1", "line 3: correct 1 contradicts predict 2 and label 1"),
    ("3\t1\t-1\t0.5\t0\t0.1", "line 3: an abstention with radius 0.5"),
])
def test_a_malformed_row_is_named_by_file_and_line(run_cli, tmp_path, row, needle):
    from pefts.runtime.provenance import write_sidecar

    bad = tmp_path / "bad.tsv"
    text = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.25\t1\t0.1\n" + row + "\n"
    bad.write_text(text)
    write_sidecar(bad, {"sigma": 0.5}, text)
    code, _, err = run_cli("merge", bad, "--out", tmp_path / "m.tsv")
    one_line_error(code, err, f"{bad}, {needle}")
    code, _, err = run_cli("summarize", "--run", "x", "0.5", bad, "--out-tsv", tmp_path / "s.tsv",
                           "--out-md", tmp_path / "s.md")
    one_line_error(code, err, f"{bad}, {needle}")


def test_summary_refuses_runs_on_other_images_or_sigma(sample, run_cli, tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert sample(a)[0] == 0
    assert sample(b, max_count="3")[0] == 0
    table = ["--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md"]
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, "--run", "none2", "0.5", b, *table)
    one_line_error(code, err, "different test images: max")
    code, _, err = run_cli("summarize", "--run", "none", "0.25", a, *table)
    one_line_error(code, err, "certified at sigma 0.5, labelled 0.25")
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, *table)
    assert code == 0, err


def test_a_model_is_refused_on_another_base(sample, digits, tmp_path):
    other = tmp_path / "other_base.safetensors"
    train_base(digits, other, TINY_SPEC, {"epochs": 0, "seed": 1}, False, None, "cpu")
    out = tmp_path / "out.tsv"
    code, err = sample(out, base=other)
    one_line_error(code, err, "was fine-tuned on another base")
    assert not out.exists()
