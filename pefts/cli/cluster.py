"""Before a cluster run: fetch external weights on the submit host; plan the cost."""

from __future__ import annotations

import click

from pefts.errors import PeftsError

configfile_option = click.option(
    "--configfile", "configfiles", multiple=True, type=click.Path(dir_okay=False),
    help="config file(s), read like `snakemake --configfile` (default: config.yaml)")


@click.command("fetch-weights")
@configfile_option
@click.option("--weight", "weights", multiple=True, metavar="KIND:NAME",
              help="one external weight, e.g. timm:vit_base_patch16_224.mae (repeatable)")
@click.option("--results", default=None, help="results folder (default: the config's)")
@click.option("--force", is_flag=True, help="fetch again even if a verified copy is there")
def fetch_weights(configfiles: tuple[str, ...], weights: tuple[str, ...], results: str | None,
                  force: bool) -> None:
    """Fetch every external weight the config names (or the --weight ones) into
    <results>/weights, with its sha256: run it where there is internet."""
    from pefts.experiments import load_config
    from pefts.weights import external_weights, fetch, parse_weight

    if weights:
        wanted = [parse_weight(w) for w in weights]
        if results is None:
            raise PeftsError("--weight needs --results")
    else:
        config = load_config(configfiles)
        wanted, results = external_weights(config), results or config["results"]
    for weight in wanted:
        record = fetch(weight, results, force)
        click.echo(f"{weight.label()}\t{record['sha256']}\t{record['file']}")
    if not wanted:
        click.echo("the config names no external weights")


COMMANDS = [fetch_weights]
