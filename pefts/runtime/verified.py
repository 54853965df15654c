"""The one gate every external weight passes before a library reads it (a pretrained
base, the coordinator's encoder, CLIP, a diffusion UNet): ``verified(path, what)``.

It refuses, in one line, a file that is missing (naming the command that fetches it), a
fetched file whose sha256 is no longer the one `pefts fetch-weights` recorded beside it,
and a file whose sha256 differs from the one a trained model recorded for it. It returns
the sha256, which the caller records in the metadata of what it trains.

Hashing a 350 MB file costs about a second, and every job of a run (each certification
shard) verifies the same base, so each file is hashed once per process (cached by path,
size, mtime and inode) and, for a large file, once at all: its digest is kept in a
sidecar ``<file>.sha256`` keyed by size, mtime_ns and inode, and recomputed when any of
them changed (``cached_digest``). Free of torch: the Snakefile imports pefts.study.weights.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.runtime.files import atomic_write_text, file_digest

FETCH_HINT = "`pefts fetch-weights --configfile <your config>` (on a host with internet)"

_DIGESTS: dict[tuple[str, int, int, int], str] = {}

# files smaller than this are hashed every time: milliseconds, and no sidecar litter
SIDECAR_MIN_BYTES = 8 << 20
SIDECAR_SUFFIX = ".sha256"
# a file modified less than this before its hash began may change again within the same
# mtime tick (filesystems keep mtime to a few ms); its digest is not kept (git's "racy" rule)
RACY_NS = 2_000_000_000


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{os.fspath(path)}{SIDECAR_SUFFIX}")


def _stat_key(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def cached_digest(path: Path, stat: os.stat_result) -> str:
    """sha256 of the file ``path``, read from its sidecar when size, mtime and inode are
    those the sidecar recorded, else computed (and recorded for a large file)."""
    sidecar = sidecar_path(path)
    key = _stat_key(stat)
    if stat.st_size >= SIDECAR_MIN_BYTES:
        try:
            kept = json.loads(sidecar.read_text())
            if isinstance(kept, dict) and {k: kept.get(k) for k in key} == key \
                    and isinstance(kept.get("sha256"), str) and len(kept["sha256"]) == 64:
                return kept["sha256"]
        except (OSError, ValueError):  # none yet, unreadable or corrupt: hash the file
            pass
    started = time.time_ns()
    digest = file_digest(path)
    if stat.st_size >= SIDECAR_MIN_BYTES and stat.st_mtime_ns < started - RACY_NS \
            and _stat_key(path.stat()) == key:  # unchanged while it was read
        try:
            atomic_write_text(sidecar, json.dumps({**key, "sha256": digest}) + "\n")
        except OSError:  # a read-only folder: the digest is still right, only not kept
            pass
    return digest


def sha256(path: str | Path) -> str:
    """sha256 of a weights file, or of a folder's files (relative path and content
    digest, sorted: the fingerprint of a diffusers model folder); once per process."""
    import hashlib

    root = Path(path)
    if root.is_dir():
        digest = hashlib.sha256()
        # sidecars are the cache, not the model: a folder hashes the same with or without
        for file in sorted(p for p in root.rglob("*")
                           if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX)):
            digest.update(f"{file.relative_to(root)}\0{sha256(file)}\n".encode())
        return digest.hexdigest()
    stat = root.stat()
    key = (os.path.realpath(root), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = cached_digest(root, stat)
    return _DIGESTS[key]


def fetch_record_path(path: str | Path) -> Path:
    """Where `pefts fetch-weights` records kind, name and sha256 of a fetched file."""
    return Path(f"{os.fspath(path).rstrip('/')}.json")


def fetch_record(path: str | Path) -> dict[str, Any] | None:
    """The fetch record of ``path``, None when it was not fetched (a user's own file)."""
    record_file = fetch_record_path(path)
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftsError(f"fetch record {record_file} is corrupt ({err}); fetch again with "
                         f"{FETCH_HINT} --force") from None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise PeftsError(f"fetch record {record_file} has no sha256; fetch again with "
                         f"{FETCH_HINT} --force")
    return record


def refetch_command(path: str | Path, record: dict[str, Any]) -> str:
    """The command that fetches ``path`` again: results/weights/KIND/NAME -> results."""
    if record.get("kind") and record.get("name"):
        results = Path(path).parents[2]
        return (f"`pefts fetch-weights --weight {record['kind']}:{record['name']} "
                f"--results {results} --force`")
    return f"{FETCH_HINT} --force"


def verified(path: str | Path | None, what: str, recorded: str | None = None,
             recorded_by: str | Path | None = None) -> str:
    """sha256 of the external weight ``path`` (``what`` names the option or key that gave
    it), refused unless it exists, matches its fetch record, and matches ``recorded``
    (the sha256 the model ``recorded_by`` was trained with) when given."""
    if not path:
        raise PeftsError(f"{what} is not set; fetch it with {FETCH_HINT}, or name a local file")
    path = Path(path)
    if not path.exists():
        raise PeftsError(f"{what} {path} does not exist; fetch it with {FETCH_HINT}, or name "
                         "a local file that does")
    actual = sha256(path)
    record = fetch_record(path)
    if record is not None and record["sha256"] != actual:
        raise PeftsError(f"{what} {path} changed since it was fetched: recorded sha256 "
                         f"{record['sha256']}, actual {actual}; refetch it with "
                         f"{refetch_command(path, record)}")
    if recorded is not None and recorded != actual:
        raise PeftsError(f"{what} {path} is not the file {recorded_by} was trained with: "
                         f"recorded sha256 {recorded}, actual {actual}; restore that file "
                         "(or fine-tune again on this one)")
    return actual


# the hyper-parameters that name local weights (the coordinator's encoder_file, the
# black box's clip_file, the diffusion UNet folder or checkpoint and its classifier_file);
# any other text (a timm name, a prompt template) is never a weight, even when a file or
# folder of that name happens to sit in the working directory
WEIGHT_KEYS = ("weights", "encoder_file", "clip_file", "classifier_file")


def weight_paths(hparams: dict[str, Any]) -> dict[str, str]:
    """The WEIGHT_KEYS that ``hparams`` sets to a path on disk."""
    return {key: value for key, value in sorted(hparams.items())
            if key in WEIGHT_KEYS and isinstance(value, str) and value and Path(value).exists()}


def recorded_weights(hparams: dict[str, Any]) -> dict[str, str]:
    """sha256 of every local weight ``hparams`` names, each verified: what a model's
    metadata records at training time."""
    return {key: verified(value, key) for key, value in weight_paths(hparams).items()}


def check_recorded(hparams: dict[str, Any], recorded: dict[str, str],
                   model: str | Path) -> None:
    """Before a trained model is rebuilt: every weight it recorded is still that file."""
    for key, digest in sorted(recorded.items()):
        value = hparams.get(key)
        if isinstance(value, str) and value:
            verified(value, key, recorded=digest, recorded_by=model)
