"""Option types and parsers shared by every stage's commands.

Every numeric option of every command has one of these types (or click.INT, which
refuses nan and inf by itself); tests/test_cli_errors.py sweeps bad values over them.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import click

from pefts.errors import PeftsError
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


# every numeric option of every command has one of these types (or click.INT, which
# refuses nan and inf by itself); tests/test_cli_errors.py sweeps bad values over them
POSITIVE = FiniteFloat(min=0.0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0.0)
PROBABILITY = FiniteFloat(min=0.0, max=1.0, min_open=True, max_open=True)
UNIT_INTERVAL = FiniteFloat(min=0.0, max=1.0)
AT_LEAST_ONE = click.IntRange(min=1)
SEED = click.IntRange(min=0, max=2**63 - 1)
RUN = click.Tuple([str, POSITIVE, click.Path(dir_okay=False)])


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


def parse_json(text: str | None, option: str) -> dict[str, Any]:
    """A JSON object; its values are checked against their specs where they are used
    (methods' hyper-parameters, training options, pefts.data.IMAGE_SPECS)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise PeftsError(f"{option} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise PeftsError(f"{option} must be a JSON object, got {text!r}")
    return value


def device_option(func):
    """--device and --gpus (the GPU rules pass their `resources: gpu=`), handed to the
    command as one DeviceRequest in ``device``."""
    from pefts.devices import DeviceRequest, check_gpus

    @functools.wraps(func)
    def command(*args, device: str, gpus: int | None, **kwargs):
        check_gpus(gpus)  # before any input is read or output touched
        return func(*args, device=DeviceRequest(device, gpus), **kwargs)

    command = click.option("--gpus", default=None, type=click.IntRange(min=0),
                           help="GPUs the job may use (the rule's resources gpu): 0 runs on "
                                "the CPU; a SLURM job asking for one must have been given "
                                "one; more than 1 is refused")(command)
    return click.option("--device", default="auto", show_default=True,
                        help="auto (the scheduler's or a leased GPU if any, else CPU), cpu, "
                             "cuda or cuda:N")(command)


def page_option(func):
    return click.option("--out-md", default=None, type=MD_OUT,
                        help="also write what is printed as a Markdown page headed by this "
                             "command line (docs/ pages are made this way)")(func)


def write_page(out_md: str | None, printed: str) -> None:
    if out_md:
        from pefts.files import atomic_write_text
        from pefts.pages import measurement_page, this_command

        atomic_write_text(out_md, measurement_page(printed, this_command()))


def force_option(func):
    return click.option("--force", is_flag=True, help="replace an existing output")(func)


def fmt_accuracy(value: float | None) -> str:
    return "n/a (val_fraction 0)" if value is None else f"{value:.3f}"


def parse_floats(text: str, option: str, low: float = -math.inf,
                 low_open: bool = False) -> tuple[float, ...]:
    """Comma-separated finite numbers, each >= ``low`` (> ``low`` when ``low_open``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PeftsError(f"{option} must be comma-separated numbers, got {text!r}") from None
    for v in values:
        if number_problem(v) or v < low or (low_open and v == low):
            bound = f"{'>' if low_open else '>='} {low:g}" if math.isfinite(low) else "finite"
            raise PeftsError(f"{option} must be comma-separated finite numbers {bound}, "
                             f"got {text!r}")
    return values
