"""External weights: every pretrained weight a config names, fetched once on a machine
that has the internet (the submit host) into the results folder, with its sha256.

Cluster compute nodes are often offline, so no job may download: the pipeline's local
rule ``fetch_weights`` runs ``pefts fetch-weights`` and every compute job then reads the
local files (the base classifier through --pretrained-file, the black box's coordinator
encoder through its encoder_file hyper-parameter, the diffusion row's released
checkpoint and classifier through its weights and classifier_file).

Fetchers form a small registry by kind: a kind is one function that builds the model by
its hub name and returns its state dict (timm by model name; open_clip by
"architecture:pretrained tag"; diffusion by release name), and a line in
``pefts.study.experiments.external_weights`` names where the config asks for it. A kind
whose state dict does not say how to build its network also registers what the
fetch record must add (open_clip: whether the tag needs QuickGELU). Every job reads
a fetched file through ``pefts.runtime.verified.verified``, which checks the sha256
recorded here.

Free of torch at import time: the Snakefile lists the files on every call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError
from pefts.runtime.files import atomic_write_text, durable_path
from pefts.runtime.verified import fetch_record, fetch_record_path, recorded_weights, sha256

# kind -> function(name) returning the weights as a state dict of tensors
FETCHERS: dict[str, Callable[[str], dict[str, Any]]] = {}


# kind -> function(name) returning facts about the architecture for the fetch record
ARCHITECTURE: dict[str, Callable[[str], dict[str, Any]]] = {}


def fetcher(kind: str, registry: dict[str, Callable] = FETCHERS) -> Callable:
    def register(function: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
        registry[kind] = function
        return function
    return register


@fetcher("timm")
def fetch_timm(name: str) -> dict[str, Any]:
    """timm's pretrained weights of ``name``, head included: the loader of a local file
    (pretrained_cfg_overlay) drops a head of another size and adapts position embeddings."""
    import timm

    return timm.create_model(name, pretrained=True).state_dict()


@fetcher("open_clip")
def fetch_open_clip(name: str) -> dict[str, Any]:
    """open_clip's weights of ``name`` = "ARCH:TAG", e.g. "ViT-B-16:openai"."""
    from pefts.models.blackbox.clip import clip_state

    arch, _, tag = name.partition(":")
    return clip_state(tag, arch)


@fetcher("diffusion")
def fetch_diffusion(name: str) -> dict[str, Any]:
    """A released diffusion checkpoint by its name in pefts.models.diffusion.releases, from the
    authors' blob storage (e.g. guided-diffusion's 256x256_diffusion_uncond.pt)."""
    from pefts.models.diffusion.loading import download_release

    return download_release(name)


@fetcher("open_clip", ARCHITECTURE)
def open_clip_architecture(name: str) -> dict[str, Any]:
    """The weights alone cannot tell GELU from QuickGELU: record which the tag needs."""
    from pefts.models.blackbox.clip import tag_needs_quick_gelu

    arch, _, tag = name.partition(":")
    return {"quick_gelu": tag_needs_quick_gelu(arch, tag)}


@dataclass(frozen=True)
class ExternalWeight:
    kind: str  # a key of FETCHERS
    name: str  # the hub name

    def file(self, results: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)
        return f"{results.rstrip('/')}/weights/{self.kind}/{safe}.safetensors"

    def label(self) -> str:
        return f"{self.kind}:{self.name}"


# the fetch record beside a fetched file: kind, name, sha256
record_path = fetch_record_path


def base_weight(config: dict[str, Any]) -> ExternalWeight | None:
    base = config["base"]
    if base.get("pretrained") and not base.get("pretrained_file"):
        return ExternalWeight("timm", base["arch"])
    return None


def encoder_weight(hparams: dict[str, Any]) -> ExternalWeight | None:
    """The black box's coordinator encoder, when it is a timm model with hub weights."""
    encoder = hparams.get("encoder", "conv")
    if (encoder != "conv" and not hparams.get("encoder_file")
            and hparams.get("encoder_pretrained", True)):
        return ExternalWeight("timm", encoder)
    return None


def clip_weight(hparams: dict[str, Any]) -> ExternalWeight | None:
    """The black box's queried CLIP, when the config names an open_clip pretrained tag
    rather than a local clip_file."""
    if hparams.get("query") == "clip" and not hparams.get("clip_file") and hparams.get("clip_pretrained"):
        arch = hparams.get("clip_arch", "ViT-B-16")
        return ExternalWeight("open_clip", f"{arch}:{hparams['clip_pretrained']}")
    return None


def diffusion_weights(hparams: dict[str, Any]) -> dict[str, ExternalWeight]:
    """The diffusion row's released checkpoint and its own classifier, by the hyper-
    parameter that names their local copy, when the config names no local file."""
    found = {}
    if hparams.get("release") and not hparams.get("weights"):
        found["weights"] = ExternalWeight("diffusion", hparams["release"])
    if hparams.get("classifier") and not hparams.get("classifier_file"):
        found["classifier_file"] = ExternalWeight("timm", hparams["classifier"])
    return found


def parse_weight(text: str) -> ExternalWeight:
    kind, sep, name = text.partition(":")
    if not sep or not name:
        raise PeftsError(f"--weight {text!r} must be KIND:NAME, e.g. timm:vit_base_patch16_224")
    if kind not in FETCHERS:
        raise PeftsError(f"--weight {text!r}: unknown kind {kind!r}; known: "
                         f"{', '.join(sorted(FETCHERS))}")
    return ExternalWeight(kind, name)


def fetch(weight: ExternalWeight, results: str, force: bool = False) -> dict[str, Any]:
    """Fetch ``weight`` into the results folder (unless a complete copy is there); returns
    its record. The file is written through a temporary file and renamed, so a killed
    fetch never leaves a file that looks complete."""
    from safetensors.torch import save_file

    file = Path(weight.file(results))
    record_file = record_path(file)
    if not force and file.is_file():
        try:
            kept = fetch_record(file)
        except PeftsError:  # a corrupt record: fetch again
            kept = None
        if kept is not None and kept["sha256"] == sha256(file):
            return kept
    if weight.kind not in FETCHERS:
        raise PeftsError(f"no fetcher for weights of kind {weight.kind!r}")
    try:
        state = FETCHERS[weight.kind](weight.name)
    except PeftsError:  # already one line naming the problem (and a ValueError)
        raise
    except (RuntimeError, OSError, ValueError) as err:  # unknown name, no network, bad tag
        raise PeftsError(f"cannot fetch {weight.label()}: {str(err).splitlines()[0]}") from None
    with durable_path(file) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    record = {"kind": weight.kind, "name": weight.name, "file": str(file),
              "sha256": sha256(file)}
    if weight.kind in ARCHITECTURE:
        record.update(ARCHITECTURE[weight.kind](weight.name))
    atomic_write_text(record_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


# sha256 of a weights file or folder, and of every local weight hyper-parameters name:
# the verified loader's (pefts.runtime.verified), under the names provenance records use
weights_digest = sha256
external_provenance = recorded_weights
