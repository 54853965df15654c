"""What certify, predict and the benchmarks share before sampling: validate the options,
load the data and the model, and record the settings that identify the run."""

from __future__ import annotations

from typing import Any

from pefts.errors import PeftsError
from pefts.runtime.files import refuse_clashes, refuse_existing


def shard_setup(model: str, base: str, data: str, skip: int, max_count: int, shard: str,
                device: str, sigma: float, out: str | None = None, force: bool = False,
                sound: bool = False):
    """Everything certify and predict share: validation first, then loading. ``sound``:
    the test images on the 8-bit grid (``pefts.certification.sound``)."""
    from pefts.certification.selection import parse_shard

    _, n_shards = parse_shard(shard)
    if out is not None:  # None: nothing is written (the benchmark)
        check_output(out, [model, base, data], n_shards, force)
    from pefts.runtime.devices import resolve_device

    manifest, dataset, indices = load_test_split(data, skip, max_count, shard, sound)
    torch_device = resolve_device(device)
    net, settings = model_setup(model, base, manifest, skip, max_count, shard, torch_device,
                                sigma, sound)
    return net, manifest, dataset, indices, torch_device, settings


def check_output(out: str, inputs: list[str], n_shards: int, force: bool,
                 resumable: bool = False) -> None:
    """Refuse an output that clashes with an input, that exists (without ``force``), or
    whose folder holds shards of another layout. ``resumable``: an output whose partial
    is still beside it is not finished (a job of packed sigmas keeps each one's partial
    until all are done) and resumes instead."""
    from pefts.certification.shard_io import check_layout, partial_path

    refuse_clashes({"--out": out}, inputs)
    if not (resumable and partial_path(out).exists()):
        refuse_existing(out, force)
    check_layout(out, n_shards)  # not even --force: a resume never mixes layouts


def load_test_split(data: str, skip: int, max_count: int, shard: str, sound: bool = False):
    """The manifest, the test split (``sound``: on the 8-bit grid) and the indices of
    the shard's images."""
    from pefts.certification.selection import parse_shard, selected_indices, shard_indices
    from pefts.data import load_split, read_manifest

    k, n_shards = parse_shard(shard)
    manifest = read_manifest(data)
    dataset = load_split(manifest, "test", on_grid=sound)
    indices = shard_indices(selected_indices(len(dataset), skip, max_count), k, n_shards)
    return manifest, dataset, indices


def model_setup(model: str, base: str, manifest: dict[str, Any], skip: int, max_count: int,
                shard: str, torch_device, sigma: float, sound: bool = False):
    """The model on ``torch_device`` (resolved once per process: resolving leases a
    GPU) and the settings that identify the run's rows."""
    from pefts.methods import load_model
    from pefts.runtime.verified import sha256

    net, meta = load_model(model, base, torch_device)
    if meta["num_classes"] != manifest["num_classes"]:
        raise PeftsError(f"{model} has {meta['num_classes']} classes, data has {manifest['num_classes']}")
    # identifies the data (which test images of which prepared dataset) and the model,
    # so no resume, merge or summary ever mixes rows of two runs
    settings = {"model": sha256(model), "base": meta["base_sha256"], "method": meta["method"],
                # every external weight the model reads (encoder, CLIP, UNet), as load_model
                # verified it
                "external": meta.get("external_sha256") or {},
                "sigma": sigma, "dataset": manifest["dataset"],
                "class_subset": manifest.get("class_subset"), "split": "test",
                "manifest": manifest["_sha256"], "skip": skip, "max": max_count, "shard": shard,
                "device": torch_device.type}
    if sound:  # only when used, so resuming an older run still matches
        settings.update(sound=True, pixel_levels=manifest.get("pixel_levels"))
    return net, settings
