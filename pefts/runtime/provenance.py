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
from pefts.runtime.files import atomic_write_text

# settings that may differ between the shards of one run
PER_SHARD = ("shard", "device")
# settings that must agree between runs compared in one summary: the same test images
DATA_KEYS = ("dataset", "class_subset", "split", "manifest", "skip", "max")


def sidecar_path(tsv: str | Path) -> Path:
    tsv = Path(tsv)
    return tsv.with_name(tsv.name + ".json")


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# how a run was certified: what every table and figure states, and what runs shown side
# by side must share (unless asked to mix them)
CERTIFICATION_KEYS = ("mode", "n0", "n", "alpha", "precision", "stop", "sound")


def certification_of(settings: dict[str, Any]) -> dict[str, Any]:
    """How the rows of a run were certified, from its settings: fixed n or adaptive (then
    n is n_max, and ``stop`` the grid of radii or the tolerance it stopped on), n0,
    alpha, the network's precision and whether it was sound in floating point."""
    adaptive = bool(settings.get("adaptive"))
    if adaptive:
        stop = (f"rtol {settings['rtol']:g}" if settings.get("rtol")
                else "grid " + ",".join(f"{r:g}" for r in settings.get("radii") or []))
    else:
        stop = ""
    mode = "adaptive" if adaptive else ("predict" if settings.get("command") == "predict" else "fixed")
    return {"mode": mode, "n0": settings.get("n0"),
            "n": settings.get("n_max") if adaptive else settings.get("n"),
            "alpha": settings.get("alpha"), "precision": settings.get("precision", "fp32"),
            "stop": stop, "sound": bool(settings.get("sound", False))}


def describe_certification(cert: dict[str, Any]) -> str:
    """One line for captions and footnotes, e.g. 'adaptive (n_max 5000, stops on grid
    0,0.5,1: radii truncated between grid points), n0 64, alpha 0.001, fp32'."""
    def count(value: Any) -> Any:  # a count read back from a TSV may be a float
        return int(value) if isinstance(value, float) and value.is_integer() else value

    if cert["mode"] == "adaptive":
        stop = cert["stop"]
        if stop.startswith("grid"):
            stop = f"stops on {stop}: radii truncated between grid points"
        head = f"adaptive (n_max {count(cert['n'])}, {stop})"
    else:
        head = f"{cert['mode']} n = {count(cert['n'])}"
    n0 = f", n0 {count(cert['n0'])}" if cert.get("n0") is not None else ""
    sound = ", sound (8-bit images, discretised noise)" if cert.get("sound") else ""
    return f"{head}{n0}, alpha {float(cert['alpha']):g}, {cert['precision']}{sound}"


def read_tsv_text(path: str | Path) -> str:
    """The one reader of a certification TSV's bytes (a shard, a merged run, a summary):
    refused in one line when missing or not UTF-8 text, naming the line of the bad byte."""
    path = Path(path)
    if not path.is_file():
        raise PeftsError(f"certification file {path} does not exist")
    raw = path.read_bytes()
    try:
        return raw.decode()
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise PeftsError(f"{path} is not a certification TSV: byte {raw[err.start]:#04x} on "
                         f"line {line} is not UTF-8 text") from None


def write_sidecar(tsv: str | Path, settings: dict[str, Any], text: str, **extra: Any) -> None:
    record = {"settings": settings, "tsv_sha256": text_digest(text),
              "certification": certification_of(settings), **extra}
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
    if digest != text_digest(read_tsv_text(tsv)):
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


def check_comparable(runs: list[tuple[str, float, str | Path]], mixed: bool = False
                     ) -> list[dict[str, Any]]:
    """Runs of one summary: each TSV is the sigma it is labelled with, all were certified
    on the same test images and, unless ``mixed``, in the same way (mode, n, n0, alpha,
    precision, stopping rule). Returns how each run was certified."""
    first: tuple[str | Path, dict[str, Any]] | None = None
    certs = []
    for _, sigma, path in runs:
        settings = read_sidecar(path)["settings"]
        certs.append(certification_of(settings))
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
    if not mixed and any(c != certs[0] for c in certs):
        differ = {k for c in certs for k in CERTIFICATION_KEYS if c[k] != certs[0][k]}
        named = "; ".join(f"{m} {s:g} ({p}): {describe_certification(c)}"
                          for (m, s, p), c in zip(runs, certs, strict=True))
        raise PeftsError(f"the runs were certified differently ({', '.join(sorted(differ))}): "
                         f"{named}; pass --mixed to show them side by side, each labelled")
    return certs
