"""Every file pefts publishes goes through the one durable writer, `pefts.runtime.files.durable_path`.

The test records each rename the package makes and from where: a rename outside
`durable_path` (a second way to write durably) fails it, and so does any published file
of the small pipeline below (data, weights and their metadata, shard outputs and
partials, sidecars, tables, figures) that never arrived by such a rename (a writer that
writes in place, where a kill leaves half a file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pefts.runtime.files
from pefts.data import prepare
from pefts.finetuning.runs import finetune, train_base
from tests.conftest import TINY_SPEC

HELPER_CODE = pefts.runtime.files.durable_path.__wrapped__.__code__


@pytest.fixture
def renames(monkeypatch):
    """(destination, made inside durable_path) for every os.replace/os.rename."""
    seen: list[tuple[Path, bool]] = []
    real_replace = os.replace

    def recording(src, dst, *args, **kwargs):
        import sys
        seen.append((Path(dst).resolve(), sys._getframe(1).f_code is HELPER_CODE))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording)
    monkeypatch.setattr(os, "rename", recording)
    return seen


def test_every_published_file_arrives_through_the_one_writer(renames, run_cli, tmp_path,
                                                             monkeypatch):
    import pefts.finetuning.runs

    # training checkpoints are removed once the weights are out: keep them, so that a
    # checkpoint written in place is a published file that did not arrive by a rename
    monkeypatch.setattr(pefts.finetuning.runs, "discard", lambda out: None)
    prepare("digits", tmp_path / "data", seed=0)
    manifest = tmp_path / "data" / "manifest.json"
    base = tmp_path / "base.safetensors"
    train_base(manifest, base, TINY_SPEC, {"epochs": 1, "batch_size": 256, "lr": 3e-3},
               pretrained=False, pretrained_file=None, device="cpu")
    model = tmp_path / "none.safetensors"
    finetune(manifest, base, model, "none", 0.5, {}, {}, device="cpu")
    cert = tmp_path / "cert.tsv"
    code, _, err = run_cli("certify", "--model", model, "--base", base, "--data", manifest,
                           "--n0", "8", "--n", "32", "--batch", "32", "--skip", "40", "--max", "3",
                           "--sigma", "0.5", "--device", "cpu", "--out", cert)
    assert code == 0, err
    run = ["--run", "none", "0.5", cert]
    code, _, err = run_cli("summarize", *run, "--out-tsv", tmp_path / "summary.tsv",
                           "--out-md", tmp_path / "summary.md")
    assert code == 0, err
    code, _, err = run_cli("plot", *run, "--out", tmp_path / "figure_{sigma}.png")
    assert code == 0, err
    # plot_lines' figures (trainable parameters against accuracy, paper Figure 4)
    code, _, err = run_cli("parameters", "--run", "none", "0.5", model, "--summary",
                           tmp_path / "summary.tsv", "--out-tsv", tmp_path / "parameters.tsv",
                           "--out-md", tmp_path / "parameters.md", "--figure",
                           tmp_path / "parameters.png")
    assert code == 0, err

    outside = [dst for dst, inside in renames if not inside]
    assert not outside, f"renamed outside pefts.runtime.files.durable_path: {outside}"
    # a shard's writer lock is an empty file held by flock, not content a kill could tear
    published = {p.resolve() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".lock"}
    arrived = {dst for dst, _ in renames}
    assert published - arrived == set(), "written in place, not through durable_path"
    # the partial is replaced whole before rows are appended: it went through the helper too
    assert any(dst.name == "cert.tsv.partial" for dst in arrived)
    kinds = {p.suffix for p in published}
    assert {".safetensors", ".json", ".tsv", ".md", ".png", ".ckpt"} <= kinds
    assert (tmp_path / "parameters.png").resolve() in arrived


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), pefts.runtime.files.durable_path(target) as tmp:
        tmp.write_text("half a new ")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_a_durable_file_gets_the_usual_mode_not_a_private_one(tmp_path):
    mask = os.umask(0o022)
    try:
        pefts.runtime.files.atomic_write_text(tmp_path / "t.tsv", "x\n")
    finally:
        os.umask(mask)
    assert (tmp_path / "t.tsv").stat().st_mode & 0o777 == 0o644
