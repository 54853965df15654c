# Config validation, paths and the (method, sigma, shard) grid; every rule calls the pefts CLI.
import json
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pefts.config import check_config
from pefts.errors import PeftsError

try:
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    check_config(config)
except (WorkflowError, PeftsError) as err:
    message = str(err).strip().splitlines()
    # jsonschema names the failing value on the first line and the key on a later one
    where = next((line.strip() for line in message if line.strip().startswith("On instance")), "")
    sys.exit(f"error: config is invalid: {message[0]} {where}".rstrip())


RESULTS = config["results"]
SIGMAS = [str(s) for s in config["sigmas"]]
METHODS = config["methods"]
CERT = config["certify"]
SHARDS = CERT["shards"]


wildcard_constraints:
    method="[a-z][a-z0-9_]*",
    sigma="[0-9.]+",
    k="[0-9]+",


def path(*parts):
    return "/".join([RESULTS, *parts])


DATA = path("data", "manifest.json")
BASE = path("base", "model.safetensors")


def model_path(method="{method}", sigma="{sigma}"):
    return path("finetune", method, f"sigma{sigma}", "model.safetensors")


def certified_path(method="{method}", sigma="{sigma}"):
    return path("certify", method, f"sigma{sigma}", "certified.tsv")


def method_json(key):
    """JSON of a method's hparams or train options, for the CLI."""
    return lambda w: json.dumps(config["method_params"].get(w.method, {}).get(key, {}))


def runs(files):
    """--run METHOD SIGMA FILE for every (method, sigma) of the main comparison."""
    return " ".join(f"--run {m} {s} {f}" for (m, s), f in zip(GRID, files))


GRID = [(m, s) for m in METHODS for s in SIGMAS]


def main_outputs():
    return [
        path("summary", "certified.tsv"),
        path("summary", "parameters.tsv"),
        *[path("figures", f"certified_sigma{s}.png") for s in SIGMAS],
        path("figures", "accuracy_vs_parameters.png"),
    ]
