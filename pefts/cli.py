"""The `pefts` command line: a thin click layer over the package.

Every error the user can cause ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from pefts.errors import PeftsError


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses nan and +-inf (FloatRange lets nan through:
    every comparison with nan is false)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return value


# every numeric option of every command has one of these types (or click.INT, which
# refuses nan and inf by itself); tests/test_cli_errors.py sweeps bad values over them
POSITIVE = FiniteFloat(min=0.0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0.0)
PROBABILITY = FiniteFloat(min=0.0, max=1.0, min_open=True, max_open=True)
AT_LEAST_ONE = click.IntRange(min=1)
SEED = click.IntRange(min=0, max=2**63 - 1)
RUN = click.Tuple([str, POSITIVE, click.Path(dir_okay=False)])


def parse_json(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise PeftsError(f"{option} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise PeftsError(f"{option} must be a JSON object, got {text!r}")
    return value


def refuse_existing(path: str | Path, force: bool) -> None:
    if Path(path).exists() and not force:
        raise PeftsError(f"{path} already exists; pass --force to replace it")


def device_option(func):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (a leased GPU if any, else CPU), cpu, cuda or cuda:N")(func)


def force_option(func):
    return click.option("--force", is_flag=True, help="replace an existing output")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pefts")
def cli() -> None:
    """PEFTSmoothing: fine-tune classifiers on noise and certify them with randomized smoothing."""


@cli.command()
@click.option("--dataset", required=True, help="digits, cifar10, imagenet or imagefolder")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="folder for manifest.json (and bundled images)")
@click.option("--root", default=None, help="local data folder (cifar10, imagenet, imagefolder)")
@click.option("--download/--no-download", default=False, help="allow torchvision to download")
@click.option("--images", default=None,
              help='folder images, JSON: {"resize": 256 or [h, w], "crop": 224, "augment": true}')
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="seed of the train/test split (digits)")
@click.option("--classes", default=None,
              help="keep only these labels, e.g. 5,6,7,8,9 (numbered 0..k-1 in this order)")
def prepare(dataset: str, out_dir: str, root: str | None, download: bool, images: str | None,
            seed: int, classes: str | None) -> None:
    """Prepare a dataset and write its manifest."""
    from pefts.data import prepare as prepare_data

    try:
        subset = [int(c) for c in classes.split(",")] if classes else None
    except ValueError:
        raise PeftsError(f"--classes must be comma-separated integers, got {classes!r}") from None
    manifest = prepare_data(dataset, out_dir, root=root, download=download, seed=seed,
                            classes=subset, images=parse_json(images, "--images") if images else None)
    click.echo(f"{dataset}: {manifest['num_train']} train, {manifest['num_test']} test images, "
               f"{manifest['num_classes']} classes -> {out_dir}/manifest.json")


@cli.command("train-base")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest.json")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="weights .safetensors")
@click.option("--arch", required=True, help="timm architecture name")
@click.option("--input-size", required=True, type=AT_LEAST_ONE, help="side the network sees")
@click.option("--model-kwargs", default=None, help="JSON of extra timm.create_model arguments")
@click.option("--mean", default="0.5,0.5,0.5", show_default=True)
@click.option("--std", default="0.5,0.5,0.5", show_default=True)
@click.option("--pretrained", is_flag=True, help="start from timm's pretrained weights")
@click.option("--pretrained-file", default=None, help="start from weights in a local file")
@click.option("--train", "train_json", default=None, help="JSON of training options")
@device_option
@force_option
def train_base(data: str, out: str, arch: str, input_size: int, model_kwargs: str | None,
               mean: str, std: str, pretrained: bool, pretrained_file: str | None,
               train_json: str | None, device: str, force: bool) -> None:
    """Train the base classifier on clean images (0 epochs: keep pretrained weights)."""
    from pefts.devices import resolve_device
    from pefts.runs import train_base as run

    refuse_existing(out, force)
    if len(parse_floats(mean, "--mean")) != len(parse_floats(std, "--std")):
        raise PeftsError(f"--mean and --std must have one value per channel each, got {mean!r} and {std!r}")
    spec = {"arch": arch, "input_size": input_size,
            "model_kwargs": parse_json(model_kwargs, "--model-kwargs"),
            "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std", 0.0, True)}
    meta = run(data, out, spec, parse_json(train_json, "--train"), pretrained, pretrained_file,
               resolve_device(device))
    click.echo(f"base {arch}: clean validation accuracy "
               f"{fmt_accuracy(meta['metrics']['clean_val_accuracy'])} -> {out}")


@cli.command("adapt-base")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="manifest.json of the downstream task")
@click.option("--source", required=True, type=click.Path(dir_okay=False),
              help="base classifier trained on the source task")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="weights .safetensors")
@click.option("--train", "train_json", default=None, help="JSON of training options")
@device_option
@force_option
def adapt_base(data: str, source: str, out: str, train_json: str | None, device: str,
               force: bool) -> None:
    """Fine-tune a base classifier on clean downstream data (round one of two)."""
    from pefts.devices import resolve_device
    from pefts.runs import adapt_base as run

    refuse_existing(out, force)
    meta = run(data, source, out, parse_json(train_json, "--train"), resolve_device(device))
    click.echo(f"adapted {source}: clean validation accuracy "
               f"{fmt_accuracy(meta['metrics']['clean_val_accuracy'])} -> {out}")


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
        if not math.isfinite(v) or v < low or (low_open and v == low):
            bound = f"{'>' if low_open else '>='} {low:g}" if math.isfinite(low) else "finite"
            raise PeftsError(f"{option} must be comma-separated finite numbers {bound}, "
                             f"got {text!r}")
    return values


@cli.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest.json")
@click.option("--base", required=True, type=click.Path(dir_okay=False), help="base weights")
@click.option("--method", required=True, help="a registered PEFT method (see `pefts methods`)")
@click.option("--sigma", required=True, type=POSITIVE, help="noise level of training")
@click.option("--hparams", default=None, help="JSON of the method's hyper-parameters")
@click.option("--train", "train_json", default=None, help="JSON of training options")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="weights .safetensors")
@device_option
@force_option
def finetune(data: str, base: str, method: str, sigma: float, hparams: str | None,
             train_json: str | None, out: str, device: str, force: bool) -> None:
    """PEFTSmoothing: fine-tune one method on Gaussian-noised images."""
    from pefts.devices import resolve_device
    from pefts.runs import finetune as run

    refuse_existing(out, force)
    meta = run(data, base, out, method, sigma, parse_json(hparams, "--hparams"),
               parse_json(train_json, "--train"), resolve_device(device))
    click.echo(f"{method} sigma={sigma}: {meta['trainable_params']:,} trainable parameters, "
               f"noisy validation accuracy {fmt_accuracy(meta['metrics']['noisy_val_accuracy'])} "
               f"-> {out}")


@cli.command()
def methods() -> None:
    """List the registered methods and their hyper-parameters."""
    from pefts.methods import METHODS

    for name, cls in sorted(METHODS.items()):
        ranges = {key: spec.describe() for key, spec in cls.specs.items()}
        click.echo(f"{name}\t{json.dumps(cls.defaults)}\t{json.dumps(ranges)}")


def sampling_options(func):
    for option in reversed([
        click.option("--model", required=True, type=click.Path(dir_okay=False),
                     help="fine-tuned weights (.safetensors)"),
        click.option("--base", required=True, type=click.Path(dir_okay=False), help="base weights"),
        click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest"),
        click.option("--sigma", required=True, type=POSITIVE, help="smoothing noise level"),
        click.option("--n", "n", default=1000, show_default=True, type=AT_LEAST_ONE,
                     help="estimation samples"),
        click.option("--alpha", default=0.001, show_default=True, type=PROBABILITY,
                     help="failure probability"),
        click.option("--batch", default=1000, show_default=True, type=AT_LEAST_ONE),
        click.option("--skip", default=1, show_default=True, type=AT_LEAST_ONE,
                     help="use every skip-th test image"),
        click.option("--max", "max_count", default=-1, show_default=True, type=int,
                     help="at most this many images after skipping (<= 0: all)"),
        click.option("--seed", default=0, show_default=True, type=SEED, help="noise seed"),
        click.option("--shard", default="0/1", show_default=True,
                     help="K/N: the K-th of N interleaved slices"),
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="TSV"),
        device_option,
        click.option("--force", is_flag=True,
                     help="replace a finished output (an interrupted run resumes without it)"),
    ]):
        func = option(func)
    return func


def shard_setup(model: str, base: str, data: str, skip: int, max_count: int, shard: str,
                device: str, sigma: float, out: str | None = None, force: bool = False):
    """Everything certify and predict share: validation first, then loading."""
    from pefts.artifacts import file_digest
    from pefts.certification.selection import parse_shard, selected_indices, shard_indices
    from pefts.data import load_split, read_manifest
    from pefts.devices import resolve_device
    from pefts.methods import load_model

    k, n_shards = parse_shard(shard)
    if out is not None:  # None: nothing is written (the benchmark)
        refuse_existing(out, force)
    manifest = read_manifest(data)
    dataset = load_split(manifest, "test")
    indices = shard_indices(selected_indices(len(dataset), skip, max_count), k, n_shards)
    torch_device = resolve_device(device)
    net, meta = load_model(model, base, torch_device)
    if meta["num_classes"] != manifest["num_classes"]:
        raise PeftsError(f"{model} has {meta['num_classes']} classes, data has {manifest['num_classes']}")
    # identifies the data (which test images of which prepared dataset) and the model,
    # so no resume, merge or summary ever mixes rows of two runs
    settings = {"model": file_digest(model), "base": meta["base_sha256"], "method": meta["method"],
                "sigma": sigma, "dataset": manifest["dataset"],
                "class_subset": manifest.get("class_subset"), "split": "test",
                "manifest": file_digest(data), "skip": skip, "max": max_count, "shard": shard,
                "device": torch_device.type}
    return net, manifest, dataset, indices, torch_device, settings


def fast_path_options(func):
    for option in reversed([
        click.option("--precision", default="fp32", show_default=True,
                     type=click.Choice(["fp32", "bf16", "fp16"]),
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
        click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True,
                     help="adaptive: stop once the decision at each of these radii is settled"),
        click.option("--rtol", default=None, type=POSITIVE,
                     help="adaptive: stop once the radius is within this relative tolerance "
                          "(instead of grid decisions)"),
        click.option("--pool", default=256, show_default=True, type=AT_LEAST_ONE,
                     help="adaptive: most images in flight at once (their inputs stay on the device)"),
    ]):
        func = option(func)
    return func


@cli.command()
@sampling_options
@click.option("--n0", default=100, show_default=True, type=AT_LEAST_ONE, help="selection samples")
@adaptive_options
@fast_path_options
def certify(model, base, data, sigma, n, alpha, batch, skip, max_count, seed, shard, out,
            device, force, n0, adaptive, n_max, radii, rtol, pool, precision, channels_last,
            compile_net, merge_lora) -> None:
    """Cohen's CERTIFY on a shard of test images; resumes an interrupted run."""
    from pefts.certification.adaptive import AdaptivePlan
    from pefts.certification.fastpath import executed
    from pefts.certification.rows import (
        ADAPTIVE_COLUMNS,
        CERTIFY_COLUMNS,
        adaptive_rows,
        certify_rows,
    )
    from pefts.certification.shard_io import run_shard

    grid = parse_floats(radii, "--radii")
    if any(r < 0 for r in grid):
        raise PeftsError(f"--radii must be non-negative, got {radii!r}")
    net, manifest, dataset, indices, torch_device, settings = shard_setup(
        model, base, data, skip, max_count, shard, device, sigma, out, force)
    settings.update(n0=n0, n=n, alpha=alpha, seed=seed, command="certify")
    fast = {"precision": precision, "channels_last": channels_last, "compile": compile_net,
            "merge_lora": merge_lora}
    if fast != {"precision": "fp32", "channels_last": False, "compile": False, "merge_lora": False}:
        settings.update(fast)  # only when used, so resuming an older run still matches
    net = executed(net, precision, channels_last, compile_net, merge_lora)
    if adaptive:
        plan = AdaptivePlan(sigma, alpha, n_max or n, grid, rtol)
        settings.update(adaptive=True, n_max=plan.n_max, radii=list(grid), rtol=rtol,
                        futility=plan.futility, precision=precision)
        columns = ADAPTIVE_COLUMNS
        rows = adaptive_rows(net, dataset, manifest["num_classes"], plan, n0, batch, pool, seed,
                             torch_device, precision)
    else:
        columns = CERTIFY_COLUMNS + (["precision"] if precision != "fp32" else [])
        rows = certify_rows(net, dataset, manifest["num_classes"], sigma, n0, n, alpha, batch,
                            seed, torch_device, precision)
    run_shard(out, indices, settings, columns, rows, desc=f"certify {shard}")
    click.echo(f"certified {len(indices)} images -> {out}")


@cli.command()
@sampling_options
def predict(model, base, data, sigma, n, alpha, batch, skip, max_count, seed, shard, out,
            device, force) -> None:
    """Cohen's PREDICT (binomial test, may abstain) on a shard of test images."""
    from pefts.certification.rows import PREDICT_COLUMNS, predict_rows
    from pefts.certification.shard_io import run_shard

    net, manifest, dataset, indices, torch_device, settings = shard_setup(
        model, base, data, skip, max_count, shard, device, sigma, out, force)
    settings.update(n=n, alpha=alpha, seed=seed, command="predict")
    rows = predict_rows(net, dataset, manifest["num_classes"], sigma, n, alpha, batch, seed,
                        torch_device)
    run_shard(out, indices, settings, PREDICT_COLUMNS, rows, desc=f"predict {shard}")
    click.echo(f"predicted {len(indices)} images -> {out}")


@cli.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="data manifest: with --skip/--max, check that every selected image is there")
@click.option("--skip", default=1, show_default=True, type=AT_LEAST_ONE)
@click.option("--max", "max_count", default=-1, show_default=True, type=int)
@force_option
def merge(shards, out, data, skip, max_count, force) -> None:
    """Merge shard TSVs; refuses shards that miss or repeat an image."""
    from pefts.artifacts import file_digest
    from pefts.certification.selection import selected_indices
    from pefts.data import read_manifest
    from pefts.results import merge_shards, write_tsv

    refuse_existing(out, force)
    expected = None
    if data:
        expected = selected_indices(read_manifest(data)["num_test"], skip, max_count)
    merged, settings, parts = merge_shards(shards, expected)
    if data:
        given = {"manifest": file_digest(data), "skip": skip, "max": max_count}
        for key, value in given.items():
            if settings.get(key) != value:
                raise PeftsError(f"the shards were certified with {key} {settings.get(key)!r}, "
                                 f"merge was given {value!r} (--data/--skip/--max)")
    write_tsv(merged, out, settings, shards=parts)
    click.echo(f"merged {len(shards)} shard(s), {len(merged)} images -> {out}")


def write_table(table, out_tsv: str, out_md: str, markdown: str) -> str:
    """Every table goes out twice: TSV for programs, Markdown for papers."""
    from pefts.artifacts import atomic_write_text

    atomic_write_text(out_tsv, table.to_csv(sep="\t", index=False))
    atomic_write_text(out_md, markdown)
    return markdown


def read_runs(runs) -> list:
    from pefts.provenance import check_comparable
    from pefts.results import read_tsv

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA TSV")
    frames = [(method, sigma, read_tsv(path)) for method, sigma, path in runs]
    check_comparable(runs)
    return frames


@cli.command()
@click.option("--run", "runs", multiple=True, type=RUN, help="METHOD SIGMA merged.tsv (repeat)")
@click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True)
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
def summarize(runs, radii, out_tsv, out_md) -> None:
    """Certified accuracy at a radius grid and ACR, per method and sigma."""
    from pefts.results import summarize as table_of
    from pefts.results import to_markdown

    grid = parse_floats(radii, "--radii", 0.0)
    table = table_of(read_runs(runs), grid)
    click.echo(write_table(table, out_tsv, out_md, to_markdown(table)), nl=False)


@cli.command()
@click.option("--run", "runs", multiple=True, type=RUN, help="METHOD SIGMA merged.tsv (repeat)")
@click.option("--out", "pattern", required=True,
              help="PNG path with {sigma}: one figure per sigma, one line per method "
                   "(a plain path when every run has the same sigma)")
def plot(runs, pattern) -> None:
    """Certified accuracy against L2 radius (paper Figure 3)."""
    from pefts.plots import plot_certified_curves

    loaded = read_runs(runs)
    sigmas = sorted({s for _, s, _ in loaded})
    if "{sigma}" not in pattern and len(sigmas) > 1:
        raise PeftsError("--out must contain {sigma} when the runs have several sigmas, "
                         "e.g. results/figures/certified_sigma{sigma}.png")
    for sigma in sigmas:
        curves = [(method, frame) for method, s, frame in loaded if s == sigma]
        out = pattern.replace("{sigma}", f"{sigma:g}")
        plot_certified_curves(curves, f"certified accuracy, sigma = {sigma:g}", out)
        click.echo(f"sigma={sigma:g}: {len(curves)} method(s) -> {out}")


@cli.command("plot-vs-sigma")
@click.option("--summary", required=True, type=click.Path(dir_okay=False),
              help="summary TSV from `pefts summarize`")
@click.option("--columns", default="r=0,ACR", show_default=True,
              help="comma-separated summary columns, one panel each")
@click.option("--title", default="", help="figure title")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG")
def plot_vs_sigma(summary, columns, title, out) -> None:
    """Summary columns against sigma, one line per method (paper Figure 8)."""
    from pefts.plots import plot_against_sigma

    table = read_summary(summary)
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    missing = [c for c in wanted if c not in table.columns]
    if missing or not wanted:
        raise PeftsError(f"{summary} has no column(s) {', '.join(missing) or '(none given)'}; "
                         f"it has {', '.join(table.columns)}")
    plot_against_sigma(table, wanted, title, out)
    click.echo(f"{len(wanted)} panel(s) -> {out}")


def read_summary(path: str):
    import pandas as pd

    if not Path(path).is_file():
        raise PeftsError(f"summary {path} does not exist (run `pefts summarize` first)")
    return pd.read_csv(path, sep="\t")


@cli.command("noise-accuracy")
@click.option("--run", "runs", multiple=True, type=RUN,
              help="METHOD SIGMA model.safetensors (repeat)")
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
@click.option("--figure", required=True, type=click.Path(dir_okay=False))
def noise_accuracy(runs, out_tsv, out_md, figure) -> None:
    """Accuracy on noisy inputs against sigma per method (paper Figure 2)."""
    from pefts.noise_learning import noise_accuracy_table
    from pefts.plots import plot_lines
    from pefts.results import to_markdown

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA model.safetensors")
    table = noise_accuracy_table(runs)
    markdown = write_table(table, out_tsv, out_md, to_markdown(table))
    plot_lines(table, "sigma", "noisy accuracy", "method", "accuracy of f on x + noise", figure,
               ylabel="accuracy on noisy test images")
    click.echo(markdown, nl=False)


@cli.command()
@click.option("--run", "runs", multiple=True, type=RUN,
              help="METHOD SIGMA model.safetensors (repeat)")
@click.option("--summary", required=True, type=click.Path(dir_okay=False),
              help="summary TSV from `pefts summarize`")
@click.option("--radius", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="radius of the figure's accuracy")
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
@click.option("--figure", required=True, type=click.Path(dir_okay=False))
def parameters(runs, summary, radius, out_tsv, out_md, figure) -> None:
    """Trainable parameters per method (Table 2) and accuracy against them (Figure 4)."""
    from pefts.parameters import accuracy_vs_parameters, parameter_markdown, parameter_table
    from pefts.plots import plot_lines

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA model.safetensors")
    table = parameter_table(runs)
    markdown = write_table(table, out_tsv, out_md, parameter_markdown(table))
    column = f"r={radius:g}"
    points = accuracy_vs_parameters(table, read_summary(summary), column)
    points = points.assign(trainable=points["trainable"].clip(lower=1))  # none has 0: log axis
    plot_lines(points, "trainable", column, "sigma", f"certified accuracy at r = {radius:g}",
               figure, logx=True, xlabel="trainable parameters (none plotted at 1)",
               ylabel=f"certified accuracy (r = {radius:g})", labels="method", connect=False)
    click.echo(markdown, nl=False)


@cli.command()
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
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write a TSV")
@click.option("--arch", default=None,
              help="a timm architecture with random weights (no download), e.g. vit_base_patch16_224")
@click.option("--num-classes", default=10, show_default=True, type=AT_LEAST_ONE, help="with --arch")
@click.option("--method", default="none", show_default=True, help="PEFT method wrapped (with --arch)")
@click.option("--diffusion", default=None, type=click.Path(file_okay=False),
              help="also time a diffusion denoiser (local diffusers folder) in front of the model")
@fast_path_options
@device_option
def benchmark(model, base, image_size, batch, n, n0, repeats, threads, out, arch, num_classes,
              method, diffusion, precision, channels_last, compile_net, merge_lora, device) -> None:
    """Sampling throughput: raw forward vs the certifier vs a Cohen-style loop."""
    if (model is None) != (base is None):
        raise PeftsError("give --model and --base together, or neither for the built-in model")
    if arch and model:
        raise PeftsError("give --arch or --model, not both")
    if image_size is not None and model is None and arch is None:
        raise PeftsError("--image-size applies only with --model or --arch")
    import torch

    from pefts.artifacts import atomic_write_text
    from pefts.benchmark import (
        add_diffusion_row,
        artifact_subject,
        builtin_subject,
        named_subject,
        run_benchmark,
        to_markdown,
    )
    from pefts.certification.fastpath import executed
    from pefts.devices import resolve_device

    if diffusion:  # refuse a bad folder before minutes of timing, not after
        from pefts.methods.diffusion import unet_folder

        unet_folder(diffusion)
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
    if diffusion:
        add_diffusion_row(result, subject, diffusion, torch_device)
    if out:
        atomic_write_text(out, result.table.to_csv(sep="\t", index=False))
    click.echo(result.header())
    click.echo(to_markdown(result.table), nl=False)
    click.echo(result.summary())


@cli.command("benchmark-adaptive")
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
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write a TSV")
@device_option
def benchmark_adaptive(model, base, data, sigma, n, n0, alpha, radii, batch, pool, skip,
                       max_count, seeds, out, device) -> None:
    """The same images certified with fixed n and adaptively (n_max = n), side by side."""
    from pefts.adaptive_benchmark import certify_run, compare_table, simulate_sequences
    from pefts.artifacts import atomic_write_text
    from pefts.benchmark import device_name
    from pefts.certification.adaptive import AdaptivePlan
    from pefts.certification.rows import (
        ADAPTIVE_COLUMNS,
        CERTIFY_COLUMNS,
        adaptive_rows,
        certify_rows,
    )

    grid = list(parse_floats(radii, "--radii"))
    seed_list = [int(s) for s in parse_floats(seeds, "--seeds")]
    net, manifest, dataset, indices, torch_device, _ = shard_setup(
        model, base, data, skip, max_count, "0/1", device, sigma)
    classes = manifest["num_classes"]
    plan = AdaptivePlan(sigma, alpha, n, tuple(grid))
    runs = [certify_run(f"fixed n seed {s}", net,
                        lambda m, s=s: certify_rows(m, dataset, classes, sigma, n0, n, alpha,
                                                    batch, s, torch_device),
                        indices, CERTIFY_COLUMNS, torch_device) for s in seed_list]
    runs.append(certify_run("adaptive", net,
                            lambda m: adaptive_rows(m, dataset, classes, plan, n0, batch, pool,
                                                    seed_list[0], torch_device),
                            indices, ADAPTIVE_COLUMNS, torch_device))
    table = compare_table(runs, grid)
    fixed, adaptive = runs[0], runs[-1]
    within = [r for r in grid if r <= 2 * sigma + 1e-12]
    gap = max(abs(a - b) for a, b in zip(fixed.accuracy(within), adaptive.accuracy(within), strict=False))
    spread = (max(abs(a - b) for a, b in zip(fixed.accuracy(within), runs[1].accuracy(within), strict=False))
              if len(runs) > 2 else float("nan"))
    if out:
        atomic_write_text(out, table.to_csv(sep="\t", index=False))
    click.echo(f"device: {device_name(torch_device)}; {len(indices)} images; {Path(model).name}; "
               f"sigma {sigma:g}; n0 {n0}, n = n_max {n}, alpha {alpha:g}; batch {batch}, "
               f"pool {pool}")
    readable = table.map(lambda v: f"{v:,}" if isinstance(v, int) else v)
    click.echo(readable.to_markdown(index=False, disable_numparse=True,
                                    colalign=["left"] + ["right"] * len(runs)))
    rate = (adaptive.passes / adaptive.seconds) / (fixed.passes / fixed.seconds)
    click.echo(f"passes fixed/adaptive = {fixed.passes / adaptive.passes:.1f}x; samples/s "
               f"adaptive/fixed = {rate:.2f}; "
               f"largest certified-count difference up to 2 sigma: adaptive vs fixed {gap}, "
               f"fixed seed vs seed {spread}")
    rates = (fixed.rows["nA"] / fixed.rows["n"]).tolist()
    simulated = simulate_sequences(rates, plan, seed_list[0])
    totals = simulated.groupby("sequence", sort=False)["samples"].sum()
    click.echo("confidence sequences simulated on these images' fixed-n hit rates "
               "(same hits, same stopping rule): estimation samples in total "
               + ", ".join(f"{name} {int(total):,}" for name, total in totals.items()))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except PeftsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        command = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) else ""
        click.echo(f"error: {command}{err.format_message()}", err=True)
        sys.exit(err.exit_code)
