"""The `pefts` command line: a thin click layer over the package, one module per stage.

Every error the user can cause ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys

import click

from pefts.cli import benchmarks, certification, cluster, data, reporting, training
from pefts.cli.options import FiniteFloat
from pefts.errors import PeftsError

__all__ = ["FiniteFloat", "cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pefts")
def cli() -> None:
    """PEFTSmoothing: fine-tune classifiers on noise and certify them with randomized smoothing."""


for _stage in (data, training, certification, reporting, benchmarks, cluster):
    for _command in _stage.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except PeftsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        # the machine refused (full disk, read-only folder, a parent that is a file):
        # one line naming the path; atomic writes left nothing half-written
        where = f": {err.filename}" if err.filename else ""
        click.echo(f"error: {err.strerror or err}{where}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        command = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) else ""
        click.echo(f"error: {command}{err.format_message()}", err=True)
        sys.exit(err.exit_code)
