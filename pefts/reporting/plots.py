"""Figures: certified accuracy against L2 radius (paper Figure 3) and friends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pefts.certification.results import certified_accuracy  # noqa: E402
from pefts.runtime.files import durable_path  # noqa: E402


def accuracy_curve(frame: pd.DataFrame, max_radius: float, points: int = 200
                   ) -> tuple[np.ndarray, np.ndarray]:
    radii = np.linspace(0.0, max_radius, points)
    return radii, np.array([certified_accuracy(frame, r) for r in radii])


def save(fig: plt.Figure, out: str | Path, note: str | None = None) -> None:
    """Write the figure; ``note`` (how its runs were certified) goes in a footnote."""
    out = Path(out)
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    with durable_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)


def plot_certified_curves(curves: Sequence[tuple[str, pd.DataFrame]], title: str,
                          out: str | Path, note: str | None = None) -> None:
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
    save(fig, out, note)


def draw_lines(ax: plt.Axes, table: pd.DataFrame, x: str, y: str, hue: str,
               labels: str | None = None, connect: bool = True) -> None:
    """``y`` against ``x`` on ``ax``, one line (or, unconnected, one colour of points)
    per value of ``hue``; each point is annotated with its ``labels`` column when given."""
    for key, group in table.groupby(hue, sort=False):
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=str(key),
                linestyle="-" if connect else "none")
        if labels:
            for _, row in group.iterrows():
                ax.annotate(str(row[labels]), (row[x], row[y]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=hue, title_fontsize=8)


def plot_lines(table: pd.DataFrame, x: str, y: str, hue: str, title: str, out: str | Path,
               logx: bool = False, xlabel: str | None = None, ylabel: str | None = None,
               labels: str | None = None, connect: bool = True, note: str | None = None) -> None:
    """One figure of ``y`` against ``x``, one line per value of ``hue``."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    draw_lines(ax, table, x, y, hue, labels, connect)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    save(fig, out, note)


def plot_against_sigma(table: pd.DataFrame, columns: Sequence[str], title: str,
                       out: str | Path, note: str | None = None) -> None:
    """One panel per summary column (certified accuracy at a radius, ACR, ...) against
    sigma, one line per method: how each approach holds up as the noise grows."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 4), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        draw_lines(ax, table, "sigma", column, "method")
        ax.set_xlabel("sigma")
        ax.set_ylabel(column if column == "ACR" else f"certified accuracy ({column})")
    fig.suptitle(title)
    save(fig, out, note)


# a training curve's panels: (column, axis label); validation beside training accuracy
CURVE_PANELS = (("loss", "training loss (noisy inputs)"),
                (("train_accuracy", "val_accuracy"), "noisy accuracy"),
                ("lr", "learning rate (SPSA: step size)"),
                ("samples_per_s", "training samples/s"))


def plot_training_curves(curves: Sequence[tuple[str, pd.DataFrame]], title: str,
                         out: str | Path, note: str | None = None) -> None:
    """One panel per quantity against the epoch, one line per labelled run (a stage of
    a two-stage run, the denoisers' MSE then stability, continues the same line); solid
    training, dashed validation accuracy. Runs without a curve are named in the note."""
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.6))
    for ax, (columns, label) in zip(axes, CURVE_PANELS, strict=True):
        for index, (name, table) in enumerate(curves):
            colour = f"C{index % 10}"
            for column, style in zip((columns,) if isinstance(columns, str) else columns,
                                     ("-", "--"), strict=False):
                values = pd.to_numeric(table.get(column), errors="coerce")
                if values is None or values.isna().all():
                    continue
                suffix = " (validation)" if column == "val_accuracy" else ""
                ax.plot(table["epoch_run"], values, style, color=colour, marker=".",
                        label=f"{name}{suffix}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if curves:
        axes[1].legend(fontsize=7)
    else:
        axes[0].text(0.5, 0.5, "no run of this figure trains", ha="center", va="center",
                     transform=axes[0].transAxes)
    fig.suptitle(title)
    save(fig, out, note)
