"""The `pefts` command line: a thin click layer over the package, one module per stage.

Every error the user can cause ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys

import click

from pefts.cli import benchmarks, certification, cluster, data, reporting, training
from pefts.errors import PeftsError
from pefts.option_types import FiniteFloat
from pefts.progress import end_line
from pefts.runtime import startup

__all__ = ["FiniteFloat", "cli", "main", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pefts")
def cli() -> None:
    """PEFTSmoothing: fine-tune classifiers on noise and certify them with randomized smoothing."""


for _stage in (data, training, certification, reporting, benchmarks, cluster):
    for _command in _stage.COMMANDS:
        cli.add_command(_command)


def fail(message: str, code: int = 1) -> None:
    """The one way the CLI ends on an error: on a line of its own, even when a progress
    bar was drawing, then a non-zero exit."""
    end_line()
    click.echo(message, err=True)
    sys.exit(code)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except PeftsError as err:
        fail(f"error: {err}", err.exit_code)
    except OSError as err:
        # the machine refused (full disk, read-only folder, a parent that is a file):
        # one line naming the path; atomic writes left nothing half-written
        where = f": {err.filename}" if err.filename else ""
        fail(f"error: {err.strerror or err}{where}")
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as err:
        command = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) else ""
        fail(f"error: {command}{err.format_message()}", err.exit_code)


def run() -> None:
    """The `pefts` executable: ``main`` in a process that ends with the command (see
    pefts.runtime.startup); ``main`` itself stays fit to call in-process."""
    startup.own_process()
    try:
        main()
    finally:
        startup.command_over()
