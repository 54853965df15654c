"""Sharding, resuming and merging give exactly the rows of one uninterrupted run."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from pefts.certification.results import merge_shards
from pefts.certification.rows import CERTIFY_COLUMNS, per_image
from pefts.certification.rows import certify_rows as REAL_CERTIFY_ROWS
from pefts.certification.selection import parse_shard, selected_indices, shard_indices
from pefts.certification.shard_io import partial_path, run_shard
from pefts.errors import PeftsError
from pefts.runtime.provenance import write_sidecar
from tests import killing

COMMON = ["--n0", "16", "--n", "64", "--batch", "64", "--skip", "3", "--max", "13",
          "--sigma", "0.5", "--device", "cpu"]


def certify(run_cli, digits, tiny_base, none_model, out, shard="0/1"):
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                           *COMMON, "--shard", shard, "--out", out)
    assert code == 0, err
    return out


def test_selection_takes_max_after_skip():
    assert selected_indices(10, 3, -1) == [0, 3, 6, 9]
    assert selected_indices(10, 3, 2) == [0, 3]
    assert shard_indices([0, 3, 6, 9, 12], 1, 2) == [3, 9]


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "2/0", ""])
def test_malformed_or_out_of_range_shards_are_refused(text):
    with pytest.raises(PeftsError, match="shard"):
        parse_shard(text)


def test_one_shard_equals_three_merged(run_cli, digits, tiny_base, none_model, tmp_path):
    whole = pd.read_csv(certify(run_cli, digits, tiny_base, none_model, tmp_path / "all.tsv"), sep="\t")
    parts = [certify(run_cli, digits, tiny_base, none_model, tmp_path / f"{k}.tsv", f"{k}/3")
             for k in (2, 0, 1)]  # order does not matter
    code, _, err = run_cli("merge", *parts, "--out", tmp_path / "merged.tsv", "--data", digits,
                           "--skip", "3", "--max", "13")
    assert code == 0, err
    merged = pd.read_csv(tmp_path / "merged.tsv", sep="\t")
    assert list(whole.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(whole) == 13
    for column in ("idx", "label", "predict", "radius", "nA", "pA_lower"):
        assert merged[column].tolist() == whole[column].tolist()


def test_merge_names_a_missing_or_repeated_image(run_cli, digits, tiny_base, none_model, tmp_path):
    parts = [certify(run_cli, digits, tiny_base, none_model, tmp_path / f"{k}.tsv", f"{k}/2")
             for k in (0, 1)]
    out = tmp_path / "merged.tsv"
    code, _, err = run_cli("merge", parts[0], "--out", out, "--data", digits, "--skip", "3",
                           "--max", "13")
    assert code != 0 and "image 3 is missing" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("merge", parts[0], parts[0], parts[1], "--out", out)
    assert code != 0 and "image 0 appears more than once" in err
    assert not out.exists()


class Interrupted(Exception):
    pass


def fake_rows(stop_after=None):
    calls = []

    def row(x, label, idx):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupted
        calls.append(idx)
        return [idx, label, label, repr(0.1 * idx), 1, "0.0", 1, 1, 1, "0.9"]

    rows = per_image(Items(), row)
    rows.calls = calls
    return rows


class Items:
    def __getitem__(self, idx):
        return None, idx % 10


def test_killed_shard_resumes_without_losing_or_repeating_rows(tmp_path):
    out, settings, indices = tmp_path / "shard.tsv", {"model": "abc"}, list(range(0, 40, 2))
    reference = run_shard(tmp_path / "ref.tsv", indices, settings, CERTIFY_COLUMNS,
                          fake_rows()).read_text()
    first = fake_rows(stop_after=7)
    with pytest.raises(Interrupted):
        run_shard(out, indices, settings, CERTIFY_COLUMNS, first)
    assert not out.exists() and partial_path(out).exists()
    with open(partial_path(out), "a") as handle:  # a row torn by the kill
        handle.write("14\t4\t4\t1.4")
    second = fake_rows()
    run_shard(out, indices, settings, CERTIFY_COLUMNS, second)
    assert second.calls == indices[7:]  # resumed after the 7 finished rows
    assert out.read_text() == reference
    assert not partial_path(out).exists()


def test_partial_of_other_settings_is_not_resumed_nor_overwritten(tmp_path):
    out = tmp_path / "shard.tsv"
    with pytest.raises(Interrupted):
        run_shard(out, [0, 1, 2], {"model": "a"}, CERTIFY_COLUMNS, fake_rows(stop_after=1))
    before = partial_path(out).read_text()
    with pytest.raises(PeftsError, match="other settings"):
        run_shard(out, [0, 1, 2], {"model": "b"}, CERTIFY_COLUMNS, fake_rows())
    assert partial_path(out).read_text() == before


def shard_file(path, text: str, **settings):
    """A shard TSV with its settings file, as `pefts certify` leaves it."""
    path.write_text(text)
    write_sidecar(path, {"model": "m", "sigma": 0.5, **settings}, text)
    return path


HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def test_merge_sorts_and_keeps_full_precision(tmp_path):
    a = shard_file(tmp_path / "a.tsv", HEADER + "4\t1\t1\t0.12345678901234568\t1\t0.1\n", shard="0/2")
    b = shard_file(tmp_path / "b.tsv", HEADER + "0\t2\t-1\t0.0\t0\t0.1\n", shard="1/2")
    merged, settings, parts = merge_shards([a, b])
    assert settings == {"model": "m", "sigma": 0.5}
    assert [p["shard"] for p in parts] == ["0/2", "1/2"]
    assert merged["idx"].tolist() == [0, 4]
    assert merged["radius"].iloc[1] == 0.12345678901234568


@pytest.fixture(scope="module")
def none_quarter(digits, tiny_base, tmp_path_factory):
    """The untuned model at sigma 0.25: a second sigma of the same run."""
    from pefts.finetuning.runs import finetune

    out = tmp_path_factory.mktemp("none_quarter") / "model.safetensors"
    finetune(digits, tiny_base, out, "none", 0.25, {}, {}, device="cpu")
    return out


PACK_COMMON = [c for c in COMMON if c not in ("--sigma", "0.5")]


def certify_packed(run_cli, tiny_base, digits, jobs, *extra):
    code, _, err = run_cli("certify-packed", "--base", tiny_base, "--data", digits, *PACK_COMMON,
                           *[w for job in jobs for w in ("--job", *job)], *extra)
    return code, err


def rows_and_settings(out):
    """A shard's rows without their timings, and the settings its sidecar records."""
    from pefts.runtime.provenance import read_sidecar

    return pd.read_csv(out, sep="\t").drop(columns="time"), read_sidecar(out)["settings"]


def test_a_packed_job_writes_what_separate_certify_calls_write(run_cli, digits, tiny_base,
                                                               none_model, none_quarter, tmp_path):
    """One process, two sigmas: each output has the rows and settings of its own
    `pefts certify` (same seed, same noise), so the two are interchangeable on disk."""
    alone = {}
    for sigma, model in (("0.25", none_quarter), ("0.5", none_model)):
        out = tmp_path / "alone" / f"sigma{sigma}" / "shards" / "0-of-1.tsv"
        out.parent.mkdir(parents=True)
        code, _, err = run_cli("certify", "--model", model, "--base", tiny_base, "--data", digits,
                               *PACK_COMMON, "--sigma", sigma, "--out", out)
        assert code == 0, err
        alone[sigma] = rows_and_settings(out)
    packed = {s: tmp_path / "packed" / f"sigma{s}" / "shards" / "0-of-1.tsv" for s in alone}
    code, err = certify_packed(run_cli, tiny_base, digits,
                               [("0.25", none_quarter, packed["0.25"]),
                                ("0.5", none_model, packed["0.5"])])
    assert code == 0, err
    for sigma, out in packed.items():
        rows, settings = rows_and_settings(out)
        pd.testing.assert_frame_equal(rows, alone[sigma][0])
        assert settings == alone[sigma][1]
        assert not partial_path(out).exists()
    assert len(rows) == 13 and rows_and_settings(packed["0.25"])[0]["radius"].tolist() != (
        rows["radius"].tolist())  # two sigmas, two sets of rows
    # finished: run again it refuses, as certify does, until --force
    code, err = certify_packed(run_cli, tiny_base, digits, [("0.5", none_model, packed["0.5"])])
    assert code != 0 and "already exists; pass --force" in err


def interrupting(monkeypatch, after: int, calls: list[int]):
    """Make the certifier's rows stop (an exception, as a kill would) after ``after``
    rows in all; ``calls`` gets how many rows each model computed."""
    from pefts.certification import rows as rows_module

    real = REAL_CERTIFY_ROWS  # not an earlier call's wrapper
    done = [0]

    def certify_rows(*args, **kwargs):
        source = real(*args, **kwargs)
        calls.append(0)

        def rows(todo):
            for row in source(todo):
                if done[0] == after:
                    raise Interrupted
                done[0] += 1
                calls[-1] += 1
                yield row
        return rows

    monkeypatch.setattr(rows_module, "certify_rows", certify_rows)


def test_a_killed_packed_job_resumes_each_sigma_from_its_rows(run_cli, digits, tiny_base,
                                                              none_model, none_quarter, tmp_path,
                                                              monkeypatch):
    """Interrupted in its second sigma, and every output Snakemake declared deleted (what
    it does to a failed job's outputs): the rerun computes only the rows not yet done,
    and ends with the uninterrupted job's rows."""
    jobs = lambda folder: [("0.25", none_quarter, tmp_path / folder / "a" / "0-of-1.tsv"),  # noqa: E731
                           ("0.5", none_model, tmp_path / folder / "b" / "0-of-1.tsv")]
    code, err = certify_packed(run_cli, tiny_base, digits, jobs("whole"))
    assert code == 0, err
    first = []
    interrupting(monkeypatch, 13 + 5, first)
    with pytest.raises(Interrupted):
        certify_packed(run_cli, tiny_base, digits, jobs("killed"))
    assert first == [13, 5]
    (a, _, a_out), (_, _, b_out) = jobs("killed")
    # the first sigma is finished and keeps its partial until the whole job is done
    assert a_out.exists() and partial_path(a_out).exists() and not b_out.exists()
    a_out.unlink()  # Snakemake removes the outputs of a failed job
    second = []
    interrupting(monkeypatch, -1, second)
    code, err = certify_packed(run_cli, tiny_base, digits, jobs("killed"), "--force")
    assert code == 0, err
    assert second == [0, 13 - 5]  # nothing again of the first sigma, the rest of the second
    for (_, _, whole), (_, _, resumed) in zip(jobs("whole"), jobs("killed"), strict=True):
        pd.testing.assert_frame_equal(rows_and_settings(resumed)[0], rows_and_settings(whole)[0])
        assert rows_and_settings(resumed)[1] == rows_and_settings(whole)[1]
        assert not partial_path(resumed).exists()


def test_a_packed_partial_resumes_under_a_single_certify(run_cli, digits, tiny_base, none_model,
                                                        none_quarter, tmp_path, monkeypatch):
    """Packing is no layout: a (run, sigma) left half done by a packed job and certified
    alone afterwards (a config whose packs changed) resumes from the same partial."""
    out = tmp_path / "b" / "0-of-1.tsv"
    calls = []
    interrupting(monkeypatch, 4, calls)
    with pytest.raises(Interrupted):
        certify_packed(run_cli, tiny_base, digits, [("0.5", none_model, out)])
    calls.clear()
    interrupting(monkeypatch, -1, calls)
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                           *COMMON, "--out", out, "--force")
    assert code == 0, err
    assert calls == [13 - 4]


@pytest.mark.slow
def test_a_compiled_packed_job_certifies_each_model_on_its_own_weights(
        digits, tiny_base, tmp_path):
    """--compile in a packed job: the first model compiles, the next (the same
    architecture, other weights) runs the same compiled code on its own weights; each
    sigma's rows are those of its own compiled certify in a process of its own."""
    from pefts.finetuning.runs import finetune

    full = {}
    for sigma in ("0.25", "0.5"):  # one run's two sigmas: one architecture, two sets of weights
        full[sigma] = tmp_path / f"full{sigma}" / "model.safetensors"
        finetune(digits, tiny_base, full[sigma], "full", float(sigma), {},
                 {"epochs": 1, "batch_size": 128}, device="cpu")
    common = ["--base", str(tiny_base), "--data", str(digits), *PACK_COMMON, "--precision",
              "bf16", "--compile", "--compile-cache", str(tmp_path / "cache")]
    alone = {}
    for sigma, model in full.items():
        out = tmp_path / "alone" / f"{sigma}.tsv"
        killing.run([sys.executable, "-m", "pefts", "certify", "--model", str(model),
                     "--sigma", sigma, *common], out)
        alone[sigma] = rows_and_settings(out)
    packed = {s: tmp_path / "packed" / f"{s}.tsv" for s in alone}
    done = subprocess.run([sys.executable, "-m", "pefts", "certify-packed", "--job", "0.25",
                           str(full["0.25"]), str(packed["0.25"]), "--job", "0.5",
                           str(full["0.5"]), str(packed["0.5"]), *common],
                          capture_output=True, text=True,
                          env={**killing.ENV, "TORCH_LOGS": "recompiles"})
    assert done.returncode == 0, done.stderr
    # the second model reused the first's code: it recompiled only for new batch sizes
    # (which a process of its own does too), never for its module or parameters
    reasons = [line.split("- ", 1)[1] for line in done.stderr.splitlines()
               if "[__recompiles]" in line and "- " in line]
    assert not [r for r in reasons if "self" in r.split(" # ")[0]], reasons
    for sigma, out in packed.items():
        rows, settings = rows_and_settings(out)
        pd.testing.assert_frame_equal(rows, alone[sigma][0])
        assert settings == alone[sigma][1] and settings["compile"] is True
    assert alone["0.25"][1]["model"] != alone["0.5"][1]["model"]


def test_a_packed_job_refuses_one_output_twice(run_cli, digits, tiny_base, none_model, tmp_path):
    out = tmp_path / "0-of-1.tsv"
    code, err = certify_packed(run_cli, tiny_base, digits,
                               [("0.5", none_model, out), ("0.25", none_model, out)])
    assert code != 0 and "is given twice" in err and not out.exists()


@pytest.mark.slow
def test_certify_killed_for_real_resumes_to_the_same_rows(digits, tiny_base, none_model, tmp_path):
    """SIGKILL a running `pefts certify`, run it again: same rows as an uninterrupted run."""
    args = [sys.executable, "-m", "pefts", "certify", "--model", str(none_model), "--base",
            str(tiny_base), "--data", str(digits), "--sigma", "0.5", "--n0", "16", "--n", "4000",
            "--batch", "1000", "--skip", "20", "--max", "12", "--device", "cpu"]
    whole, out = tmp_path / "whole.tsv", tmp_path / "killed.tsv"
    killing.run(args, whole)
    killing.kill_after_rows(args, out, timeout=120)
    killing.run(args, out)

    a, b = pd.read_csv(whole, sep="\t"), pd.read_csv(out, sep="\t")
    assert a["idx"].tolist() == b["idx"].tolist() == list(range(0, 240, 20))
    for column in ("predict", "radius", "nA", "pA_lower"):
        assert a[column].tolist() == b[column].tolist()
