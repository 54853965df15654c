"""Outputs and the machine: no output replaces an input or another output, a shard has one
writer, and a full disk, a refused folder or a parent that is a file end in one line that
names the path, with nothing half-written."""

from __future__ import annotations

import errno
import fcntl
import os

import pandas as pd
import pytest

from pefts.certification.rows import CERTIFY_COLUMNS
from pefts.certification.shard_io import partial_path, run_shard, settings_line
from pefts.errors import PeftsError
from pefts.results import write_tsv

SETTINGS = {"dataset": "digits", "class_subset": None, "split": "test", "manifest": "abc",
            "skip": 1, "max": -1, "command": "certify", "n0": 8, "n": 100, "alpha": 0.001,
            "seed": 0, "sigma": 0.5}


def one_line(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def certified(path) -> str:
    frame = pd.DataFrame({"idx": [0, 1], "label": [1, 2], "predict": [1, 2], "radius": [0.3, 0.6],
                          "correct": [1, 1], "time": [0.1, 0.1]})
    write_tsv(frame, path, SETTINGS)
    return str(path)


def rows(todo):
    for i in todo:
        yield [i, 1, 1, 0.5, 1, 0.01, 8, 100, 99, 0.9]


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- outputs that collide ---------------------------------------------------------------------

@pytest.mark.parametrize("outs, needle", [
    (lambda t, a: ["--out-tsv", a, "--out-md", t / "s.md"], "--out-tsv"),
    (lambda t, a: ["--out-tsv", t / "s.tsv", "--out-md", a], "--out-md"),
    (lambda t, a: ["--out-tsv", t / "s.tsv", "--out-md", a + ".json"], "one of the command's inputs"),
    (lambda t, a: ["--out-tsv", t / "s.tsv", "--out-md", t / "s.tsv"], "the same file"),
])
def test_summarize_never_writes_over_its_inputs(run_cli, tmp_path, outs, needle):
    a = certified(tmp_path / "a.tsv")
    before = snapshot(tmp_path)
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, *outs(tmp_path, a))
    one_line(code, err, needle)
    assert snapshot(tmp_path) == before


def test_plot_and_merge_never_write_over_their_inputs(run_cli, tmp_path):
    a = certified(tmp_path / "a.tsv")
    before = snapshot(tmp_path)
    one_line(*run_cli("merge", a, "--out", a, "--force")[::2], "one of the command's inputs")
    one_line(*run_cli("plot-vs-sigma", "--summary", a, "--out", a)[::2], "inputs")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command, args", [
    ("certify", ["--model", "m", "--base", "b", "--data", "d", "--sigma", "0.5"]),
    ("merge", ["x.tsv"]),
    ("finetune", ["--data", "d", "--base", "b", "--method", "lora", "--sigma", "0.5"]),
    ("train-base", ["--data", "d", "--arch", "a", "--input-size", "8"]),
])
def test_out_needs_its_extension(run_cli, tmp_path, command, args):
    """A TSV's settings go to <out>.json and weights' metadata to <stem>.json: without the
    extension a shard's sidecar could land on a model's metadata."""
    code, _, err = run_cli(command, *args, "--out", tmp_path / "model")
    one_line(code, err, "--out", "must end in")


# --- one writer per shard; a stale partial ----------------------------------------------------

def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "s.tsv"
    with open(out.with_name(out.name + ".partial.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PeftsError, match="being written by another process"):
            run_shard(out, [0, 1], SETTINGS, CERTIFY_COLUMNS, rows)
    assert not out.exists() and not partial_path(out).exists()
    run_shard(out, [0, 1], SETTINGS, CERTIFY_COLUMNS, rows)  # free again: runs
    assert out.exists()


def test_force_discards_a_stale_partial_and_only_with_force(tmp_path):
    out = tmp_path / "s.tsv"
    stale = partial_path(out)
    stale.write_text(settings_line({**SETTINGS, "n": 7}) + "\n" + "\t".join(CERTIFY_COLUMNS) + "\n")
    with pytest.raises(PeftsError, match="--force to discard it"):
        run_shard(out, [0, 1], SETTINGS, CERTIFY_COLUMNS, rows)
    assert stale.exists()
    run_shard(out, [0, 1], SETTINGS, CERTIFY_COLUMNS, rows, force=True)
    assert len(pd.read_csv(out, sep="\t")) == 2 and not stale.exists()


@pytest.mark.parametrize("bad, needle", [
    ("0\t1\t1\t0.5\t1\t0.01\t8\t100\t99", "line 3: 9 fields"),
    ("0\t1\t1\tnan\t1\t0.01\t8\t100\t99\t0.9", "line 3: radius 'nan' is not finite"),
    ("0\t1\t7\t0.5\t1\t0.01\t8\t100\t99\t0.9", "line 3: correct 1 contradicts"),
])
def test_a_corrupt_partial_row_is_named(tmp_path, bad, needle):
    out = tmp_path / "s.tsv"
    partial = partial_path(out)
    good = "1\t1\t1\t0.5\t1\t0.01\t8\t100\t99\t0.9"
    partial.write_text("\n".join([settings_line(SETTINGS), "\t".join(CERTIFY_COLUMNS), bad, good,
                                  "2\t1\t1\t0.5"]))  # a torn tail is fine: dropped
    with pytest.raises(PeftsError, match=str(partial).replace(".", r"\.") + ", " + needle.split(":")[0]):
        run_shard(out, [0, 1, 2], SETTINGS, CERTIFY_COLUMNS, rows)
    assert not out.exists()


def test_a_torn_last_row_is_dropped_and_redone(tmp_path):
    out = tmp_path / "s.tsv"
    partial = partial_path(out)
    partial.write_text("\n".join([settings_line(SETTINGS), "\t".join(CERTIFY_COLUMNS),
                                  "0\t1\t1\t0.5\t1\t0.01\t8\t100\t99\t0.9", "1\t1\t1\t0."]))
    run_shard(out, [0, 1], SETTINGS, CERTIFY_COLUMNS, rows)
    assert pd.read_csv(out, sep="\t")["idx"].tolist() == [0, 1]


# --- the machine ------------------------------------------------------------------------------

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_and_leaves_the_old_output(run_cli, tmp_path, monkeypatch):
    a = certified(tmp_path / "a.tsv")
    (tmp_path / "s.tsv").write_text("old table\n")
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", full_disk)
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, "--out-tsv", tmp_path / "s.tsv",
                           "--out-md", tmp_path / "s.md")
    one_line(code, err, "No space left on device", str(tmp_path / "s.tsv"))
    assert snapshot(tmp_path) == before  # no temp file, the old table intact


def test_a_full_disk_while_certifying_keeps_the_finished_rows(tmp_path, monkeypatch):
    out = tmp_path / "s.tsv"
    real = os.fsync
    calls = {"n": 0}

    def fills_up(fd):
        calls["n"] += 1
        if calls["n"] > 4:
            full_disk()
        return real(fd)

    monkeypatch.setattr(os, "fsync", fills_up)
    with pytest.raises(OSError) as caught:
        run_shard(out, [0, 1, 2, 3], SETTINGS, CERTIFY_COLUMNS, rows)
    assert caught.value.filename == str(partial_path(out))
    monkeypatch.setattr(os, "fsync", real)
    assert not out.exists() and partial_path(out).exists()
    run_shard(out, [0, 1, 2, 3], SETTINGS, CERTIFY_COLUMNS, rows)  # resumes
    assert pd.read_csv(out, sep="\t")["idx"].tolist() == [0, 1, 2, 3]


def test_a_refused_folder_is_one_line(run_cli, tmp_path, monkeypatch):
    """A read-only folder (simulated: tests run as root, which chmod does not stop)."""
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(dir))

    a = certified(tmp_path / "a.tsv")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, "--out-tsv", tmp_path / "s.tsv",
                           "--out-md", tmp_path / "s.md")
    one_line(code, err, "Read-only file system", str(tmp_path))
    assert not (tmp_path / "s.tsv").exists()


def test_an_output_below_a_file_is_one_line(run_cli, tmp_path):
    a = certified(tmp_path / "a.tsv")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("summarize", "--run", "none", "0.5", a, "--out-tsv",
                           tmp_path / "file" / "s.tsv", "--out-md", tmp_path / "s.md")
    one_line(code, err, str(tmp_path / "file"))
    code, _, err = run_cli("merge", a, "--out", tmp_path / "file" / "m.tsv")
    one_line(code, err, str(tmp_path / "file"))


def test_a_second_certify_of_the_same_shard_is_one_line(run_cli, digits, tiny_base, none_model,
                                                         tmp_path):
    out = tmp_path / "s.tsv"
    with open(out.with_name(out.name + ".partial.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first writer, still running
        code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data",
                               digits, "--sigma", "0.5", "--n0", "4", "--n", "16", "--max", "2",
                               "--out", out, "--device", "cpu")
    one_line(code, err, str(out), "being written by another process")
    assert not out.exists()
