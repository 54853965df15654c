"""Checks of the pipeline configuration that a JSON schema cannot express.

Kept free of torch imports: the Snakefile calls it every time it builds the DAG.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from pefts.errors import PeftsError


def method_names() -> list[str]:
    """Registered methods, read from the file names of pefts/methods (name == file)."""
    spec = importlib.util.find_spec("pefts.methods")
    folders = spec.submodule_search_locations if spec else []
    return sorted(p.stem for folder in folders for p in Path(folder).glob("*.py")
                  if not p.stem.startswith("_") and p.stem != "base")


def non_finite(value: Any, where: str = "") -> str | None:
    """The dotted key of the first nan or infinite number (YAML's .nan, .inf pass a JSON
    schema: every comparison with nan is false), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def check_config(config: dict[str, Any]) -> None:
    bad = non_finite(config)
    if bad:
        raise PeftsError(f"config value {bad} must be a finite number")
    known = method_names()
    experiments = config.get("experiments", {})
    used = [*config["methods"], *config["method_params"],
            *experiments.get("twobirds", {}).get("methods", []),
            *experiments.get("noise_learning", {}).get("methods", [])]
    for method in used:
        if method not in known:
            raise PeftsError(f"unknown method {method!r} in the config; choose from {', '.join(known)}")
    diffusion = config["method_params"].get("diffusion", {}).get("hparams", {})
    if "diffusion" in used and not diffusion.get("weights"):
        # a pretrained DDPM is never downloaded: the user points at a local diffusers folder
        raise PeftsError("method 'diffusion' needs a local diffusers folder: "
                         "set method_params.diffusion.hparams.weights")
    if len(set(map(float, config["sigmas"]))) != len(config["sigmas"]):
        raise PeftsError(f"sigmas repeat a value: {config['sigmas']}")
    twobirds = experiments.get("twobirds", {})
    if set(twobirds.get("source_classes", [])) & set(twobirds.get("target_classes", [])):
        raise PeftsError("experiments.twobirds: source_classes and target_classes must not overlap")
    if config["dataset"]["name"] != "digits" and not config["dataset"]["root"]:
        raise PeftsError(f"dataset {config['dataset']['name']} needs a data folder: set dataset.root")
    cert = config["certify"]
    # imported here: scipy is only needed once the schema has passed
    from pefts.certification.feasibility import check_can_certify

    check_can_certify(cert["n"], cert["alpha"], bool(cert.get("adaptive")), "certify.n")
    if config["base"]["pretrained_file"] and not Path(config["base"]["pretrained_file"]).is_file():
        raise PeftsError(f"base.pretrained_file {config['base']['pretrained_file']} does not exist")
