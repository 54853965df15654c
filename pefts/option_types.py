"""The click types of every numeric and path option: below the CLI, so that the config's
check (pefts.study.config) refuses a value with the very type its job's option converts it with.

Every numeric option of every command has one of these types (or click.INT, which
refuses nan and inf by itself); tests/test_cli_errors.py sweeps bad values over them.
"""

from __future__ import annotations

import click

from pefts.hparams import number_problem


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses nan and +-inf (FloatRange lets nan through:
    every comparison with nan is false) and values that underflow (``--alpha 1e-320``:
    1 / alpha overflows)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        problem = number_problem(value)
        if problem:
            self.fail(f"{value!r} {problem}", param, ctx)
        return value


POSITIVE = FiniteFloat(min=0.0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0.0)
PROBABILITY = FiniteFloat(min=0.0, max=1.0, min_open=True, max_open=True)
UNIT_INTERVAL = FiniteFloat(min=0.0, max=1.0)
AT_LEAST_ONE = click.IntRange(min=1)
SEED = click.IntRange(min=0, max=2**63 - 1)
RUN = click.Tuple([str, POSITIVE, click.Path(dir_okay=False)])
PRECISION = click.Choice(["fp32", "bf16", "fp16"])
GPU_COUNT = click.IntRange(min=0)
INTEGER = click.INT  # what click makes of type=int; it refuses nan and inf by itself


class OutputPath(click.Path):
    """An output file that must end in its extension: its companion files are named after
    it (weights' ``.json`` metadata, a TSV's ``.tsv.json`` settings), so with the extension
    required they can never land on another output's file."""

    def __init__(self, suffix: str) -> None:
        super().__init__(dir_okay=False)
        self.suffix = suffix

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not str(value).endswith(self.suffix) or str(value) == self.suffix:
            self.fail(f"{str(value)!r} must end in {self.suffix} (files beside it are "
                      "named after it)", param, ctx)
        return value


TSV_OUT = OutputPath(".tsv")
WEIGHTS_OUT = OutputPath(".safetensors")
MD_OUT = OutputPath(".md")
