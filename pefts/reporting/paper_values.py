"""The paper's published numbers (Fu & Wang, "Certified PEFTSmoothing", arXiv 2404.05350v1),
kept as cited data so a reproduction run can be read against them.

Every value is transcribed from the paper: Table 1 cell for cell as printed (the printed
text is kept beside the number parsed from it), Table 2, Figure 7's two numbers and the
numbers its text gives, each with the table or section it came from. The paper's own
oddities are kept as printed and noted on their row, never corrected here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCE = "Fu & Wang, Certified PEFTSmoothing, arXiv 2404.05350v1"
TRANSCRIBED = "transcribed from the paper"


@dataclass(frozen=True)
class Cell:
    """One cell of Table 1: certified accuracy (%), and the percent printed in parentheses
    (the caption's clean accuracy; None where the paper prints none)."""

    certified: float
    parenthesized: float | None
    printed: str
    source: str


@dataclass(frozen=True)
class Row:
    """One row of Table 1 on one dataset. ``method`` is what we run for it; None marks a
    reference row with no counterpart in ours (never matched to the untuned base)."""

    label: str
    category: str
    method: str | None
    radius_stated: bool
    note: str
    cells: dict[float, Cell | None]  # column -> cell; None: the paper's cell is empty


@dataclass(frozen=True)
class Table1:
    """Table 1 on one dataset. The columns are labelled sigma; the prior-work rows are
    their papers' certified accuracy at radius r = the column's value, so those are
    compared at that radius (``pefts.reporting.paper_comparison``). For the PEFT rows the paper does
    not say which radius."""

    columns: tuple[float, ...]
    rows: dict[str, Row]


@dataclass(frozen=True)
class Count:
    """A parameter count as the paper prints it ("0.558M") and in parameters."""

    label: str
    method: str
    printed: str
    parameters: int
    source: str


@dataclass(frozen=True)
class Figure7Value:
    label: str
    method: str
    printed: str
    percent: float
    source: str


_CIFAR_COLUMNS = (0.25, 0.5, 0.75, 1.0)
_IMAGENET_COLUMNS = (0.5, 1.0)

# Table 1 as printed, "-" where the paper's cell is empty:
# (category, row, ours, C 0.25, C 0.50, C 0.75, C 1.00, I 0.50, I 1.00)
_TABLE1_PRINTED = [
    ("RS", "PIXELDP [11]", None,
     "22.0 (71.0)", "2.0 (44.0)", "-", "-", "16.0 (33.0)", "-"),
    ("RS", "RS [1] (Cohen et al.)", None,
     "61.0 (75.0)", "43.0 (75.0)", "32.0 (65.0)", "22.0 (66.0)", "49.0 (67.0)", "37.0 (57.0)"),
    ("RS", "SMOOTHADV [41]", None,
     "67.4 (75.6)", "57.6 (75.6)", "47.8 (74.7)", "38.3 (57.4)", "56.0 (65.0)", "43.0 (54.0)"),
    ("RS", "SMOOTHADV [41] (second row)", None,
     "74.9 (74.3)", "63.4 (80.1)", "51.9 (80.1)", "39.6 (62.2)", "-", "-"),
    ("RS", "CONSISTENCY [42]", None,
     "68.8 (77.8)", "58.1 (75.8)", "48.5 (72.9)", "37.8 (52.3)", "50.0 (55.0)", "44.0 (55.0)"),
    ("RS", "MACER [48]", None,
     "71.0 (81.0)", "59.0 (81.0)", "46.0 (66.0)", "38.0 (66.0)", "57.0 (68.0)", "43.0 (64.0)"),
    ("RS", "BOOSTING [43]", None,
     "70.6 (83.4)", "60.4 (76.8)", "52.4 (71.6)", "38.8 (52.4)", "57.0 (65.6)", "44.6 (57.0)"),
    ("RS", "DRT [44]", None,
     "70.4 (81.5)", "60.2 (72.6)", "50.5 (71.9)", "39.8 (56.1)", "46.8 (52.2)", "44.4 (55.2)"),
    ("RS", "SMOOTHMIX [45]", None,
     "67.9 (77.1)", "60.4 (76.8)", "52.4 (71.6)", "38.8 (52.4)", "50.0 (55.0)", "43.0 (55.0)"),
    ("RS", "ACES [46]", None,
     "69.0 (79.0)", "57.2 (74.2)", "47.0 (74.2)", "37.8 (58.6)", "54.0 (63.8)", "42.2 (57.2)"),
    ("DS", "DENOISED [2] (Salman et al., DnCNN)", "denoiser",
     "56.0 (72.0)", "41.0 (62.0)", "28.0 (62.0)", "19.0 (44.0)", "33.0 (60.0)", "14.0 (38.0)"),
    ("DS", "LEE [47]", None,
     "60.0", "42.0", "28.0", "19.0", "41.0", "24.0"),
    ("DS", "DIFFUSION [39] (Carlini et al.)", "diffusion",
     "76.7 (88.1)", "63.0 (88.1)", "45.3 (88.1)", "32.1 (77.0)", "71.1 (82.8)", "54.3 (77.1)"),
    ("PEFT", "LoRA (ours)", "lora",
     "98.2 (97.0)", "97.4 (95.4)", "95.0 (94.4)", "94.6 (91.4)", "61.08 (3.9)", "39.0 (1.00)"),
    ("PEFT", "PROMPT-TUNE (ours)", "prompt",
     "96.6 (97.2)", "93.4 (97.2)", "93.2 (95.8)", "87.4 (94.0)", "38.72 (53.9)", "16.0 (42.2)"),
    ("PEFT", "FULL FINE-TUNE (ours)", "full",
     "94.0 (94.0)", "88.8 (89.0)", "86.6 (84.8)", "83.6 (82.8)", "62.36 (44.1)", "34.7 (18.3)"),
    ("PEFT", "ADAPTER (ours)", "adapter",
     "93.6 (91.2)", "92.6 (89.8)", "87.8 (90.2)", "82.8 (87.4)", "24.12 (23.9)", "11.4 (0.080)"),
]

_PEFT_NOTE = ("the paper does not say at which radius its PEFT rows are (certified accuracy at "
              "r = 0 of the run trained at that sigma, or at r = sigma); its text calls the same "
              "figures \"over 98% ... on CIFAR-10\" and \"over 61% on ImageNet\", and Figure 3's "
              "curves start at r = 0")

# what the paper prints that looks odd, kept as printed: (row, dataset or None for both)
_ROW_NOTES = {
    ("SMOOTHADV [41]", None): "the paper prints two SMOOTHADV [41] rows; both kept",
    ("SMOOTHADV [41] (second row)", None): (
        "the paper's second SMOOTHADV [41] row, as printed (its CIFAR-10 0.25 cell, "
        "74.9 (74.3), is above its own parentheses)"),
    ("SMOOTHADV [41] (second row)", "imagenet"): (
        "the paper's second SMOOTHADV [41] row: no ImageNet cells printed"),
    ("SMOOTHMIX [45]", "cifar10"): (
        "its CIFAR-10 cells at 0.50, 0.75 and 1.00 are BOOSTING [43]'s, as printed"),
    ("LEE [47]", None): "the paper prints no clean accuracy for LEE [47]",
    ("DENOISED [2] (Salman et al., DnCNN)", None): (
        "Salman et al.'s DnCNN before a ResNet; ours: a DnCNN before the preset's ViT-B/16"),
    ("DIFFUSION [39] (Carlini et al.)", None): "Carlini et al.'s one-shot diffusion denoiser",
    ("LoRA (ours)", "cifar10"): _PEFT_NOTE,
    ("PROMPT-TUNE (ours)", "cifar10"): _PEFT_NOTE,
    ("FULL FINE-TUNE (ours)", "cifar10"): _PEFT_NOTE,
    ("ADAPTER (ours)", "cifar10"): _PEFT_NOTE,
}
_IMAGENET_PEFT_NOTE = (
    _PEFT_NOTE + "; the ImageNet 0.50 cells have two decimals, and parentheses such as 3.9, "
    "1.00 and 0.080 are far below their own certified accuracy, so they are not clean "
    "accuracies in the caption's sense")

_CELL = re.compile(r"(\d+(?:\.\d+)?)(?: \((\d+(?:\.\d+)?)\))?")


def _cell(printed: str, source: str) -> Cell | None:
    if printed == "-":
        return None
    match = _CELL.fullmatch(printed)
    if match is None:
        raise ValueError(f"Table 1 cell {printed!r} ({source}) is not 'x' or 'x (y)'")
    certified, parenthesized = match.groups()
    return Cell(float(certified), None if parenthesized is None else float(parenthesized),
                printed, source)


def _table1(dataset: str, columns: tuple[float, ...], offset: int, header: str) -> Table1:
    rows = {}
    for category, label, method, *printed in _TABLE1_PRINTED:
        note = _ROW_NOTES.get((label, dataset)) or _ROW_NOTES.get((label, None), "")
        if dataset == "imagenet" and category == "PEFT":
            note = _IMAGENET_PEFT_NOTE
        cells = {column: _cell(printed[offset + i],
                               f"Table 1, row {label}, column {header} {column:.2f}; "
                               f"{TRANSCRIBED}")
                 for i, column in enumerate(columns)}
        rows[label] = Row(label, category, method, category != "PEFT", note, cells)
    return Table1(columns, rows)


TABLE1: dict[str, Table1] = {
    "cifar10": _table1("cifar10", _CIFAR_COLUMNS, 0, "CIFAR-10 sigma ="),
    "imagenet": _table1("imagenet", _IMAGENET_COLUMNS, len(_CIFAR_COLUMNS), "ImageNet sigma ="),
}


def _count(label: str, method: str, printed: str, source: str) -> Count:
    return Count(label, method, printed, round(float(printed.removesuffix("M")) * 1e6),
                 f"{source}; {TRANSCRIBED}")


# Table 2: trainable parameters with ViT-B/16 as the base classifier, as printed, keyed by
# the method we run for each column. The paper rounds to the printed digits.
TABLE2: dict[str, Count] = {
    count.method: count for count in (
        _count("SUNet", "sunet", "99.7M", "Table 2"),
        _count("Diffusion", "diffusion", "52.5M", "Table 2"),
        _count("DnCNN", "denoiser", "0.558M", "Table 2"),
        _count("Full fine-tune", "full", "86.6M", "Table 2"),
        _count("Adaptor", "adapter", "3.39M", "Table 2"),
        _count("LoRA", "lora", "0.081M", "Table 2"),
        _count("Prompt-tune", "prompt", "0.929M", "Table 2"),
    )
}

# Section 5.2's text repeats Table 2's LoRA, prompt and full counts and gives the adapter
# with one more digit than the table.
TABLE2_TEXT: dict[str, Count] = {
    "adapter": _count("Adapter (section 5.2 text)", "adapter", "3.387M", "Section 5.2"),
}

# Section 5.4 / Figure 7: CIFAR-10 at sigma 0.25, top-1 certified accuracy; the text
# does not say at which radius.
FIGURE7_DATASET = "cifar10"
FIGURE7_SIGMA = 0.25
FIGURE7: dict[str, Figure7Value] = {
    "blackbox": Figure7Value("black-box PEFTSmoothing", "blackbox", "0.83", 83.0,
                             f"Section 5.4 / Figure 7, CIFAR-10 sigma 0.25; {TRANSCRIBED}"),
    "denoiser": Figure7Value("DnCNN denoiser", "denoiser", "0.6", 60.0,
                             f"Section 5.4 / Figure 7, CIFAR-10 sigma 0.25; {TRANSCRIBED}"),
}

# The numbers the text gives, as it gives them (source, statement).
TEXT: list[tuple[str, str]] = [
    ("Abstract", "over 98% certified accuracy for ViT on CIFAR-10, \"20% higher than SoTA "
                 "denoised smoothing\", and over 61% on ImageNet"),
    ("Section 5.1", "prompt length 100, LoRA rank 2; ImageNet on an A100, CIFAR-10 on an A40; "
                    "base classifier ViT-B/16 pretrained on ImageNet-21k (86.6M parameters)"),
    ("Section 5.2", "LoRA 0.081M, Prompt-tune 0.929M, Adapter 3.387M, Full 86.6M trainable "
                    "parameters; the diffusion denoiser is about 10% above LoRA on ImageNet"),
    ("Section 5.4 / Figure 7", "CIFAR-10, sigma 0.25: black-box PEFTSmoothing 0.83 top-1 "
                               "certified accuracy against 0.6 for the DnCNN denoiser; it beats "
                               "the diffusion denoiser at L2 radius > 0.4 and nearly matches it "
                               "below"),
]


def compared_methods(dataset: str) -> set[str]:
    """Our methods that some row of the paper is set beside: Table 1's rows with a
    counterpart, Table 2's counts and Figure 7's two numbers. ``none`` is in none of them
    (the paper's RS rows are Cohen et al.'s noise-trained models, not our untuned base)."""
    rows = TABLE1[dataset].rows.values() if dataset in TABLE1 else ()
    return ({row.method for row in rows if row.method} | set(TABLE2)
            | {value.method for value in FIGURE7.values()})
