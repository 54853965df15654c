"""Certification commands: CERTIFY and PREDICT on a shard, and merging shards."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from pefts.certification.setup import shard_setup
from pefts.cli.options import device_option, force_option, parse_floats
from pefts.errors import PeftsError
from pefts.option_types import AT_LEAST_ONE, INTEGER, POSITIVE, PRECISION, PROBABILITY, SEED, TSV_OUT
from pefts.runtime.files import refuse_existing
from pefts.runtime.startup import import_network_stack


def sampling_options(func, packed: bool = False):
    """The options of a shard's run; ``packed``: without the per-sigma --model, --sigma
    and --out (certify-packed takes them as --job triples)."""
    own = [] if packed else [
        click.option("--model", required=True, type=click.Path(dir_okay=False),
                     help="fine-tuned weights (.safetensors)"),
        click.option("--sigma", required=True, type=POSITIVE, help="smoothing noise level"),
        click.option("--out", required=True, type=TSV_OUT, help="TSV"),
    ]
    for option in reversed([
        *own[:1],
        click.option("--base", required=True, type=click.Path(dir_okay=False), help="base weights"),
        click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest"),
        *own[1:2],
        click.option("--n", "n", default=1000, show_default=True, type=AT_LEAST_ONE,
                     help="estimation samples"),
        click.option("--alpha", default=0.001, show_default=True, type=PROBABILITY,
                     help="failure probability"),
        click.option("--batch", default=1000, show_default=True, type=AT_LEAST_ONE),
        click.option("--skip", default=1, show_default=True, type=AT_LEAST_ONE,
                     help="use every skip-th test image"),
        click.option("--max", "max_count", default=-1, show_default=True, type=INTEGER,
                     help="at most this many images after skipping (<= 0: all)"),
        click.option("--seed", default=0, show_default=True, type=SEED, help="noise seed"),
        click.option("--shard", default="0/1", show_default=True,
                     help="K/N: the K-th of N interleaved slices"),
        *own[2:],
        device_option,
        click.option("--force", is_flag=True,
                     help="replace a finished output (an interrupted run resumes without it)"),
    ]):
        func = option(func)
    return func


def fast_path_options(func):
    for option in reversed([
        click.option("--precision", default="fp32", show_default=True,
                     type=PRECISION,
                     help="autocast the network (noise stays fp32); recorded in the rows"),
        click.option("--channels-last", is_flag=True, help="channels-last memory layout"),
        click.option("--compile", "compile_net", is_flag=True, help="torch.compile the network"),
        click.option("--merge-lora", is_flag=True,
                     help="fold LoRA into the weights for inference (outputs equal up to rounding)"),
    ]):
        func = option(func)
    return func


def adaptive_options(func):
    for option in reversed([
        click.option("--adaptive", is_flag=True,
                     help="anytime-valid sequential certification of a pool of images"),
        click.option("--n-max", default=None, type=AT_LEAST_ONE,
                     help="adaptive: most estimation samples per image (default: --n)"),
        click.option("--grid", "--radii", "radii", default="0,0.25,0.5,0.75,1.0", show_default=True,
                     help="adaptive: stop once the decision at each of these radii is settled "
                          "(radii are then truncated between grid points)"),
        click.option("--rtol", default=None, type=POSITIVE,
                     help="adaptive: stop once the radius is within this relative tolerance "
                          "(instead of grid decisions)"),
        click.option("--pool", default=256, show_default=True, type=AT_LEAST_ONE,
                     help="adaptive: most images in flight at once (their inputs stay on the device)"),
    ]):
        func = option(func)
    return func


def check_modes_options(ctx: click.Context, adaptive: bool, adaptive_only: tuple[str, ...]) -> None:
    """Refuse an adaptive option given without --adaptive: fixed n would ignore it (a
    --n-max 100 beside --n 5 would not make fixed n certify anything)."""
    if adaptive:
        return
    for name in adaptive_only:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            option = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise PeftsError(f"{option} applies only with --adaptive (fixed n samples --n "
                             "for every image): add --adaptive or drop it")


def default_compile_cache(out: str) -> Path:
    """Beside the shard's output: the shards of one (run, sigma) share their folder."""
    return Path(out).resolve().parent / "compile-cache"


def certify_options(func, packed: bool = False):
    for option in reversed([
        click.option("--n0", default=100, show_default=True, type=AT_LEAST_ONE,
                     help="selection samples"),
        adaptive_options,
        fast_path_options,
        click.option("--sound", is_flag=True,
                     help="sound in floating point (Voracek & Hein): 8-bit images, noise from the "
                          "Gaussian discretised to 1/255 drawn exactly, that distribution's "
                          "certificate"),
        click.option("--compile-cache", default=None, type=click.Path(file_okay=False),
                     help="with --compile: Inductor's cache folder, shared by the run's shards so "
                          "one compiles and the others load (default: compile-cache beside "
                          + ("the first --job's OUT)" if packed else "--out)")),
    ]):
        func = option(func)
    return sampling_options(func, packed)


def check_certify_options(adaptive: bool, n: int, n_max: int | None, alpha: float,
                          radii: str) -> tuple[float, ...]:
    """Refusals before anything loads: the adaptive-only options, the grid, and that the
    n each mode samples can certify at alpha. Returns the grid."""
    from pefts.certification.feasibility import check_can_certify

    check_modes_options(click.get_current_context(), adaptive, ("n_max", "radii", "rtol"))
    grid = parse_floats(radii, "--grid")
    if any(r < 0 for r in grid):
        raise PeftsError(f"--grid must be non-negative, got {radii!r}")
    # each mode checks the n it samples: fixed n draws --n, adaptive up to --n-max (or --n)
    if adaptive:
        check_can_certify(n_max or n, alpha, True, "--n-max" if n_max else "--n")
    else:
        check_can_certify(n, alpha, False, "--n")
    return tuple(grid)


def certify_shard(net, manifest, dataset, indices, torch_device, settings, *, out, sigma, n,
                  alpha, batch, seed, shard, force, n0, adaptive, n_max, grid, rtol, pool,
                  precision, channels_last, compile_net, merge_lora, sound, compile_cache,
                  keep_partial: bool = False) -> None:
    """CERTIFY every image of the shard not yet in its partial, and publish its TSV.
    What certify and certify-packed run per (model, sigma): the same settings, so their
    partials and outputs are interchangeable."""
    from pefts.certification.adaptive import AdaptivePlan
    from pefts.certification.fastpath import executed
    from pefts.certification.rows import (
        ADAPTIVE_COLUMNS,
        CERTIFY_COLUMNS,
        adaptive_rows,
        certify_rows,
    )
    from pefts.certification.shard_io import run_shard

    settings.update(n0=n0, n=n, alpha=alpha, seed=seed, command="certify")
    fast = {"precision": precision, "channels_last": channels_last, "compile": compile_net,
            "merge_lora": merge_lora}
    if fast != {"precision": "fp32", "channels_last": False, "compile": False, "merge_lora": False}:
        settings.update(fast)  # only when used, so resuming an older run still matches
    if compile_cache is None:
        compile_cache = default_compile_cache(out)
    net = executed(net, precision, channels_last, compile_net, merge_lora, compile_cache)
    if adaptive:
        plan = AdaptivePlan(sigma, alpha, n_max or n, grid, rtol)
        settings.update(adaptive=True, n_max=plan.n_max, radii=list(grid), rtol=rtol,
                        futility=plan.futility, stopping_rule=plan.rule,
                        precision=precision)
        columns = ADAPTIVE_COLUMNS
        rows = adaptive_rows(net, dataset, manifest["num_classes"], plan, n0, batch, pool, seed,
                             torch_device, precision, sound)
    else:
        columns = CERTIFY_COLUMNS + (["precision"] if precision != "fp32" else [])
        rows = certify_rows(net, dataset, manifest["num_classes"], sigma, n0, n, alpha, batch,
                            seed, torch_device, precision, pool, sound)
    run_shard(out, indices, settings, columns, rows, desc=f"certify {shard} sigma {sigma:g}",
              force=force, keep_partial=keep_partial)


@click.command()
@certify_options
def certify(model, base, data, sigma, n, alpha, batch, skip, max_count, seed, shard, out,
            device, force, n0, adaptive, n_max, radii, rtol, pool, precision, channels_last,
            compile_net, merge_lora, sound, compile_cache) -> None:
    """Cohen's CERTIFY on a shard of test images; resumes an interrupted run."""
    grid = check_certify_options(adaptive, n, n_max, alpha, radii)
    import_network_stack()  # after the checks: a refused option costs no import
    net, manifest, dataset, indices, torch_device, settings = shard_setup(
        model, base, data, skip, max_count, shard, device, sigma, out, force, sound)
    certify_shard(net, manifest, dataset, indices, torch_device, settings, out=out, sigma=sigma,
                  n=n, alpha=alpha, batch=batch, seed=seed, shard=shard, force=force, n0=n0,
                  adaptive=adaptive, n_max=n_max, grid=grid, rtol=rtol, pool=pool,
                  precision=precision, channels_last=channels_last, compile_net=compile_net,
                  merge_lora=merge_lora, sound=sound, compile_cache=compile_cache)
    click.echo(f"certified {len(indices)} images -> {out}")


@click.command("certify-packed")
@click.option("--job", "jobs", multiple=True, required=True, nargs=3,
              type=(POSITIVE, click.Path(dir_okay=False), TSV_OUT),
              metavar="SIGMA MODEL OUT",
              help="one (sigma, model) to certify into OUT, as certify --sigma --model --out "
                   "would (repeatable; certified in the order given)")
@functools.partial(certify_options, packed=True)
def certify_packed(jobs, base, data, n, alpha, batch, skip, max_count, seed, shard, device,
                   force, n0, adaptive, n_max, radii, rtol, pool, precision, channels_last,
                   compile_net, merge_lora, sound, compile_cache) -> None:
    """CERTIFY several models of one run (its sigmas) in one process, one after another:
    the data loads once and the process starts once. Each --job writes what `pefts
    certify` with the same options writes (rows, settings, resume): an interrupted run
    resumes each from its finished rows, a finished one costs nothing."""
    from pefts.certification.selection import parse_shard
    from pefts.certification.setup import check_output, load_test_split, model_setup
    from pefts.certification.shard_io import finish_partials
    from pefts.runtime.devices import resolve_device
    from pefts.runtime.files import resolved

    grid = check_certify_options(adaptive, n, n_max, alpha, radii)
    _, n_shards = parse_shard(shard)
    outs = [resolved(out, "--job OUT") for _, _, out in jobs]
    for i, (_, _, out) in enumerate(jobs):
        if outs[i] in outs[:i]:
            raise PeftsError(f"--job OUT {out} is given twice: one output per job")
        check_output(out, [m for _, m, _ in jobs] + [base, data], n_shards, force,
                     resumable=True)
    if compile_cache is None:
        compile_cache = default_compile_cache(jobs[0][2])
    import_network_stack()
    manifest, dataset, indices = load_test_split(data, skip, max_count, shard, sound)
    torch_device = resolve_device(device)
    # with --compile, the first model compiles; the next ones, of the same architecture,
    # run the same compiled code on their own weights (Dynamo's guards hold: no recompile)
    for sigma, model, out in jobs:
        net, settings = model_setup(model, base, manifest, skip, max_count, shard, torch_device,
                                    sigma, sound)
        certify_shard(net, manifest, dataset, indices, torch_device, settings, out=out,
                      sigma=sigma, n=n, alpha=alpha, batch=batch, seed=seed, shard=shard,
                      force=force, n0=n0, adaptive=adaptive, n_max=n_max, grid=grid, rtol=rtol,
                      pool=pool, precision=precision, channels_last=channels_last,
                      compile_net=compile_net, merge_lora=merge_lora, sound=sound,
                      compile_cache=compile_cache, keep_partial=True)
        del net
        click.echo(f"certified {len(indices)} images at sigma {sigma:g} -> {out}")
    finish_partials([out for _, _, out in jobs])


@click.command()
@sampling_options
def predict(model, base, data, sigma, n, alpha, batch, skip, max_count, seed, shard, out,
            device, force) -> None:
    """Cohen's PREDICT (binomial test, may abstain) on a shard of test images."""
    from pefts.certification.feasibility import check_can_predict
    from pefts.certification.rows import PREDICT_COLUMNS, predict_rows
    from pefts.certification.shard_io import run_shard

    check_can_predict(n, alpha)

    net, manifest, dataset, indices, torch_device, settings = shard_setup(
        model, base, data, skip, max_count, shard, device, sigma, out, force)
    settings.update(n=n, alpha=alpha, seed=seed, command="predict")
    rows = predict_rows(net, dataset, manifest["num_classes"], sigma, n, alpha, batch, seed,
                        torch_device)
    run_shard(out, indices, settings, PREDICT_COLUMNS, rows, desc=f"predict {shard}",
              force=force)
    click.echo(f"predicted {len(indices)} images -> {out}")


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=TSV_OUT)
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="data manifest: with --skip/--max, check that every selected image is there")
@click.option("--skip", default=1, show_default=True, type=AT_LEAST_ONE)
@click.option("--max", "max_count", default=-1, show_default=True, type=int)
@force_option
def merge(shards, out, data, skip, max_count, force) -> None:
    """Merge shard TSVs; refuses shards that miss or repeat an image."""
    from pefts.certification.results import merge_shards, write_tsv
    from pefts.certification.selection import selected_indices
    from pefts.data import read_manifest
    from pefts.runtime.files import refuse_clashes

    refuse_clashes({"--out": out}, [*shards, *([data] if data else [])])
    refuse_existing(out, force)
    expected = manifest = None
    if data:
        manifest = read_manifest(data)
        expected = selected_indices(manifest["num_test"], skip, max_count)
    merged, settings, parts = merge_shards(shards, expected)
    if manifest:
        given = {"manifest": manifest["_sha256"], "skip": skip, "max": max_count}
        for key, value in given.items():
            if settings.get(key) != value:
                raise PeftsError(f"the shards were certified with {key} {settings.get(key)!r}, "
                                 f"merge was given {value!r} (--data/--skip/--max)")
    write_tsv(merged, out, settings, shards=parts)
    click.echo(f"merged {len(shards)} shard(s), {len(merged)} images -> {out}")


COMMANDS = [certify, certify_packed, predict, merge]
