"""`pefts prepare`: datasets to manifests."""

from __future__ import annotations

import click

from pefts.cli.options import parse_json
from pefts.errors import PeftsError
from pefts.option_types import SEED


@click.command()
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


COMMANDS = [prepare]
