"""The sidecar cache of weight digests (pefts.runtime.verified.cached_digest): a file unchanged
since its digest was kept is not read again by the next process; a changed one is."""

from __future__ import annotations

import json
import os

import pytest

import pefts.runtime.verified as verified
from pefts.runtime.files import file_digest

OLD = 1_000_000_000_000_000_000  # an mtime long before the hash: not racy


@pytest.fixture
def hashed(monkeypatch):
    """Every file read for its digest; sidecars for any size; a fresh process's memory."""
    reads = []
    monkeypatch.setattr(verified, "file_digest", lambda p: reads.append(p) or file_digest(p))
    monkeypatch.setattr(verified, "SIDECAR_MIN_BYTES", 0)
    monkeypatch.setattr(verified, "_DIGESTS", {})
    return reads


def new_process(monkeypatch) -> None:
    monkeypatch.setattr(verified, "_DIGESTS", {})


def weights(path, content: bytes, mtime: int = OLD):
    path.write_bytes(content)
    os.utime(path, ns=(mtime, mtime))
    return path


def test_an_unchanged_file_is_hashed_once_across_processes(tmp_path, hashed, monkeypatch):
    file = weights(tmp_path / "w.safetensors", b"weights" * 100)
    first = verified.sha256(file)
    assert first == file_digest(file) and len(hashed) == 1
    assert json.loads(verified.sidecar_path(file).read_text())["sha256"] == first
    new_process(monkeypatch)
    assert verified.sha256(file) == first and len(hashed) == 1


@pytest.mark.parametrize("change", ["content, same size", "size", "replaced by rename"])
def test_a_changed_file_is_hashed_again(tmp_path, hashed, monkeypatch, change):
    file = weights(tmp_path / "w.safetensors", b"weights" * 100)
    first = verified.sha256(file)
    new_process(monkeypatch)
    if change == "content, same size":
        weights(file, b"WEIGHTS" * 100, OLD + 1)  # one nanosecond later
    elif change == "size":
        weights(file, b"weights" * 101)
    else:  # same size and mtime, another inode: e.g. a download renamed into place
        other = weights(tmp_path / "other", b"WEIGHTS" * 100)
        os.replace(other, file)
    assert verified.sha256(file) == file_digest(file) != first
    assert len(hashed) == 2


def test_a_corrupt_sidecar_is_ignored_and_rewritten(tmp_path, hashed, monkeypatch):
    file = weights(tmp_path / "w.safetensors", b"weights")
    first = verified.sha256(file)
    verified.sidecar_path(file).write_text("{not json")
    new_process(monkeypatch)
    assert verified.sha256(file) == first and len(hashed) == 2
    new_process(monkeypatch)
    assert verified.sha256(file) == first and len(hashed) == 2


def test_a_file_written_just_now_keeps_no_digest(tmp_path, hashed):
    """It may change again within the same mtime tick, which the key cannot see."""
    file = tmp_path / "w.safetensors"
    file.write_bytes(b"fresh")
    verified.sha256(file)
    assert not verified.sidecar_path(file).exists()


def test_small_files_get_no_sidecar(tmp_path, monkeypatch):
    monkeypatch.setattr(verified, "_DIGESTS", {})
    file = weights(tmp_path / "w.json", b"{}")
    verified.sha256(file)
    assert not verified.sidecar_path(file).exists()


def test_a_folder_hashes_the_same_with_its_sidecars(tmp_path, hashed, monkeypatch):
    folder = tmp_path / "unet"
    folder.mkdir()
    weights(folder / "a.bin", b"a" * 50)
    weights(folder / "b.bin", b"b" * 50)
    monkeypatch.setattr(verified, "SIDECAR_MIN_BYTES", 1 << 40)
    bare = verified.sha256(folder)
    monkeypatch.setattr(verified, "SIDECAR_MIN_BYTES", 0)
    new_process(monkeypatch)
    assert verified.sha256(folder) == bare
    assert verified.sidecar_path(folder / "a.bin").exists()
    new_process(monkeypatch)
    assert verified.sha256(folder) == bare


def test_a_fetched_file_changed_in_place_is_still_refused(tmp_path, hashed, monkeypatch):
    """The gate sees a change even after its digest was kept."""
    from pefts.errors import PeftsError

    file = weights(tmp_path / "w.safetensors", b"weights" * 100)
    verified.fetch_record_path(file).write_text(json.dumps({"sha256": verified.sha256(file)}))
    new_process(monkeypatch)
    verified.verified(file, "w")
    weights(file, b"WEIGHTS" * 100, OLD + 5)
    new_process(monkeypatch)
    with pytest.raises(PeftsError, match="changed since it was fetched"):
        verified.verified(file, "w")
