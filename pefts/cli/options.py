"""Options and parsers shared by every stage's commands (their types: pefts.option_types)."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import click

from pefts.errors import PeftsError
from pefts.hparams import number_problem
from pefts.option_types import GPU_COUNT, MD_OUT


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
    from pefts.runtime.devices import DeviceRequest, check_gpus

    @functools.wraps(func)
    def command(*args, device: str, gpus: int | None, **kwargs):
        check_gpus(gpus)  # before any input is read or output touched
        return func(*args, device=DeviceRequest(device, gpus), **kwargs)

    command = click.option("--gpus", default=None, type=GPU_COUNT,
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
        from pefts.reporting.pages import measurement_page, this_command
        from pefts.runtime.files import atomic_write_text

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
