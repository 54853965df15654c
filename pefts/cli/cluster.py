"""Before a cluster run: fetch external weights on the submit host; plan the cost."""

from __future__ import annotations

import click

from pefts.cli.options import AT_LEAST_ONE, POSITIVE
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


@click.command()
@configfile_option
@click.option("--target", default="all", show_default=True,
              help="Snakemake target to plan (experiments: every experiment)")
@click.option("--test-images", default=None, type=AT_LEAST_ONE,
              help="test images of the dataset (known for cifar10 and imagenet)")
@click.option("--replay", default=None, type=click.Path(dir_okay=False, exists=True),
              help="an earlier certification TSV whose hit rates estimate adaptive cost")
@click.option("--replay-n", default=None, type=AT_LEAST_ONE,
              help="its n, when the TSV has nA but no n column")
@click.option("--replay-sigma", default=None, type=POSITIVE,
              help="its sigma, when only radii are there: pA_lower = Phi(radius / sigma)")
@click.option("--passes-per-image", default=None, type=POSITIVE,
              help="adaptive estimation samples per image, as a stated figure")
@click.option("--rate", default=None, type=POSITIVE,
              help="samples/s at the config's precision (default: docs/cost.md's figures)")
@click.option("--rate-fixed", default=None, type=POSITIVE,
              help="samples/s of Cohen's fp32 protocol (default: an assumed figure)")
@click.option("--out-md", default=None, type=click.Path(dir_okay=False),
              help="write the table as a Markdown section")
@click.option("--append", is_flag=True, help="append to --out-md instead of replacing it")
def plan(configfiles, target, test_images, replay, replay_n, replay_sigma, passes_per_image,
         rate, rate_fixed, out_md, append) -> None:
    """Jobs per rule, forward passes and GPU-hours of a config, before running it."""
    from pathlib import Path

    from pefts.experiments import load_config
    from pefts.files import atomic_write_text
    from pefts.plan import (
        adaptive_passes,
        blackbox_training,
        certified_images,
        cost_table,
        job_counts,
        plan_costs,
    )

    config = load_config(configfiles)
    jobs = job_counts(configfiles, target)
    pairs = jobs.get("certify_shard", 0) // config["certify"]["shards"]
    images = certified_images(config, test_images)
    per_image, how = adaptive_passes(config, replay, replay_n, replay_sigma, passes_per_image)
    table = cost_table(plan_costs(config, pairs, images, per_image, rate_fixed, rate))
    name = " + ".join(configfiles) or "config.yaml"
    click.echo(f"{name} (target {target}): jobs per rule")
    for rule, count in sorted(jobs.items()):
        click.echo(f"  {rule:24s} {count:6d}")
    click.echo(f"certification: {pairs} (run, sigma) x {images} images; adaptive: {how}")
    click.echo(table.to_string(index=False))
    training = blackbox_training(config, rate)
    if len(training):
        click.echo("black-box training (SPSA):")
        click.echo(training.to_string(index=False))
    if out_md:
        section = (f"## `{name}` (target `{target}`)\n\n"
                   f"{pairs} (run, sigma) certified, {images} test images each; "
                   f"{sum(jobs.values()):,} jobs. Adaptive passes per image: {how}.\n\n"
                   f"{table.to_markdown(index=False)}\n\n")
        if len(training):
            section += ("Black-box training (SPSA; 2 x perturbations CLIP queries and one "
                        f"encoder pass per image and step):\n\n{training.to_markdown(index=False)}\n\n")
        before = Path(out_md).read_text() if append and Path(out_md).exists() else ""
        atomic_write_text(out_md, before + section)


COMMANDS = [fetch_weights, plan]
