"""Which run a certification TSV came from: its settings, in a JSON file beside it.

A shard's ``<out>.json`` holds the settings line of its partial (data: dataset, class
subset, split, manifest digest; model: method, weights and base digests; sampling) and
the sha256 of the TSV it describes, so a sidecar never vouches for another file. Cohen's
TSV stays exactly his format (six columns first, no comment lines): ``pd.read_csv(path,
sep='\\t')`` and his analysis scripts read it unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.files import atomic_write_text

# settings that may differ between the shards of one run
PER_SHARD = ("shard", "device")
# settings that must agree between runs compared in one summary: the same test images
DATA_KEYS = ("dataset", "class_subset", "split", "manifest", "skip", "max")


def sidecar_path(tsv: str | Path) -> Path:
    tsv = Path(tsv)
    return tsv.with_name(tsv.name + ".json")


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_sidecar(tsv: str | Path, settings: dict[str, Any], text: str, **extra: Any) -> None:
    record = {"settings": settings, "tsv_sha256": text_digest(text), **extra}
    atomic_write_text(sidecar_path(tsv), json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_sidecar(tsv: str | Path) -> dict[str, Any]:
    """The settings record of ``tsv``; refused when missing, corrupt or another file's."""
    path = sidecar_path(tsv)
    if not path.is_file():
        raise PeftsError(f"{tsv} has no settings file {path.name}: cannot tell which run "
                         "its rows come from (was it written by `pefts certify`/`merge`?)")
    try:
        record = json.loads(path.read_text())
        settings = record["settings"]
        digest = record["tsv_sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise PeftsError(f"settings file {path} is corrupt: {err!r}") from None
    if not isinstance(settings, dict):
        raise PeftsError(f"settings file {path} is corrupt: settings is not an object")
    if digest != text_digest(Path(tsv).read_text()):
        raise PeftsError(f"{tsv} was changed after {path.name} was written "
                         "(its rows are not the ones the settings describe)")
    return record


def shared_settings(paths: list[str | Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Settings common to all shards (refused unless they agree on everything but
    ``PER_SHARD``) and each shard's own part."""
    common: dict[str, Any] | None = None
    first = None
    own = []
    for path in paths:
        settings = dict(read_sidecar(path)["settings"])
        own.append({"file": str(path), **{k: settings.pop(k, None) for k in PER_SHARD}})
        if common is None:
            common, first = settings, path
            continue
        for key in sorted(set(common) | set(settings)):
            if common.get(key) != settings.get(key):
                raise PeftsError(f"{path} and {first} are shards of different runs: "
                                 f"{key} is {settings.get(key)!r} vs {common.get(key)!r}")
    return common or {}, own


def check_comparable(runs: list[tuple[str, float, str | Path]]) -> None:
    """Runs of one summary: each TSV is the sigma it is labelled with, and all were
    certified on the same test images."""
    first: tuple[str | Path, dict[str, Any]] | None = None
    for _, sigma, path in runs:
        settings = read_sidecar(path)["settings"]
        if settings.get("sigma") != sigma:
            raise PeftsError(f"{path} was certified at sigma {settings.get('sigma')!r}, "
                             f"labelled {sigma!r}")
        data = {k: settings.get(k) for k in DATA_KEYS}
        if first is None:
            first = (path, data)
        elif data != first[1]:
            key = next(k for k in DATA_KEYS if data[k] != first[1][k])
            raise PeftsError(f"{path} and {first[0]} were certified on different test images: "
                             f"{key} is {data[key]!r} vs {first[1][key]!r}")
