"""Training commands: the base classifier, round one of two birds, PEFTSmoothing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pefts.cli.options import device_option, fmt_accuracy, force_option, parse_floats, parse_json
from pefts.errors import PeftsError
from pefts.option_types import AT_LEAST_ONE, POSITIVE, WEIGHTS_OUT
from pefts.runtime.files import refuse_clashes, refuse_existing
from pefts.runtime.startup import import_network_stack


def weights_outputs(out: str) -> dict[str, str]:
    """Weights and the metadata written beside them: neither may land on an input."""
    return {"--out": out, "the metadata of --out": str(Path(out).with_suffix(".json"))}


@click.command("train-base")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest.json")
@click.option("--out", required=True, type=WEIGHTS_OUT, help="weights .safetensors")
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
    import_network_stack()
    from pefts.finetuning.runs import train_base as run
    from pefts.runtime.devices import resolve_device

    refuse_clashes(weights_outputs(out), [data, *([pretrained_file] if pretrained_file else [])])
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


@click.command("adapt-base")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="manifest.json of the downstream task")
@click.option("--source", required=True, type=click.Path(dir_okay=False),
              help="base classifier trained on the source task")
@click.option("--out", required=True, type=WEIGHTS_OUT, help="weights .safetensors")
@click.option("--train", "train_json", default=None, help="JSON of training options")
@device_option
@force_option
def adapt_base(data: str, source: str, out: str, train_json: str | None, device: str,
               force: bool) -> None:
    """Fine-tune a base classifier on clean downstream data (round one of two)."""
    import_network_stack()
    from pefts.finetuning.runs import adapt_base as run
    from pefts.runtime.devices import resolve_device

    refuse_clashes(weights_outputs(out), [data, source])
    refuse_existing(out, force)
    meta = run(data, source, out, parse_json(train_json, "--train"), resolve_device(device))
    click.echo(f"adapted {source}: clean validation accuracy "
               f"{fmt_accuracy(meta['metrics']['clean_val_accuracy'])} -> {out}")


@click.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="data manifest.json")
@click.option("--base", required=True, type=click.Path(dir_okay=False), help="base weights")
@click.option("--method", required=True, help="a registered PEFT method (see `pefts methods`)")
@click.option("--sigma", required=True, type=POSITIVE, help="noise level of training")
@click.option("--hparams", default=None, help="JSON of the method's hyper-parameters")
@click.option("--train", "train_json", default=None, help="JSON of training options")
@click.option("--out", required=True, type=WEIGHTS_OUT, help="weights .safetensors")
@device_option
@force_option
def finetune(data: str, base: str, method: str, sigma: float, hparams: str | None,
             train_json: str | None, out: str, device: str, force: bool) -> None:
    """PEFTSmoothing: fine-tune one method on Gaussian-noised images."""
    import_network_stack()
    from pefts.finetuning.runs import finetune as run
    from pefts.runtime.devices import resolve_device

    refuse_clashes(weights_outputs(out), [data, base])
    refuse_existing(out, force)
    meta = run(data, base, out, method, sigma, parse_json(hparams, "--hparams"),
               parse_json(train_json, "--train"), resolve_device(device))
    click.echo(f"{method} sigma={sigma}: {meta['trainable_params']:,} trainable parameters, "
               f"noisy validation accuracy {fmt_accuracy(meta['metrics']['noisy_val_accuracy'])} "
               f"-> {out}")


@click.command()
def methods() -> None:
    """List the registered methods and their hyper-parameters."""
    from pefts.methods import METHODS

    for name, cls in sorted(METHODS.items()):
        ranges = {key: spec.describe() for key, spec in cls.specs.items()}
        click.echo(f"{name}\t{json.dumps(cls.defaults)}\t{json.dumps(ranges)}")


COMMANDS = [train_base, adapt_base, finetune, methods]
