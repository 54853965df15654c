"""Figures: certified accuracy against L2 radius (paper Figure 3) and friends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pefts.results import certified_accuracy  # noqa: E402


def accuracy_curve(frame: pd.DataFrame, max_radius: float, points: int = 200
                   ) -> tuple[np.ndarray, np.ndarray]:
    radii = np.linspace(0.0, max_radius, points)
    return radii, np.array([certified_accuracy(frame, r) for r in radii])


def save(fig: plt.Figure, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


def plot_certified_curves(curves: Sequence[tuple[str, pd.DataFrame]], title: str,
                          out: str | Path) -> None:
    """One line per labelled result: certified accuracy against radius."""
    max_radius = max([float(f["radius"].max()) for _, f in curves if len(f)] + [0.1]) * 1.05
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, frame in curves:
        radii, acc = accuracy_curve(frame, max_radius)
        ax.plot(radii, acc, label=label, linewidth=1.8)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max_radius)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, out)


def plot_lines(table: pd.DataFrame, x: str, y: str, hue: str, title: str, out: str | Path,
               logx: bool = False, xlabel: str | None = None, ylabel: str | None = None,
               labels: str | None = None) -> None:
    """Line plot of ``y`` against ``x``, one line per value of ``hue``; each point is
    annotated with its ``labels`` column when given."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, group in table.groupby(hue, sort=False):
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=f"{hue} = {key}")
        if labels:
            for _, row in group.iterrows():
                ax.annotate(str(row[labels]), (row[x], row[y]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, out)
