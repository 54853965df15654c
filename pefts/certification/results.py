"""Merging shard TSVs and turning certification results into tables."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pefts.errors import PeftsError
from pefts.runtime.files import atomic_write_text
from pefts.runtime.provenance import (
    CERTIFICATION_KEYS,
    describe_certification,
    read_tsv_text,
    shared_settings,
    write_sidecar,
)

REQUIRED = ["idx", "label", "predict", "radius", "correct", "time"]  # Cohen's certify columns
PREDICT_REQUIRED = ["idx", "label", "predict", "correct", "time"]  # Cohen's predict columns


def _integer(low: int):
    def check(text: str) -> str | None:
        try:
            value = int(text)
        except ValueError:
            return "is not an integer"
        return None if value >= low else f"is below {low}"
    return check


def _number(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        return "is not a number"
    if not math.isfinite(value):
        return "is not finite"
    return None if value >= 0 else "is negative"


CHECKS = {"idx": _integer(0), "label": _integer(0), "predict": _integer(-1),
          "correct": _integer(0), "radius": _number, "time": _number,
          "n0": _integer(1), "n": _integer(1), "nA": _integer(0), "pA_lower": _number}


def check_rows(path: Path, lines: list[str], first_line: int = 2) -> None:
    """Every row of a certification TSV (``lines``: header, rows), naming the file and
    line of the first bad one; ``first_line`` is the file's line number of the first row."""
    header = lines[0].split("\t")
    for number, line in enumerate(lines[1:], start=first_line):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise PeftsError(f"{path}, line {number}: {len(fields)} fields, the header has "
                             f"{len(header)}")
        row = dict(zip(header, fields, strict=True))
        for column, check in CHECKS.items():
            if column in row and (problem := check(row[column])):
                raise PeftsError(f"{path}, line {number}: {column} {row[column]!r} {problem}")
        if int(row["correct"]) != int(int(row["predict"]) == int(row["label"])):
            raise PeftsError(f"{path}, line {number}: correct {row['correct']} contradicts "
                             f"predict {row['predict']} and label {row['label']}")
        if "radius" in row and int(row["predict"]) == -1 and float(row["radius"]) != 0:
            raise PeftsError(f"{path}, line {number}: an abstention with radius {row['radius']}")


def read_tsv(path: str | Path, radius: bool = True) -> pd.DataFrame:
    """A certify TSV (``radius``) or a certify or predict TSV, every row checked."""
    path = Path(path)
    text = read_tsv_text(path)
    lines = text.rstrip("\n").split("\n")
    columns = lines[0].split("\t") if text.strip() else []
    needed = REQUIRED if radius or "radius" in columns else PREDICT_REQUIRED
    missing = [c for c in needed if c not in columns]
    if missing:
        raise PeftsError(f"{path} lacks column(s) {', '.join(missing)}")
    check_rows(path, lines)
    return pd.read_csv(io.StringIO(text), sep="\t")  # the text checked, not a second read


def check_same_images(runs: Sequence[tuple[str | Path, pd.DataFrame]]) -> None:
    """Refuse runs that certified different images (their idx sets), naming the first
    difference: settings can agree while one TSV is a shard or a cut-short run of the
    same selection, and its fractions would then be of other images."""
    if not runs:
        return
    first, reference = runs[0][0], set(runs[0][1]["idx"])
    for name, frame in runs[1:]:
        images = set(frame["idx"])
        if images != reference:
            only, where = ((sorted(images - reference), name) if images - reference
                           else (sorted(reference - images), first))
            raise PeftsError(f"{name} and {first} certified different images: "
                             f"{len(images)} vs {len(reference)} images, image {only[0]} only "
                             f"in {where} (a shard or a cut-short run?); compare runs of the "
                             "same images")


def merge_shards(paths: Sequence[str | Path], expected: Sequence[int] | None = None
                 ) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, Any]]]:
    """Concatenate shards of one run (settings checked by ``shared_settings``); refuse a
    set that repeats or misses an image, naming it. Returns the rows, the run's settings
    and each shard's own part (shard, device)."""
    settings, shards = shared_settings(list(paths))
    frames = []
    for path in paths:
        frame = read_tsv(path, radius=False)
        if frames and list(frame.columns) != list(frames[0].columns.drop("_source")):
            raise PeftsError(f"{path} and {paths[0]} have different columns "
                             "(a certify and a predict shard?)")
        frames.append(frame.assign(_source=str(path)))
    merged = pd.concat(frames, ignore_index=True)
    repeated = merged[merged.duplicated("idx", keep=False)]
    if len(repeated):
        idx = int(repeated["idx"].iloc[0])
        sources = ", ".join(sorted(set(repeated.loc[repeated["idx"] == idx, "_source"])))
        raise PeftsError(f"image {idx} appears more than once (in {sources}); "
                         f"{repeated['idx'].nunique()} image(s) repeated in all")
    if expected is not None:
        missing = sorted(set(expected) - set(merged["idx"]))
        extra = sorted(set(merged["idx"]) - set(expected))
        if missing:
            raise PeftsError(f"image {missing[0]} is missing from the shards "
                             f"({len(missing)} missing in all: {missing[:10]})")
        if extra:
            raise PeftsError(f"image {extra[0]} is not among the selected images "
                             f"({len(extra)} unexpected in all)")
    # after the images, which name what is wrong more exactly: a layout's missing shard
    # is what a merge without --data would not see
    check_shard_set([part.get("shard") for part in shards], paths)
    merged = merged.drop(columns="_source").sort_values("idx").reset_index(drop=True)
    return merged, settings, shards


def check_shard_set(labels: Sequence[str | None], paths: Sequence[str | Path]) -> None:
    """The shards of one layout, each once: K/N for every K < N of one N (shards written
    before the label was recorded are let through)."""
    from pefts.certification.selection import parse_shard

    if any(label is None for label in labels):
        return
    parsed = [parse_shard(str(label)) for label in labels]
    counts = sorted({n for _, n in parsed})
    if len(counts) > 1:
        first = next(p for p, (_, n) in zip(paths, parsed, strict=True) if n == counts[-1])
        raise PeftsError(f"the shards mix layouts of {' and '.join(map(str, counts))} shards "
                         f"({first} is one of {counts[-1]}): merge the shards of one layout")
    missing = sorted(set(range(counts[0])) - {k for k, _ in parsed})
    if missing:
        raise PeftsError(f"shard {missing[0]}/{counts[0]} is missing ({len(missing)} of "
                         f"{counts[0]} missing): merge every shard of the layout")
    if len(parsed) != counts[0]:
        raise PeftsError(f"a shard of {counts[0]} is given twice: merge each shard once")


def write_tsv(frame: pd.DataFrame, path: str | Path, settings: dict[str, Any] | None = None,
              **extra: Any) -> None:
    """The TSV, and with ``settings`` its provenance file (written first)."""
    # repr-precision floats keep radii exactly as certified
    text = frame.to_csv(sep="\t", index=False, float_format="%.17g")
    if settings is not None:
        write_sidecar(path, settings, text, **extra)
    atomic_write_text(path, text)


def certified_accuracy(frame: pd.DataFrame, radius: float) -> float:
    """Fraction of ALL rows that are correct with a radius of at least ``radius``."""
    if len(frame) == 0:
        return float("nan")
    return float(((frame["correct"] == 1) & (frame["radius"] >= radius)).mean())


def average_certified_radius(frame: pd.DataFrame) -> float:
    """ACR (MACER): radius summed over correct rows, divided by all rows."""
    if len(frame) == 0:
        return float("nan")
    return float(frame["radius"].where(frame["correct"] == 1, 0.0).sum() / len(frame))


def summarize(runs: Sequence[tuple[str, float, pd.DataFrame]], radii: Sequence[float]) -> pd.DataFrame:
    """One row per (method, sigma): certified accuracy at each radius, ACR, abstentions."""
    rows = []
    for method, sigma, frame in runs:
        row = {"method": method, "sigma": sigma, "images": len(frame)}
        row.update({f"r={r:g}": certified_accuracy(frame, r) for r in radii})
        row["ACR"] = average_certified_radius(frame)
        row["abstain"] = float((frame["predict"] == -1).mean()) if len(frame) else np.nan
        row["sec/img"] = float(frame["time"].mean()) if len(frame) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def read_written_table(path: str | Path, writer: str = "pefts summarize") -> pd.DataFrame:
    """A TSV another command wrote; `pefts summarize`'s own has its numbers checked
    (``check_summary``) before anything is drawn from them."""
    if not Path(path).is_file():
        raise PeftsError(f"{path} does not exist (run `{writer}` first)")
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PeftsError(f"{path} is not a table written by `{writer}`: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if writer == "pefts summarize":
        check_summary(table, path)
    return table


def check_summary(table: pd.DataFrame, path: str | Path) -> None:
    """`summarize`'s table as read back from a file: sigma finite and positive, every
    certified accuracy and abstention rate a fraction in [0, 1] (NaN only for a run of no
    images), ACR and seconds finite and >= 0; the first bad cell is named with its line."""
    missing = {"method", "sigma"} - set(table.columns)
    if missing:
        raise PeftsError(f"{path} lacks column(s) {', '.join(sorted(missing))} "
                         "(expected `pefts summarize`' TSV)")
    empty = (pd.to_numeric(table["images"], errors="coerce") == 0
             if "images" in table.columns else pd.Series(False, index=table.index))
    checks = [("sigma", 0.0, np.inf, False)]
    checks += [(c, 0.0, 1.0, True) for c in table.columns if c.startswith("r=") or c == "abstain"]
    checks += [(c, 0.0, np.inf, True) for c in ("ACR", "sec/img") if c in table.columns]
    for column, low, high, nan_when_empty in checks:
        values = pd.to_numeric(table[column], errors="coerce")
        fine = np.isfinite(values) & (values >= low) & (values <= high)
        if column == "sigma":
            fine &= values > 0
        if nan_when_empty:
            fine |= values.isna() & empty & table[column].isna()
        if not fine.all():
            row = int((~fine).to_numpy().argmax())
            raise PeftsError(f"{path}, line {row + 2}: {column} {_shown(table[column].iloc[row])} is "
                             f"not a number in [{low:g}, {high:g}]"
                             f"{' above 0' if column == 'sigma' else ''} (expected `pefts "
                             "summarize`' TSV)")


def _shown(value: Any) -> str:
    """A cell as it stood in the file (numpy's scalars print as np.float64(...))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def with_certification(table: pd.DataFrame, certs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The summary with how each row's run was certified, as plain extra columns (a
    TSV reader sees them like any other; nothing hides in comments)."""
    extra = pd.DataFrame([{k: c[k] for k in CERTIFICATION_KEYS} for c in certs],
                         index=table.index)
    return pd.concat([table, extra], axis=1)


def certifications(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Each summary row's certification settings (``with_certification``'s columns)."""
    # a summary written before a setting was recorded lacks its column: the default then
    columns = table.reindex(columns=list(CERTIFICATION_KEYS)).astype(object)
    if "sound" not in table.columns:
        columns["sound"] = False
    columns = columns.where(columns.notna(), None)
    return [dict(zip(CERTIFICATION_KEYS, row, strict=True))
            for row in columns.itertuples(index=False)]


def certification_note(table: pd.DataFrame) -> str:
    """The caption of a summary: how its runs were certified, or that they differ (each
    row then says it in its own column)."""
    if not set(CERTIFICATION_KEYS) - {"sound"} <= set(table.columns):
        return "certification settings unknown (a summary without them)"
    certs = certifications(table)
    if all(c == certs[0] for c in certs):
        return "certified: " + describe_certification(certs[0])
    return "certified with different settings (mixed): see each row"


def summary_markdown(table: pd.DataFrame) -> str:
    """The Markdown summary: the table, a 'certified' column only when runs of different
    settings are mixed, and a caption that says how they were certified."""
    note = certification_note(table)
    shown = table.drop(columns=[c for c in CERTIFICATION_KEYS if c in table.columns])
    if note.startswith("certified with different"):
        shown = shown.assign(certified=[describe_certification(c) for c in certifications(table)])
    return to_markdown(shown) + f"\n{note[0].upper()}{note[1:]}.\n"


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) + "\n"
