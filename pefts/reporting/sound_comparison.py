"""One run certified in the standard and in the sound mode, side by side: certified
counts at each radius, samples drawn and sampling time (``certify.sound_compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pefts.certification.results import check_same_images, read_tsv, to_markdown
from pefts.errors import PeftsError
from pefts.runtime.provenance import PER_SHARD, describe_certification, read_sidecar

SOUND_MODE = ("Sound mode is Voracek & Hein's procedure (ICLR 2023): test images on the "
              "8-bit grid and noise from the Gaussian discretised to 1/255, drawn exactly from "
              "random integers, so the certificate holds for the floating-point computation "
              "actually run, which the standard mode's continuous-noise certificate does not "
              "promise.")
# what the sound run adds to its settings; everything else must be the standard run's
SOUND_ONLY = ("sound", "pixel_levels")


def check_same_run(standard: str | Path, sound: str | Path) -> dict:
    """The standard run's settings, once ``sound`` is shown to be the same run (model,
    sigma, images, sampling, stopping rule) certified in sound mode, and ``standard`` not."""
    first = read_sidecar(standard)["settings"]
    second = read_sidecar(sound)["settings"]
    if first.get("sound"):
        raise PeftsError(f"{standard} was certified in sound mode: give the standard run "
                         "as --standard")
    if not second.get("sound"):
        raise PeftsError(f"{sound} was not certified in sound mode (pefts certify --sound)")
    ignored = set(SOUND_ONLY) | set(PER_SHARD)
    for key in sorted((set(first) | set(second)) - ignored):
        if first.get(key) != second.get(key):
            raise PeftsError(f"{sound} and {standard} are not the same run in two modes: "
                             f"{key} is {second.get(key)!r} vs {first.get(key)!r}")
    return first


def samples_drawn(frame: pd.DataFrame) -> int:
    """Noise samples (forward passes) of all images: n0 for selection plus the estimation
    samples (adaptive: each image's n_used; fixed n: n)."""
    estimation = frame["n_used"] if "n_used" in frame.columns else frame["n"]
    return int((frame["n0"] + estimation).sum())


def comparison_table(standard: str | Path, sound: str | Path,
                     radii: Sequence[float]) -> pd.DataFrame:
    """One row per mode: images certified correct with a radius of at least r (counts,
    not fractions: 'a few images' is read off directly), samples drawn and the seconds
    of sampling (each image's share of its batches' wall time, summed)."""
    settings = check_same_run(standard, sound)
    frames = {"standard": read_tsv(standard), "sound": read_tsv(sound)}
    check_same_images([(sound, frames["sound"]), (standard, frames["standard"])])
    rows = []
    for mode, frame in frames.items():
        row = {"method": settings.get("method"), "sigma": settings.get("sigma"), "mode": mode,
               "images": len(frame)}
        correct = frame["correct"] == 1
        row.update({f"r={r:g}": int((correct & (frame["radius"] >= r)).sum()) for r in radii})
        row["samples"] = samples_drawn(frame)
        row["seconds"] = float(frame["time"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_markdown(table: pd.DataFrame, standard: str | Path) -> str:
    """The table, the sound/standard ratios of samples and time, how both were certified
    and what sound mode is."""
    by_mode = table.set_index("mode")
    ratio = {c: by_mode.loc["sound", c] / by_mode.loc["standard", c] for c in ("samples", "seconds")}
    cert = read_sidecar(standard)["certification"]
    return (to_markdown(table, floatfmt=".2f")
            + f"\nCertified counts (of {int(by_mode.loc['standard', 'images'])} images) at each "
            f"radius; sound/standard: {ratio['samples']:.2f}x the samples, "
            f"{ratio['seconds']:.2f}x the seconds (two jobs, each under the load of its own "
            "moment: `pefts benchmark` times both modes in one process). Both: "
            f"{describe_certification(cert)}.\n\n"
            + SOUND_MODE + "\n")
