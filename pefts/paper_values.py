"""The paper's published numbers (Fu & Wang, "Certified PEFTSmoothing", arXiv 2404.05350v1),
kept as cited data so a reproduction run can be read against them.

Each value is a transcription, with where it came from. A value of ``None`` has not been
transcribed: the comparison shows it as such instead of inventing one. To add one, copy it
from the paper's table, in the table's own unit (percent for Table 1, parameters for
Table 2), and name the table in ``SOURCE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE = "Fu & Wang, Certified PEFTSmoothing, arXiv 2404.05350v1"


@dataclass(frozen=True)
class Table1:
    """Certified accuracy (%) per row and column. The columns are labelled sigma, but the
    RS and DIFFUSION rows are Cohen's and Carlini's certified accuracies at radius r = the
    column's value, so every row is compared at that radius (``pefts.paper_comparison``)."""

    columns: tuple[float, ...]
    # paper row -> (our method, {column: percent or None})
    rows: dict[str, tuple[str, dict[float, float | None]]] = field(default_factory=dict)


def _untranscribed(columns: tuple[float, ...]) -> dict[float, float | None]:
    return dict.fromkeys(columns, None)


# The rows the paper compares (its baselines and its three PEFT methods); their cells await
# transcription from the paper's Table 1: the machine that wrote this module could not
# open the paper's tables, and a number from memory is not a citation.
_CIFAR_COLUMNS = (0.25, 0.5, 0.75, 1.0)
_IMAGENET_COLUMNS = (0.5, 1.0)
_ROWS = {"RS": "none", "DENOISER": "denoiser", "DIFFUSION": "diffusion",
         "Prompt": "prompt", "LoRA": "lora", "Adapter": "adapter"}

TABLE1: dict[str, Table1] = {
    dataset: Table1(columns, {row: (method, _untranscribed(columns))
                              for row, method in _ROWS.items()})
    for dataset, columns in (("cifar10", _CIFAR_COLUMNS), ("imagenet", _IMAGENET_COLUMNS))
}

# Table 2: trainable parameters per method on ViT-B/16 (the paper rounds to 0.001M; the
# DnCNN's count is not among the values transcribed here)
TABLE2: dict[str, float | None] = {
    "lora": 0.081e6,
    "prompt": 0.929e6,
    "adapter": 3.387e6,
    "full": 86.6e6,
    "denoiser": None,
    "sunet": 99.7e6,
    "diffusion": 52.5e6,
    "blackbox": 9.9e3,
}
