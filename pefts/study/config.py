"""Checks of the pipeline configuration that a JSON schema cannot express.

Kept free of torch imports: the Snakefile calls it every time it builds the DAG.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

import click

from pefts.errors import PeftsError
from pefts.hparams import Either, Param, check_known, closest, number_problem
from pefts.option_types import AT_LEAST_ONE, GPU_COUNT, INTEGER, POSITIVE, PRECISION, PROBABILITY, SEED
from pefts.runtime.devices import check_gpus


def method_names() -> list[str]:
    """Registered methods, read from the file names of pefts/methods (name == file)."""
    spec = importlib.util.find_spec("pefts.methods")
    folders = spec.submodule_search_locations if spec else []
    return sorted(p.stem for folder in folders for p in Path(folder).glob("*.py")
                  if not p.stem.startswith("_") and p.stem != "base")


def bad_number(value: Any, where: str = "") -> tuple[str, float, str] | None:
    """(dotted key, value, problem) of the first nan, infinite or underflowing number
    (YAML's .nan and .inf pass a JSON schema: every comparison with nan is false), or None."""
    if isinstance(value, float) and number_problem(value):
        return where or "(top level)", value, number_problem(value)
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = bad_number(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


# what a first --configfile must set: without them the schema's defaults would build a
# study nobody asked for (a ViT-B/16 on 8x8 digits)
REQUIRED_SECTIONS = ("dataset", "base", "sigmas", "methods", "certify")
REQUIRED_BASE = ("arch", "input_size")


def check_complete(config: dict[str, Any], configfiles: list[str]) -> None:
    """A --configfile replaces config.yaml (see the Snakefile), so it must be complete."""
    missing = [s for s in REQUIRED_SECTIONS if s not in config]
    missing += [f"base.{k}" for k in REQUIRED_BASE
                if isinstance(config.get("base"), dict) and k not in config["base"]]
    if missing:
        raise PeftsError(
            f"--configfile {' '.join(map(str, configfiles))} lacks {', '.join(missing)}: a first "
            "--configfile replaces config.yaml and must be a complete config (start from "
            "config.yaml or configs/*.yaml); a second --configfile then overlays it key by key, "
            "and --config k=v changes single keys")


JSON_KINDS = {"integer": int, "number": float, "boolean": bool, "string": str,
              "array": list, "object": dict}


def param_of(node: dict[str, Any]) -> Param:
    """A JSON-schema node as the package's own value spec (pefts.hparams.Param), so a
    config key is described in the words of a hyper-parameter or a CLI JSON option."""
    types = node.get("type", "object")
    types = [types] if isinstance(types, str) else list(types)
    optional = "null" in types
    kinds = [t for t in types if t != "null"]
    if len(kinds) > 1:
        return Either(*(param_of({**node, "type": t}) for t in kinds), optional=optional)
    kind = JSON_KINDS[kinds[0]] if kinds else object
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    items = param_of(node["items"]) if kind is list and "items" in node else None
    return Param(kind, low=low, high=high, low_open="exclusiveMinimum" in node,
                 high_open="exclusiveMaximum" in node, choices=tuple(node.get("enum", ())),
                 items=items, optional=optional, min_items=node.get("minItems", 0),
                 max_items=node.get("maxItems"))


def typed_problem(value: Any, node: dict[str, Any], where: str = "",
                  schema: dict[str, Any] | None = None) -> str | None:
    """The first value the schema let through but its key's Param refuses, as
    schema_problem words it: JSON Schema counts 2000.0 as an integer, while the job's
    option (click's IntRange) and the code that counts with it (range(shards)) do not."""
    schema = schema if schema is not None else node
    if "$ref" in node:
        defined = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        node = {**defined, **{k: v for k, v in node.items() if k != "$ref"}}
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            found = sub and typed_problem(item, sub, f"{where}.{key}" if where else str(key), schema)
            if found:
                return found
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            found = typed_problem(item, node["items"], f"{where}.{index}", schema)
            if found:
                return found
    elif isinstance(value, float) and number_problem(value):
        return None  # check_config's bad_number says why (nan, inf, underflow)
    elif "oneOf" in node:
        # e.g. certify.shards: an integer or "auto"; 2.0 passes JSON Schema's integer branch
        branches = node["oneOf"]
        if any(value == b["const"] if "const" in b else
               typed_problem(value, b, where, schema) is None for b in branches):
            return None
        words = [repr(b["const"]) if "const" in b else param_of(b).describe() for b in branches]
        return f"{where} must be {' or '.join(words)}, got {value!r}"
    elif node.get("type") and not param_of(node).check(value):
        return f"{where} must be {param_of(node).describe()}, got {value!r}"
    return None


@functools.cache
def _schema(schema_path: str) -> tuple[dict[str, Any], Any]:
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    return schema, jsonschema.Draft202012Validator(schema)


def schema_problem(config: dict[str, Any], schema_path: str | Path) -> str | None:
    """The first schema violation as one line naming the key, what it must be and, for a
    misspelt name, the closest valid one (Snakemake's own message names only the section
    and prints the whole schema); None when valid."""
    import jsonschema

    schema, validator = _schema(str(schema_path))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return typed_problem(config, schema)
    section = ".".join(map(str, error.absolute_path))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        key = f"{section}.{unknown[0]}" if section else unknown[0]
        return (f"unknown key {key} in section {section or '(top level)'}"
                f"{closest(unknown[0], known)}; known keys: {', '.join(known)}")
    node = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "uniqueItems":
        repeated = next(v for i, v in enumerate(error.instance) if v in error.instance[:i])
        return (f"{section} repeats {repeated!r}: each of its values names a run or a row, "
                f"so a repeat would put it twice in the tables; got {error.instance!r}")
    if error.validator == "pattern" or not node.get("type"):
        return f"{section or '(top level)'}: {error.message}"
    hint = closest(error.instance, node["enum"]) if "enum" in node else ""
    return (f"{section or '(top level)'} must be {param_of(node).describe()}, "
            f"got {error.instance!r}{hint}")


def validated(config: dict[str, Any], schema_path: str | Path,
              configfiles: list[str] | None = None) -> None:
    """The one check of a config, as the Snakefile and `pefts plan`/`fetch-weights` read
    it: complete (when ``configfiles`` replaced config.yaml), every key and value against
    the schema (whose defaults are then filled in), then what a schema cannot say.
    Raises PeftsError naming the key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if configfiles:
        check_complete(config, configfiles)
    problem = schema_problem(config, schema_path)
    if problem:
        raise PeftsError(problem)
    try:
        validate(config, str(schema_path))  # fills the schema's defaults
    except WorkflowError as err:  # what schema_problem did not see (never, in the tests)
        raise PeftsError(str(err).strip().splitlines()[0]) from None
    check_config(config)


def _module_constants(path: Path) -> dict[str, Any]:
    """Literal module-level constants of a method file, following imports from sibling
    method files (e.g. sunet's OBJECTIVES from denoiser)."""
    names: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pefts.methods."):
            other = _module_constants(path.with_name(node.module.rsplit(".", 1)[1] + ".py"))
            names.update({a.asname or a.name: other[a.name] for a in node.names if a.name in other})
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return names


@functools.cache  # parsing the method files is most of a config check's time
def declared_specs(method: str) -> dict[str, Any] | None:
    """A method's hyper-parameter specs, read from its file without importing it (torch
    would cost the DAG seconds); None when its specs are not written as plain literals."""
    import pefts.hparams as hparams

    spec = importlib.util.find_spec("pefts.methods")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / f"{method}.py" for f in folders if (Path(f) / f"{method}.py").is_file()), None)
    if path is None:
        return None
    namespace = {**vars(hparams), **_module_constants(path)}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and getattr(stmt.targets[0], "id", None) == "specs"):
                    try:
                        return eval(compile(ast.Expression(stmt.value), str(path), "eval"),  # noqa: S307
                                    namespace)
                    except Exception:  # noqa: BLE001 - not a plain literal: checked at run time
                        return None
    return {}  # no specs declared: the method takes no hyper-parameters


def check_method_params(config: dict[str, Any]) -> None:
    """Every method's hyper-parameters against its declared specs, at the dry run: a typo
    would otherwise surface only when its job runs, after the base has trained."""
    from pefts.hparams import check_values

    for method, params in config.get("method_params", {}).items():
        hparams = (params or {}).get("hparams") or {}
        specs = declared_specs(method)
        if specs is None or not hparams:
            continue
        unknown = sorted(set(hparams) - set(specs))
        if unknown:
            raise PeftsError(f"unknown key method_params.{method}.hparams.{unknown[0]}"
                             f"{closest(unknown[0], specs)}: method {method!r} has "
                             f"hyper-parameters {', '.join(sorted(specs)) or '(none)'}")
        check_values(f"method_params.{method}.hparams.{{name}}", specs, hparams)


# config keys that a rule writes on a job's command line, the option it writes them to
# ("x.*": each item of the list x) and that option's click type: the dry run converts
# each value, as the rule writes it, with the type the job's option converts it with, so
# it refuses exactly what the job would (tests/test_config_errors.py checks each entry
# against the rules and the commands' own options)
JOB_OPTIONS: dict[str, tuple[str, str, click.ParamType]] = {
    "certify.n0": ("certify", "--n0", AT_LEAST_ONE), "certify.n": ("certify", "--n", AT_LEAST_ONE),
    "certify.alpha": ("certify", "--alpha", PROBABILITY),
    "certify.batch": ("certify", "--batch", AT_LEAST_ONE),
    "certify.skip": ("certify", "--skip", AT_LEAST_ONE),
    "certify.max": ("certify", "--max", INTEGER),
    "certify.seed": ("certify", "--seed", SEED), "certify.pool": ("certify", "--pool", AT_LEAST_ONE),
    "certify.rtol": ("certify", "--rtol", POSITIVE),
    "certify.precision": ("certify", "--precision", PRECISION),
    "sigmas.*": ("certify", "--sigma", POSITIVE),
    "experiments.ablation.sigma": ("certify", "--sigma", POSITIVE),
    "experiments.twobirds.sigmas.*": ("certify", "--sigma", POSITIVE),
    "experiments.twobirds.certify.skip": ("certify", "--skip", AT_LEAST_ONE),
    "experiments.twobirds.certify.max": ("certify", "--max", INTEGER),
    "dataset.seed": ("prepare", "--seed", SEED),
    "base.input_size": ("train-base", "--input-size", AT_LEAST_ONE),
    "gpus_per_job": ("certify", "--gpus", GPU_COUNT),
    "docs.throughput_n": ("benchmark", "--n", AT_LEAST_ONE),
}


def job_option_problem(config: dict[str, Any]) -> str | None:
    """The first config value that the job's own option would refuse, in one line; values
    a rule leaves off the command line (null, an unset rtol) are not checked."""
    for key, (command, option, kind) in JOB_OPTIONS.items():
        *path, last = key.split(".")
        section: Any = config
        for part in path:
            section = section.get(part, {}) if isinstance(section, dict) else {}
        values = (section if isinstance(section, list) else []) if last == "*" \
            else [section.get(last)] if isinstance(section, dict) else []
        for value in values:
            if value is None or value is False:
                continue
            try:
                kind.convert(str(value), None, None)
            except click.BadParameter as err:
                return (f"{key.removesuffix('.*')} {value!r} would be refused by the job's "
                        f"`pefts {command} {option}`: {err.message}")
    return None


def check_config(config: dict[str, Any]) -> None:
    bad = bad_number(config)
    if bad:
        raise PeftsError(f"config value {bad[0]} must be a finite number, got {bad[1]!r}, "
                         f"which {bad[2]}")
    problem = job_option_problem(config)
    if problem:
        raise PeftsError(problem)
    if len(config["base"]["mean"]) != len(config["base"]["std"]):
        raise PeftsError(f"base.mean and base.std must have one value per channel each, got "
                         f"{config['base']['mean']} and {config['base']['std']}")
    known = method_names()
    experiments = config.get("experiments", {})
    where = {"methods": config["methods"], "method_params": list(config["method_params"]),
             "experiments.twobirds.methods": experiments.get("twobirds", {}).get("methods", []),
             "experiments.noise_learning.methods":
                 experiments.get("noise_learning", {}).get("methods", [])}
    used = [m for methods in where.values() for m in methods]
    for key, methods in where.items():
        for method in methods:
            check_known("method", method, known, key)
    diffusion = config["method_params"].get("diffusion", {}).get("hparams", {})
    if "diffusion" in used and not (diffusion.get("weights") or diffusion.get("release")):
        # a pretrained DDPM is never downloaded by a job: a released checkpoint is fetched
        # by `pefts fetch-weights`, a diffusers folder is the user's
        raise PeftsError("method 'diffusion' needs its weights: set method_params.diffusion."
                         "hparams.weights (a local diffusers folder) or .release (fetched)")
    check_method_params(config)
    check_gpus(config["gpus_per_job"])
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
    compare = cert.get("sound_compare")
    if compare is not None and compare not in config["methods"]:
        raise PeftsError(f"certify.sound_compare {compare!r} is not one of methods "
                         f"{config['methods']}: it certifies one of the main runs again")
    if compare is not None and cert.get("sound"):
        raise PeftsError("certify.sound_compare puts sound mode beside the standard mode: "
                         "with certify.sound true every run is already sound; drop one")
    if config["base"]["pretrained_file"] and not Path(config["base"]["pretrained_file"]).is_file():
        raise PeftsError(f"base.pretrained_file {config['base']['pretrained_file']} does not exist")
