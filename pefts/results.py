"""Merging shard TSVs and turning certification results into tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pefts.artifacts import atomic_write_text
from pefts.errors import PeftsError

REQUIRED = ["idx", "label", "predict", "radius", "correct", "time"]


def read_tsv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise PeftsError(f"certification file {path} does not exist")
    try:
        frame = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PeftsError(f"{path} is not a certification TSV: {err}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PeftsError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def merge_shards(paths: Sequence[str | Path], expected: Sequence[int] | None = None) -> pd.DataFrame:
    """Concatenate shards; refuse a set that repeats or misses an image, naming it."""
    frames = []
    for path in paths:
        frame = read_tsv(path)
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
    return merged.drop(columns="_source").sort_values("idx").reset_index(drop=True)


def write_tsv(frame: pd.DataFrame, path: str | Path) -> None:
    # repr-precision floats keep radii exactly as certified
    atomic_write_text(path, frame.to_csv(sep="\t", index=False, float_format="%.17g"))


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


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) + "\n"
