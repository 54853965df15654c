"""What certify, predict and the benchmarks share before sampling: validate the options,
load the data and the model, and record the settings that identify the run."""

from __future__ import annotations

from pefts.errors import PeftsError
from pefts.files import refuse_clashes, refuse_existing


def shard_setup(model: str, base: str, data: str, skip: int, max_count: int, shard: str,
                device: str, sigma: float, out: str | None = None, force: bool = False,
                sound: bool = False):
    """Everything certify and predict share: validation first, then loading. ``sound``:
    the test images on the 8-bit grid (``pefts.certification.sound``)."""
    from pefts.certification.selection import parse_shard, selected_indices, shard_indices
    from pefts.certification.shard_io import check_layout
    from pefts.data import load_split, read_manifest
    from pefts.devices import resolve_device
    from pefts.methods import load_model
    from pefts.verified import sha256

    k, n_shards = parse_shard(shard)
    if out is not None:  # None: nothing is written (the benchmark)
        refuse_clashes({"--out": out}, [model, base, data])
        refuse_existing(out, force)
        check_layout(out, n_shards)  # not even --force: a resume never mixes layouts
    manifest = read_manifest(data)
    dataset = load_split(manifest, "test", on_grid=sound)
    indices = shard_indices(selected_indices(len(dataset), skip, max_count), k, n_shards)
    torch_device = resolve_device(device)
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
    return net, manifest, dataset, indices, torch_device, settings
