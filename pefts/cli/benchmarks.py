"""Benchmarks: throughput side by side, fixed n against adaptive."""

from __future__ import annotations

from pathlib import Path

import click

from pefts.certification.setup import shard_setup
from pefts.cli.certification import fast_path_options
from pefts.cli.options import device_option, page_option, parse_floats, write_page
from pefts.errors import PeftsError
from pefts.models.diffusion.releases import RELEASES
from pefts.option_types import AT_LEAST_ONE, POSITIVE, PROBABILITY, TSV_OUT, UNIT_INTERVAL
from pefts.runtime.startup import import_network_stack


@click.command()
@click.option("--model", default=None, type=click.Path(dir_okay=False),
              help="fine-tuned weights (default: a built-in tiny ViT on random 3x8x8 inputs)")
@click.option("--base", default=None, type=click.Path(dir_okay=False),
              help="base weights (with --model)")
@click.option("--image-size", default=None, type=AT_LEAST_ONE,
              help="side of the random input image (with --model; default: network input size)")
@click.option("--batch", default=1000, show_default=True, type=AT_LEAST_ONE)
@click.option("--n", "n", default=10000, show_default=True, type=AT_LEAST_ONE,
              help="noisy samples per measure")
@click.option("--n0", default=100, show_default=True, type=AT_LEAST_ONE,
              help="selection samples of certify")
@click.option("--repeats", default=3, show_default=True, type=AT_LEAST_ONE,
              help="timed runs per measure; the best is reported")
@click.option("--threads", default=None, type=AT_LEAST_ONE, help="torch CPU threads")
@click.option("--out", default=None, type=TSV_OUT, help="also write a TSV")
@click.option("--arch", default=None,
              help="a timm architecture with random weights (no download), e.g. vit_base_patch16_224")
@click.option("--num-classes", default=10, show_default=True, type=AT_LEAST_ONE, help="with --arch")
@click.option("--method", default="none", show_default=True, help="PEFT method wrapped (with --arch)")
@click.option("--diffusion", default=None, type=click.Path(),
              help="also time a diffusion denoiser in front of the model: a local diffusers "
                   "folder, or with --diffusion-release that release's checkpoint file")
@click.option("--diffusion-release", default=None, type=click.Choice(sorted(RELEASES)),
              help="time this released UNet (e.g. Carlini et al.'s 552M guided-diffusion "
                   "model); without --diffusion, with random weights (same cost, no download)")
@page_option
@fast_path_options
@device_option
def benchmark(model, base, image_size, batch, n, n0, repeats, threads, out, out_md, arch,
              num_classes, method, diffusion, diffusion_release, precision, channels_last,
              compile_net, merge_lora, device) -> None:
    """Sampling throughput: raw forward vs the certifier vs a Cohen-style loop."""
    if (model is None) != (base is None):
        raise PeftsError("give --model and --base together, or neither for the built-in model")
    if arch and model:
        raise PeftsError("give --arch or --model, not both")
    if image_size is not None and model is None and arch is None:
        raise PeftsError("--image-size applies only with --model or --arch")
    import_network_stack()  # after the checks: a refused option costs no import
    import torch

    from pefts.benchmarks.throughput import (
        add_diffusion_row,
        artifact_subject,
        builtin_subject,
        diffusion_denoiser,
        named_subject,
        run_benchmark,
        to_markdown,
    )
    from pefts.certification.fastpath import executed
    from pefts.runtime.artifacts import atomic_write_text
    from pefts.runtime.devices import resolve_device

    # a bad folder or file is refused before minutes of timing, not after
    denoiser = diffusion_denoiser(diffusion, diffusion_release) \
        if diffusion or diffusion_release else None
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    if arch:
        subject = named_subject(arch, num_classes, image_size or 32, method, torch_device)
    elif model:
        subject = artifact_subject(model, base, torch_device, image_size)
    else:
        subject = builtin_subject(torch_device)
    # every row (raw forward included) runs the network as executed: same precision and layout
    subject.net = executed(subject.net, precision, channels_last, compile_net, merge_lora)
    subject.name += f"; {precision}" + (", merged LoRA" if merge_lora else "")
    result = run_benchmark(subject, torch_device, batch=batch, n=n, n0=n0, repeats=repeats)
    if denoiser is not None:
        add_diffusion_row(result, subject, denoiser, torch_device)
    if out:
        atomic_write_text(out, result.table.to_csv(sep="\t", index=False))
    printed = f"{result.header()}\n\n{to_markdown(result.table)}\n{result.summary()}\n"
    click.echo(printed, nl=False)
    write_page(out_md, printed)


@click.command("benchmark-adaptive")
@click.option("--model", required=True, type=click.Path(dir_okay=False))
@click.option("--base", required=True, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False))
@click.option("--sigma", required=True, type=POSITIVE)
@click.option("--n", "n", default=100_000, show_default=True, type=AT_LEAST_ONE,
              help="fixed n, and n_max of the adaptive run")
@click.option("--n0", default=100, show_default=True, type=AT_LEAST_ONE)
@click.option("--alpha", default=0.001, show_default=True, type=PROBABILITY)
@click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True)
@click.option("--batch", default=1000, show_default=True, type=AT_LEAST_ONE)
@click.option("--pool", default=256, show_default=True, type=AT_LEAST_ONE)
@click.option("--skip", default=1, show_default=True, type=AT_LEAST_ONE)
@click.option("--max", "max_count", default=30, show_default=True)
@click.option("--seeds", default="0,1", show_default=True,
              help="noise seeds of the fixed-n runs (two show their spread); adaptive uses the first")
@click.option("--out", default=None, type=TSV_OUT, help="also write a TSV")
@page_option
@device_option
def benchmark_adaptive(model, base, data, sigma, n, n0, alpha, radii, batch, pool, skip,
                       max_count, seeds, out, out_md, device) -> None:
    """The same images certified with fixed n and adaptively (n_max = n), side by side."""
    import_network_stack()
    from pefts.benchmarks.adaptive import compare
    from pefts.benchmarks.throughput import device_name
    from pefts.runtime.artifacts import atomic_write_text

    grid = list(parse_floats(radii, "--radii"))
    seed_list = [int(s) for s in parse_floats(seeds, "--seeds")]
    net, manifest, dataset, indices, torch_device, _ = shard_setup(
        model, base, data, skip, max_count, "0/1", device, sigma)
    result = compare(net, dataset, manifest["num_classes"], indices, sigma, n, n0, alpha, grid,
                     batch, pool, seed_list, torch_device)
    if out:
        atomic_write_text(out, result.table.to_csv(sep="\t", index=False))
    readable = result.table.map(lambda v: f"{v:,}" if isinstance(v, int) else v)
    printed = "\n".join([
        f"device: {device_name(torch_device)}; {len(indices)} images; {Path(model).name}; "
        f"sigma {sigma:g}; n0 {n0}, n = n_max {n}, alpha {alpha:g}; batch {batch}, pool {pool}",
        "",
        readable.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] + ["right"] * len(result.runs)),
        "",
        "\n\n".join(result.summary()), ""])
    click.echo(printed, nl=False)
    write_page(out_md, printed)


@click.command("benchmark-replay")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--grid", "grids", multiple=True, default=("sigma",), show_default=True,
              help="'sigma' (0 to 2 sigma by sigma/4), radii '0,0.5,1', or a config .yaml "
                   "(its certify.grid); once for all logs or once per log, in order")
@click.option("--sigma", default=None, type=POSITIVE,
              help="sigma of every log (default: read from a sigma_X part of each path)")
@click.option("--n", "n", default=100_000, show_default=True, type=AT_LEAST_ONE,
              help="fixed n, and n_max of ours")
@click.option("--n0", default=100, show_default=True, type=AT_LEAST_ONE)
@click.option("--alpha", default=0.001, show_default=True, type=PROBABILITY)
@click.option("--abstain-p", default=0.5, show_default=True, type=UNIT_INTERVAL,
              help="hit rate given to an abstention (its log has no rate)")
@click.option("--reps", default=10, show_default=True, type=AT_LEAST_ONE,
              help="replays averaged for fixed n and ours")
@click.option("--seed", default=0, show_default=True, type=int)
@page_option
def benchmark_replay(logs, grids, sigma, n, n0, alpha, abstain_p, reps, seed, out_md) -> None:
    """Fixed n, our stopping rule and an oracle that knows p, replayed on the hit rates of
    certification logs (Cohen's TSV format): passes and certified counts side by side."""
    import numpy as np

    from pefts.benchmarks.replay import grid_of, read_log, replay, summary, table
    from pefts.certification.adaptive import STOPPING_RULE

    if len(grids) not in (1, len(logs)):
        raise PeftsError(f"give --grid once or once per log ({len(logs)}), not {len(grids)} times")
    rng = np.random.default_rng(seed)
    replays = []
    for path, spec in zip(logs, grids * len(logs) if len(grids) == 1 else grids, strict=False):
        log = read_log(path, sigma, abstain_p)
        replays.append(replay(log, grid_of(spec, log.sigma), n, n0, alpha, reps, rng))
    printed = "\n".join([
        f"stopping rule {STOPPING_RULE}; n0 {n0}, n = n_max {n:,}, alpha {alpha:g}; abstention "
        f"p = {abstain_p:g}; {reps} replays; grid {', '.join(dict.fromkeys(grids))}",
        "", table(replays).to_markdown(index=False, disable_numparse=True,
                                       colalign=["left", "left", "right", "right", "right"]),
        "", summary(replays), ""])
    click.echo(printed, nl=False)
    write_page(out_md, printed)


@click.command("benchmark-precision")
@click.option("--images", default=12, show_default=True, type=AT_LEAST_ONE)
@click.option("--sigma", default=0.25, show_default=True, type=POSITIVE)
@click.option("--n", "n", default=300, show_default=True, type=AT_LEAST_ONE)
@click.option("--n0", default=30, show_default=True, type=AT_LEAST_ONE)
@click.option("--alpha", default=0.001, show_default=True, type=PROBABILITY)
@click.option("--radii", default="0,0.125,0.25,0.375", show_default=True)
@click.option("--flip-samples", default=100, show_default=True, type=AT_LEAST_ONE,
              help="noisy copies of each image on which bf16's and fp32's votes are compared")
@click.option("--batch", default=500, show_default=True, type=AT_LEAST_ONE)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--full-size", is_flag=True,
              help="the released CIFAR-10 UNet's size (52.5M parameters; a GPU's work)")
@page_option
@device_option
def benchmark_precision(images, sigma, n, n0, alpha, radii, flip_samples, batch, seed, full_size,
                        out_md, device) -> None:
    """The diffusion row certified in bf16 and fp32 on the same noise, and in fp32 on
    other noise (sampling error): certified counts side by side, random-weight models."""
    import_network_stack()
    from pefts.benchmarks.precision import SIDE, compare_precisions
    from pefts.benchmarks.throughput import device_name
    from pefts.runtime.devices import resolve_device

    torch_device = resolve_device(device)
    grid = list(parse_floats(radii, "--radii"))
    result = compare_precisions(images, sigma, n, n0, alpha, batch, grid, seed, torch_device,
                                full_size, flip_samples)
    printed = "\n".join([
        f"device: {device_name(torch_device)}; {images} random images, CIFAR-10 diffusion row "
        f"({'released' if full_size else 'small'} UNet, random weights) + tiny ViT, "
        f"3x{SIDE}x{SIDE}; sigma "
        f"{sigma:g}; Cohen's fixed n = {n:,}, n0 {n0}, alpha {alpha:g}",
        "", result.table.to_markdown(index=False), "", *result.summary, ""])
    click.echo(printed, nl=False)
    write_page(out_md, printed)



@click.command("benchmark-startup")
@click.option("--configfile", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a preset: its base network, methods, precision and LoRA merge")
@click.option("--methods", default=None,
              help="comma-separated methods of the preset (default: all of them)")
@click.option("--compile", "compiled", default="",
              help="comma-separated methods also timed compiled (torch.compile)")
@click.option("--batch", default=None, type=AT_LEAST_ONE,
              help="samples of the first batch (default: the preset's certify.batch)")
@click.option("--threads", default=None, type=AT_LEAST_ONE, help="torch CPU threads per job")
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="instead of the preset's certify.precision (a CPU without bf16 units "
                   "emulates it, minutes per batch)")
@click.option("--folder", default=None, type=click.Path(file_okay=False),
              help="where the random-weight models are written (default: a temporary folder)")
@click.option("--out", default=None, type=TSV_OUT,
              help="also write a TSV (what `pefts plan` reads: pefts.benchmarks.startup.read_startup)")
@page_option
@device_option
def benchmark_startup(configfile, methods, compiled, batch, threads, precision, folder, out,
                      out_md, device) -> None:
    """Seconds from a job's process start to its first certified sample, per method, in
    a fresh process each, split into imports, hashing, reading, building, merging,
    compiling and the first batch; cold (a run's first job) and warm (its later shards)."""
    import tempfile

    import yaml

    from pefts.benchmarks.startup import measure, preset_cases, summary, to_markdown
    from pefts.benchmarks.throughput import device_name
    from pefts.runtime.artifacts import atomic_write_text
    from pefts.runtime.devices import resolve_device

    with open(configfile) as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict) or not {"base", "methods"} <= set(config):
        raise PeftsError(f"{configfile} is not a preset (it needs base and methods)")
    if precision:
        config.setdefault("certify", {})["precision"] = precision
    chosen = [m for m in (methods or "").split(",") if m] or None
    subject, cases, preset_batch = preset_cases(config, chosen, [m for m in compiled.split(",") if m])
    batch = batch or preset_batch
    torch_device = resolve_device(device)
    header = (f"device: {device_name(torch_device)}; torch threads per job: "
              f"{threads or 'default'}; {Path(configfile).name}: {subject.arch} (random "
              f"weights) on 3x{subject.image_size}x{subject.image_size}, "
              f"{', '.join(sorted({c.path for c in cases}))}; first batch {batch} samples of "
              "one image; seconds")

    def written(table, final: bool = False) -> str:
        """The TSV and the page so far: a stopped run leaves what it measured."""
        if out:
            atomic_write_text(out, table.to_csv(sep="\t", index=False))
        partial = "" if final else (f"partial: {len(table)} of {2 * len(cases)} rows "
                                    "measured so far\n\n")
        printed = "\n".join([header, "", partial + to_markdown(table), summary(table)])
        write_page(out_md, printed)
        return printed

    with tempfile.TemporaryDirectory(prefix="pefts-startup-") as scratch:
        table = measure(subject, cases, Path(folder or scratch), batch, threads,
                        str(torch_device), measured=written)
    click.echo(written(table, final=True), nl=False)


COMMANDS = [benchmark, benchmark_adaptive, benchmark_replay, benchmark_precision,
            benchmark_startup]
