"""Before a cluster run: fetch external weights on the submit host; plan the cost."""

from __future__ import annotations

import click

from pefts.errors import PeftsError
from pefts.option_types import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE

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
    from pefts.study.experiments import external_weights, load_config
    from pefts.study.weights import fetch, parse_weight

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
@click.option("--replay", "replays", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="an earlier certification TSV whose hit rates estimate adaptive cost "
                   "(repeatable: one per sigma, each with its --replay-sigma)")
@click.option("--replay-n", default=None, type=AT_LEAST_ONE,
              help="its n, when the TSV has nA but no n column")
@click.option("--replay-sigma", "replay_sigmas", multiple=True, type=POSITIVE,
              help="the sigma each --replay was certified at, in the same order")
@click.option("--passes-per-image", default=None, type=POSITIVE,
              help="adaptive estimation samples per image, as a stated figure (default: "
                   "the replays, else certify.samples_per_image, else the default model)")
@click.option("--rate", default=None, type=POSITIVE,
              help="samples/s of ViT-B/16 + LoRA on the config's path, also for training "
                   "(default: the H200's measured figure for each path); every method is "
                   "scaled from it by its FLOPs")
@click.option("--rate-fixed", default=None, type=POSITIVE,
              help="samples/s of Cohen's fp32 protocol (default: the H200's, measured)")
@click.option("--startup-s", default=None, type=NON_NEGATIVE,
              help="seconds each GPU job pays before its first sample (default: an assumed 60)")
@click.option("--startup-tsv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="seconds each GPU job pays, measured: `pefts benchmark-startup --out` "
                   "on the machine the study runs on (each method's first job, cold)")
@click.option("--out-md", default=None, type=click.Path(dir_okay=False),
              help="write the table as a Markdown section")
@click.option("--append", is_flag=True, help="append to --out-md instead of replacing it")
def plan(configfiles, target, test_images, replays, replay_n, replay_sigmas, passes_per_image,
         rate, rate_fixed, startup_s, startup_tsv, out_md, append) -> None:
    """The whole study's GPU-hours before running it: every training job, certification
    and each GPU job's start-up, per run and in total; jobs per rule from the DAG."""
    from pathlib import Path

    from pefts.runtime.files import atomic_write_text
    from pefts.study import plan as p
    from pefts.study.experiments import load_config
    from pefts.study.forward_cost import REFERENCE_GFLOP

    config = load_config(configfiles)
    if len(replays) != len(replay_sigmas):
        raise PeftsError(f"{len(replays)} --replay but {len(replay_sigmas)} --replay-sigma: "
                         "give the sigma each replay was certified at, in the same order")
    output = p.dry_run(configfiles, target)
    jobs = p.rule_counts(output)
    pairs = p.dag_cost_pairs(config, p.dag_pairs(output), test_images, p.dag_packs(output))
    adaptive = p.adaptive_per_sigma(config, list(zip(replays, replay_sigmas, strict=True)),
                                    replay_n, passes_per_image)
    reference = REFERENCE_GFLOP
    protocols = p.protocols(config, adaptive, rate_fixed, rate)
    # the config's own way: adaptive, or fixed n on its path
    own = protocols[-1] if config["certify"]["adaptive"] else protocols[1]
    if startup_s is not None and startup_tsv:
        raise PeftsError("give --startup-s or --startup-tsv, not both")
    startup = p.STARTUP_S if startup_s is None else startup_s
    startup_how = "--startup-s" if startup_s is not None else "assumed, not measured"
    if startup_tsv:
        from pefts.benchmarks.startup import measured_startup

        startup, startup_how = measured_startup(startup_tsv, config["methods"])
    gpu_jobs = sum(jobs.get(rule, 0) for rule in p.GPU_RULES)
    cert_jobs = p.certify_job_count(pairs)
    packs = len({(pair.run, pair.pack) for pair in pairs if pair.pack})
    table = p.cost_table(pairs, protocols, reference, cert_jobs * startup / 3600)
    runs = p.run_table(pairs, own, reference)
    training = p.training_jobs(config, output)
    train_table = p.training_table(training, reference, rate)
    study = p.study_table(pairs, own, training, reference, rate, startup,
                          sum(jobs.values()) - gpu_jobs)
    name = " + ".join(configfiles) or "config.yaml"
    used = sorted({pair.sigma for pair in pairs})
    how = "; ".join(f"sigma {s:g}: {adaptive[s][0]:,.0f} ({adaptive[s][1]})" for s in used)
    totals = study.iloc[-1]
    cert_h = float(totals["certify GPU-h"].replace(",", ""))
    cert_start = cert_jobs * startup / 3600
    longest = p.longest_job_minutes(pairs, own, reference)
    packed = (f" ({packs:,} of them packing {sum(1 for pair in pairs if pair.pack):,} sigmas "
              "several to a job)" if packs else "")
    headline = (f"Whole study: {totals['GPU-h']} H200-hours ({totals['training GPU-h']} training, "
                f"{totals['certify GPU-h']} certification, {totals['start-up GPU-h']} start-up of "
                f"{gpu_jobs:,} GPU jobs at {startup:g} s each, {startup_how}). Certification with "
                f"its start-up: {cert_h + cert_start:,.2f} H200-hours in {cert_jobs:,} jobs"
                f"{packed}, start-up {100 * cert_start / max(cert_h + cert_start, 1e-12):.1f}% "
                f"of it; longest job {longest:.1f} min planned ({own.name}).")
    summary = (f"{len(pairs)} (run, sigma) certified (from the DAG), "
               f"{sum(pair.images for pair in pairs):,} images in all; {sum(jobs.values()):,} jobs, "
               f"{gpu_jobs:,} of them GPU jobs. Adaptive estimation samples per image: {how}.")
    click.echo(f"{name} (target {target}): jobs per rule")
    for rule, count in sorted(jobs.items()):
        click.echo(f"  {rule:24s} {count:6d}")
    click.echo(headline)
    click.echo(study.to_string(index=False))
    click.echo(summary)
    click.echo(table.to_string(index=False))
    click.echo(runs.to_string(index=False))
    if len(train_table):
        click.echo("training:")
        click.echo(train_table.to_string(index=False))
    if out_md:
        section = (f"## `{name}` (target `{target}`)\n\n{headline}\n\n"
                   f"{study.to_markdown(index=False)}\n\n### Certification\n\n{summary}\n\n"
                   f"{table.to_markdown(index=False)}\n\nPer run ({own.name}):\n\n"
                   f"{runs.to_markdown(index=False)}\n\n")
        if len(train_table):
            section += f"### Training\n\n{train_table.to_markdown(index=False)}\n\n"
        before = Path(out_md).read_text() if append and Path(out_md).exists() else ""
        atomic_write_text(out_md, before + section)


COMMANDS = [fetch_weights, plan]
