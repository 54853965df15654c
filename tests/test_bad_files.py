"""Outputs, files and the machine: no output replaces an input or another output, a shard
has one writer, and a full disk, a refused folder, a parent that is a file, an output
under a symbolic link loop, or a file of the wrong content (an image that is a
decompression bomb, weights beside another run's metadata, a TSV or config that is not
UTF-8, a ViT fed another input size) end in one line that names the path, with nothing
half-written. The file-side cases run as real `pefts` processes."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pefts.certification.results import write_tsv
from pefts.certification.rows import CERTIFY_COLUMNS
from pefts.certification.shard_io import partial_path, run_shard, settings_line
from pefts.errors import PeftsError

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


ROOT = Path(__file__).resolve().parents[1]


def pefts_process(*args, prelude: str = "") -> tuple[int, str, str]:
    """`pefts ARGS...` in a process of its own (``prelude``: Python run first, e.g. an
    audit hook); returns (exit code, stdout, stderr)."""
    code = f"import sys\n{prelude}\nfrom pefts.cli import run\nsys.argv[0] = 'pefts'\nrun()\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                            text=True, env=env, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


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


def test_a_full_disk_under_safetensors_is_the_os_error_naming_the_weights(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error with "(os error 28)" in the text;
    it reaches the command line as ENOSPC naming the file, and the old weights stay."""
    import torch

    import pefts.runtime.artifacts
    from pefts.runtime.artifacts import save_artifact

    weights = tmp_path / "model.safetensors"
    save_artifact(weights, {"w": torch.zeros(3)}, {"kind": "base"})
    before = snapshot(tmp_path)

    def rust_full_disk(*args, **kwargs):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(pefts.runtime.artifacts, "save_file", rust_full_disk)
    with pytest.raises(OSError) as caught:
        save_artifact(weights, {"w": torch.ones(3)}, {"kind": "base"})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(weights)
    assert snapshot(tmp_path) == before


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


# --- files of the wrong content, each in a real `pefts` process -------------------------------

def bomb_png(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side pixels, with almost no data: Pillow reads the
    size when it opens the file, so no test has to hold the decoded image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    return path


# above twice Pillow's limit (an error) and above it (a warning)
# the larger bomb in a process of its own (the wiring); the smaller in-process, under
# pytest's warnings capture, which resets the filters a module sets at import: Pillow's
# warning must still be refused (it was not, before load_image set its own)
@pytest.mark.parametrize("side", [20000, 10000])
def test_a_decompression_bomb_in_an_image_folder_is_one_line(tmp_path, side, run_cli):
    from tests.test_bad_data import image_folder

    root = image_folder(tmp_path / "images")
    bomb = bomb_png(root / "train" / "a" / "bomb.png", side)
    run = pefts_process if side == 20000 else run_cli
    code, _, err = run("prepare", "--dataset", "imagefolder", "--root", root,
                       "--out", tmp_path / "p", "--images", '{"crop": 8}')
    one_line(code, err, str(bomb), "too large to decode safely", f"{side * side} pixels")
    assert not (tmp_path / "p" / "manifest.json").exists()


@pytest.mark.parametrize("older", [False, True])
def test_a_base_of_another_architecture_beside_its_old_metadata(digits, tiny_base, tmp_path, older,
                                                                run_cli):
    """Weights replaced by another architecture's, the metadata left: the sha256 the
    metadata records refuses it; metadata of an older pefts (no sha256) is refused by the
    tensors' shapes."""
    import json

    from pefts.finetuning.runs import train_base
    from pefts.runtime.artifacts import meta_path
    from tests.conftest import TINY_SPEC

    wider = {**TINY_SPEC, "model_kwargs": {**TINY_SPEC["model_kwargs"], "embed_dim": 64}}
    other = tmp_path / "other" / "base.safetensors"
    train_base(digits, other, wider, {"epochs": 0}, False, None, device="cpu", eval_max=8)
    base = tmp_path / "base.safetensors"
    base.write_bytes(other.read_bytes())
    meta = json.loads(meta_path(tiny_base).read_text())
    if older:
        del meta["weights_sha256"]
    meta_path(base).write_text(json.dumps(meta))
    out = tmp_path / "lora.safetensors"
    # the recorded digest's refusal in a process of its own, the shapes' in-process
    code, _, err = (run_cli if older else pefts_process)(
        "finetune", "--data", digits, "--base", base, "--method", "lora", "--sigma", "0.5",
        "--out", out, "--device", "cpu")
    one_line(code, err, str(base), "of another shape" if older else "recorded sha256")
    assert not out.exists()


def test_a_certification_tsv_with_a_byte_that_is_not_utf8(tmp_path):
    a = Path(certified(tmp_path / "a.tsv"))
    a.write_bytes(a.read_bytes().replace(b"\t0.", b"\t0.\xff", 1))  # in the first radius
    before = snapshot(tmp_path)
    for args in (["merge", a, "--out", tmp_path / "m.tsv"],
                 ["summarize", "--run", "none", "0.5", a, "--out-tsv", tmp_path / "s.tsv",
                  "--out-md", tmp_path / "s.md"]):
        one_line(*pefts_process(*args)[::2], str(a), "byte 0xff on line 2 is not UTF-8")
    assert snapshot(tmp_path) == before


def test_a_vit_built_for_224_fed_8_is_one_line(digits, tmp_path):
    out = tmp_path / "b.safetensors"
    code, _, err = pefts_process("train-base", "--data", digits, "--out", out, "--arch",
                                 "vit_tiny_patch16_224", "--input-size", "8", "--train",
                                 '{"epochs": 1}', "--device", "cpu")
    one_line(code, err, "vit_tiny_patch16_224 is built for 224x224 inputs", "8x8")
    assert not out.exists()


def test_an_output_under_a_symlink_loop_is_one_line(tmp_path):
    a = certified(tmp_path / "a.tsv")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for args in (["merge", a, "--out", loop / "x" / "m.tsv"],
                 ["summarize", "--run", "none", "0.5", a, "--out-tsv", loop / "s.tsv",
                  "--out-md", tmp_path / "s.md"]):
        one_line(*pefts_process(*args)[::2], str(loop), "symbolic link loop")
    assert not (tmp_path / "s.md").exists()


@pytest.mark.parametrize("command", ["plan", "fetch-weights"])
def test_a_config_overlay_that_is_not_utf8(tmp_path, command):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"sigmas: [0.5]\nresults: \"r\xff\"\n")
    one_line(*pefts_process(command, "--configfile", bad)[::2], str(bad), "cannot read config")


def test_benchmark_given_a_file_where_a_diffusers_folder_is_expected_says_so(run_cli, tmp_path):
    """It said the folder does not exist; the file is there."""
    unet = tmp_path / "unet_small.pt"
    unet.write_bytes(b"weights")
    code, _, err = run_cli("benchmark", "--diffusion", unet, "--n", "10", "--repeats", "1")
    assert code == 1 and err.count("\n") == 1, err
    assert f"error: --diffusion {unet} is a file: without --diffusion-release it must be a " \
           "diffusers folder" in err and "does not exist" not in err
    from pefts.methods.diffusion import unet_folder

    with pytest.raises(PeftsError, match="is a file, not a diffusers folder .*release"):
        unet_folder(unet)
