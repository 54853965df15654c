"""The study as data: every fine-tuning run of every experiment, where its inputs and
outputs live, and which (run, sigma) pairs each table and figure needs.

Kept free of torch imports: the Snakefile builds its DAG from this on every call.
A run is a method with its hyper-parameters and training settings on one (data, base
classifier) setup. Runs are named for the tables; runs that are the same (the LoRA
ablation's rank 2 and the main LoRA run, say) share one folder of outputs, named after
the first of them, so each distinct run is trained and certified once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefts.certification.selection import selected_indices
from pefts.errors import PeftsError
from pefts.study.weights import (
    ExternalWeight,
    base_weight,
    clip_weight,
    diffusion_weights,
    encoder_weight,
)

# Test images per class of the named datasets, at least (digits: 174 images in its
# smallest class, a quarter of them in the test split), so that the shard count can be
# capped at the number of certified images before any data is prepared
TEST_IMAGES_PER_CLASS = {"cifar10": 1000, "imagenet": 50, "digits": 43}
NUM_CLASSES = {"cifar10": 10, "imagenet": 1000, "digits": 10}
# methods certify.compile leaves eager: their networks (open_clip's CLIP and timm's MAE
# encoder behind the black box's query interface, which counts its calls; the diffusion
# UNet, whose timestep is read from a buffer per call) were never compiled and checked
# against eager (docs/fastpath.md), so the certifier does not compile them and the plan
# prices them at their eager rate
UNCOMPILED_METHODS = ("blackbox", "diffusion")



@dataclass(frozen=True)
class Run:
    method: str
    setup: str = "main"  # which data and base classifier (see Study.setups)
    hparams: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def sigma_label(sigma: float) -> str:
    """The sigma as written in paths and run tables: 0.5, not 0.50 or 5e-01."""
    return f"{float(sigma):g}"


class Study:
    """Paths and grids of one configuration."""

    def __init__(self, config: dict[str, Any], local_weights: bool = True):
        """local_weights: runs name the fetched local copy of any external weight
        (pefts.study.weights), so no job downloads."""
        self.config = config
        self.results = config["results"].rstrip("/")
        self.sigmas = [sigma_label(s) for s in config["sigmas"]]
        self.local_weights = local_weights
        self.runs = self._runs()
        self.folders = self._folders()

    # --- paths ---------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return "/".join([self.results, *parts])

    def setups(self) -> dict[str, dict[str, str]]:
        """Data manifest and base classifier of each setup."""
        tb = self.path("twobirds")
        return {
            "main": {"data": self.path("data", "manifest.json"),
                     "base": self.path("base", "model.safetensors")},
            # one round: PEFTSmoothing straight from the source-task classifier
            "oneround": {"data": f"{tb}/data_target/manifest.json",
                         "base": f"{tb}/base_source/model.safetensors"},
            # two rounds: first adapted to the target task on clean data
            "tworound": {"data": f"{tb}/data_target/manifest.json",
                         "base": f"{tb}/base_target/model.safetensors"},
        }

    def data(self, run: str) -> str:
        return self.setups()[self.runs[run].setup]["data"]

    def base(self, run: str) -> str:
        return self.setups()[self.runs[run].setup]["base"]

    def model(self, run: str = "{runname}", sigma: str = "{sigma}") -> str:
        return self.path("finetune", self.folders.get(run, run), f"sigma{sigma}", "model.safetensors")

    def certified(self, run: str = "{runname}", sigma: str = "{sigma}") -> str:
        return self.path("certify", self.folders.get(run, run), f"sigma{sigma}", "certified.tsv")

    def sound_certified(self, run: str = "{runname}", sigma: str = "{sigma}") -> str:
        """The run certified again in sound mode (``certify.sound_compare``), beside the
        standard mode's rows, never over them."""
        return self.path("certify", self.folders.get(run, run), f"sigma{sigma}", "sound",
                         "certified.tsv")

    # --- which test images each run certifies, in how many shards ------------------------

    def certify_settings(self, run: str) -> dict[str, int]:
        """skip, max and shards: two birds' runs have their own (the target task is a
        few classes of the dataset), every other run the main ones."""
        main = self.config["certify"]
        own = self.config["experiments"]["twobirds"].get("certify") or {}
        setup = self.runs[run].setup if run in self.runs else "main"
        chosen = {k: main[k] for k in ("skip", "max", "shards")}
        if setup != "main":
            chosen.update({k: v for k, v in own.items() if v is not None})
        return chosen

    def selection(self, run: str) -> str:
        cert = self.certify_settings(run)
        return f"--skip {cert['skip']} --max {cert['max']}"

    def test_images(self, setup: str) -> int | None:
        """At least how many test images the setup's data has; None when the config
        cannot tell (an image folder of unknown size)."""
        name = self.config["dataset"]["name"]
        if name not in TEST_IMAGES_PER_CLASS:
            return None
        classes = (NUM_CLASSES[name] if setup == "main"
                   else len(self.config["experiments"]["twobirds"]["target_classes"]))
        return TEST_IMAGES_PER_CLASS[name] * classes

    def certified_images(self, run: str) -> int | None:
        """At least how many images the run certifies (every skip-th, at most max)."""
        cert = self.certify_settings(run)
        total = self.test_images(self.runs[run].setup if run in self.runs else "main")
        if total is not None:
            return len(selected_indices(total, cert["skip"], cert["max"]))
        return cert["max"] if cert["max"] > 0 else None

    def shards(self, run: str, sigma: str | float | None = None) -> int:
        """The shard count of the (run, sigma), capped at the certified images: no empty
        shard. ``certify.shards: auto`` sizes it by the planned work
        (pefts.study.plan.auto_shards), so it needs the sigma and the number of images."""
        shards, images = self.certify_settings(run)["shards"], self.certified_images(run)
        if shards == "auto":
            if images is None:
                raise PeftsError(f"certify.shards: auto cannot size run {run!r}: how many images "
                                 "it certifies is unknown (set certify.max, or a number of shards)")
            if sigma is None:
                raise TypeError("shards: auto needs the sigma of the run")
            from pefts.study.plan import auto_shards

            spec = self.runs[run]
            return auto_shards(self.config, spec.method, spec.hparams, float(sigma), images)
        return max(1, min(shards, images)) if images is not None else shards

    def compiles(self, run: str) -> bool:
        """Whether the run's certification compiles its network (``certify.compile``,
        for every method but ``UNCOMPILED_METHODS``)."""
        return bool(self.config["certify"].get("compile")) and (
            self.runs[run].method not in UNCOMPILED_METHODS)

    def compile_cache(self, run: str = "{runname}") -> str:
        """Inductor's cache of a run, shared by all its sigmas and shards: one network
        architecture, so the first job compiles and the others load."""
        return self.path("certify", self.folders.get(run, run), "compile-cache")

    def certified_sigmas(self) -> dict[tuple[str, str], list[str]]:
        """(run, grid) -> the sigmas the grid certifies the distinct run at, in increasing
        order, each (run, sigma) under the first grid that has it: the main comparison,
        then the noise-learning, two-birds and ablation experiments. Packing within these
        groups keeps every target's jobs to its own (run, sigma) pairs, or the main
        comparison's (an ablation sharing the main LoRA run reuses its jobs), and every
        target sees the same jobs and files."""
        grids = {"main": self.main_grid(), "noise_learning": self.noise_grid(),
                 "twobirds": self.twobirds_grid(),
                 "ablation": [*self.ablation_grid("prompt_length"), *self.ablation_grid("lora_rank")]}
        seen: set[tuple[str, str]] = set()
        found: dict[tuple[str, str], list[str]] = {}
        for grid, pairs in grids.items():
            for run, sigma in pairs:
                pair = (self.folders.get(run, run), sigma)
                if pair not in seen:
                    seen.add(pair)
                    found.setdefault((pair[0], grid), []).append(sigma)
        return {key: sorted(sigmas, key=float) for key, sigmas in sorted(found.items())}

    def packs(self) -> list[tuple[str, tuple[str, ...]]]:
        """(run, sigmas) certified by one job each, one sigma after another
        (``certify.shards: auto``): the sigmas of a run that fit one shard, within one
        grid (``certified_sigmas``), grouped so that each group's planned minutes together
        fit ``certify.shard_minutes`` (pefts.study.plan.pack_sigmas). Groups of one sigma are
        left out: those are plain one-shard jobs. A packed sigma's output is the very
        file its one shard would be (``shards/0-of-1.tsv``, same settings and rows), so
        packing is no layout."""
        if not hasattr(self, "_packs"):
            self._packs = self._find_packs()
        return self._packs

    def _find_packs(self) -> list[tuple[str, tuple[str, ...]]]:
        from pefts.study.plan import SHARD_MINUTES, certify_seconds, pack_sigmas

        limit = float(self.config["certify"].get("shard_minutes") or SHARD_MINUTES)
        found = []
        for (run, _), sigmas in self.certified_sigmas().items():
            if len(sigmas) < 2 or self.certify_settings(run)["shards"] != "auto":
                continue  # nothing to pack with (an ablation's run has one sigma)
            spec, images = self.runs[run], self.certified_images(run)
            single = [s for s in sigmas if self.shards(run, s) == 1]
            minutes = {s: certify_seconds(self.config, spec.method, spec.hparams, float(s),
                                          images) / 60 for s in single}
            found += [(run, group) for group in pack_sigmas(minutes, limit) if len(group) > 1]
        return sorted(found)

    def pack_of(self, run: str, sigma: str) -> tuple[str, ...] | None:
        """The sigmas packed with (run, sigma) into one job, itself included; None when it
        is certified by its own shard jobs."""
        run = self.folders.get(run, run)
        return next((group for r, group in self.packs() if r == run and sigma in group), None)

    def check_shard_layouts(self) -> None:
        """A shard layout on disk is part of the run: refuse, in one line naming the fix,
        a shard count that differs from the one of the shards a (run, sigma) already
        has (changing it would certify every image again under another layout)."""
        from pefts.certification.shard_io import shard_layouts

        root = Path(self.path("certify"))
        for folder in sorted(root.glob("*/sigma*/shards")) + sorted(root.glob("*/sigma*/sound/shards")):
            sigma_dir = folder.parent if folder.parent.name.startswith("sigma") else folder.parent.parent
            run, sigma = sigma_dir.parent.name, sigma_dir.name[len("sigma"):]
            if run not in self.runs or not self.folders.get(run, run) == run:
                continue
            found = shard_layouts(folder)
            if not found:
                continue
            wanted = self.shards(run, sigma)
            if found != {wanted}:
                have = max(found - {wanted})
                setting = ("experiments.twobirds.certify.shards" if self.runs[run].setup != "main"
                           else "certify.shards")
                raise PeftsError(f"{folder.parent} has {have} shards on disk, the config now asks "
                                 f"for {wanted}: set {setting}: {have} or remove that folder")

    # --- runs and grids ------------------------------------------------------------------

    def method_params(self, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
        params = self.config["method_params"].get(method, {})
        return dict(params.get("hparams", {})), dict(params.get("train", {}))

    def _runs(self) -> dict[str, Run]:
        exp = self.config["experiments"]
        runs: dict[str, Run] = {}

        def add(name: str, method: str, setup: str = "main", **overrides: Any) -> None:
            hparams, train = self.method_params(method)
            hparams = {**hparams, **overrides}
            if method == "blackbox" and self.local_weights:
                for key, weight in (("encoder_file", encoder_weight(hparams)),
                                    ("clip_file", clip_weight(hparams))):
                    if weight is not None:
                        hparams[key] = weight.file(self.results)
            if method == "diffusion" and self.local_weights:
                for key, weight in diffusion_weights(hparams).items():
                    hparams[key] = weight.file(self.results)
            runs[name] = Run(method, setup, hparams, train)

        for method in dict.fromkeys([*self.config["methods"], *exp["noise_learning"]["methods"]]):
            add(method, method)
        for method in exp["twobirds"]["methods"]:
            add(f"oneround_{method}", method, "oneround")
            add(f"tworound_{method}", method, "tworound")
        ablation = exp["ablation"]
        for length in ablation["prompt_length"]:
            add(f"prompt_length{length}", "prompt", length=length)
        for rank in ablation["lora_rank"]:
            # alpha follows the rank, so the ablation changes capacity, not the update scale
            add(f"lora_rank{rank}", "lora", rank=rank, alpha=rank)
        return runs

    def _folders(self) -> dict[str, str]:
        """Each run name -> the folder of its outputs: the first run with the same
        method, setup, hyper-parameters and training settings (dict order: main runs
        first)."""
        first: dict[str, str] = {}
        folders = {}
        for name, run in self.runs.items():
            key = json.dumps([run.method, run.setup, run.hparams, run.train], sort_keys=True)
            folders[name] = first.setdefault(key, name)
        return folders

    def distinct_runs(self) -> list[str]:
        return sorted(set(self.folders.values()))

    # --- external weights, fetched once by a local rule ----------------------------------

    def external_files(self) -> list[str]:
        """Local copies of every external weight, with the fetch options that make them."""
        return [w.file(self.results) for w in external_weights(self.config)]

    def base_pretrained_file(self) -> str | None:
        """The file the base classifier starts from: the config's own, or the fetched copy
        of the hub weights it names, or None (random init)."""
        weight = base_weight(self.config)
        return weight.file(self.results) if weight else self.config["base"].get("pretrained_file")

    def weight_inputs(self, run: str) -> list[str]:
        """The fetched files a run's job reads (a Snakemake input, so the fetch runs first)."""
        files = set(self.external_files())
        return sorted(v for v in self.runs[run].hparams.values() if isinstance(v, str) and v in files)

    def main_grid(self) -> list[tuple[str, str]]:
        return [(m, s) for m in self.config["methods"] for s in self.sigmas]

    def sound_grid(self) -> list[tuple[str, str]]:
        """The run certified in both modes (``certify.sound_compare``) at the first sigma,
        or none."""
        method = self.config["certify"].get("sound_compare")
        return [(method, self.sigmas[0])] if method else []

    def twobirds_grid(self) -> list[tuple[str, str]]:
        tb = self.config["experiments"]["twobirds"]
        sigmas = [sigma_label(s) for s in tb["sigmas"]]
        return [(f"{rounds}_{m}", s) for rounds in ("oneround", "tworound")
                for m in tb["methods"] for s in sigmas]

    def ablation_grid(self, kind: str) -> list[tuple[str, str]]:
        """kind: prompt_length or lora_rank."""
        ablation = self.config["experiments"]["ablation"]
        return [(f"{kind}{value}", sigma_label(ablation["sigma"])) for value in ablation[kind]]

    def noise_grid(self) -> list[tuple[str, str]]:
        nl = self.config["experiments"]["noise_learning"]
        return [(m, sigma_label(s)) for m in nl["methods"] for s in nl["sigmas"]]

    def run_args(self, grid: list[tuple[str, str]], files: list[str]) -> str:
        """--run LABEL SIGMA FILE for each grid point, in grid order."""
        return " ".join(f"--run {r} {s} {f}" for (r, s), f in zip(grid, files, strict=True))


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's merge of config files: key by key, nested dicts too, the last wins."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def external_weights(config: dict[str, Any]) -> list[ExternalWeight]:
    """Every external weight the config's jobs would otherwise download, each once."""
    found = [base_weight(config)]
    for run in Study(config, local_weights=False).runs.values():
        if run.method == "blackbox":
            found += [encoder_weight(run.hparams), clip_weight(run.hparams)]
        if run.method == "diffusion":
            found += diffusion_weights(run.hparams).values()
    return sorted({w for w in found if w is not None}, key=ExternalWeight.label)


def load_config(configfiles: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The config a `snakemake [--configfile F ...]` run sees: config.yaml alone, or the
    given files overlaid in order (the Snakefile skips config.yaml then), with the
    schema's defaults filled in and checked like the Snakefile does."""
    from pathlib import Path

    import yaml

    from pefts.errors import PeftsError
    from pefts.study.config import validated

    root = Path(__file__).resolve().parents[2]
    config: dict[str, Any] = {}
    for file in configfiles or [root / "config.yaml"]:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise PeftsError(f"cannot read config {file}: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise PeftsError(f"config {file} is not a mapping of keys to values")
        config = _overlay(config, loaded)
    try:
        validated(config, root / "workflow" / "schemas" / "config.schema.yaml",
                  [str(f) for f in configfiles])
    except PeftsError as err:
        raise PeftsError(f"config is invalid: {err}") from None
    return config
