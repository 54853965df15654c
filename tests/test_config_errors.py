"""Config errors name the key and its section; methods' hyper-parameters are checked at
the dry run; a --configfile that is not a complete config is refused, saying how
overlays work."""

from __future__ import annotations

import re

import pytest
import yaml

from pefts.config import (
    check_complete,
    check_config,
    check_method_params,
    declared_specs,
    schema_problem,
)
from pefts.errors import PeftsError
from tests.test_experiments import load_config
from tests.test_workflow import ROOT, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("section, key, expected", [
    ("certify", "nn", "unknown key certify.nn in section certify (did you mean n?)"),
    ("dataset", "resise", "unknown key dataset.resise in section dataset (did you mean resize?)"),
    ("summary", "radius", "unknown key summary.radius in section summary (did you mean radii?)"),
    (None, "sigma", "unknown key sigma in section (top level) (did you mean sigmas?)"),
])
def test_unknown_keys_name_key_and_section(section, key, expected):
    config = default()
    (config[section] if section else config)[key] = 1
    assert schema_problem(config, SCHEMA).startswith(expected)


def test_a_typo_inside_a_training_section_is_named():
    config = default()
    config["method_params"]["lora"]["train"]["epoch"] = 2
    problem = schema_problem(config, SCHEMA)
    assert problem.startswith("unknown key method_params.lora.train.epoch in section "
                              "method_params.lora.train (did you mean epochs?)")


def test_a_bad_value_names_its_key():
    config = default()
    config["certify"]["alpha"] = 2
    assert schema_problem(config, SCHEMA).startswith("certify.alpha: 2 is greater than")
    assert schema_problem(default(), SCHEMA) is None


@pytest.mark.parametrize("method, hparams, needle", [
    ("lora", {"rnak": 2}, "unknown key method_params.lora.hparams.rnak (did you mean rank?)"),
    ("lora", {"rank": 0}, "method_params.lora.hparams.rank must be"),
    ("prompt", {"length": 0}, "method_params.prompt.hparams.length must be"),
    ("sunet", {"objective": "l1"}, "method_params.sunet.hparams.objective must be"),
    ("none", {"rank": 2}, "unknown key method_params.none.hparams.rank"),
])
def test_method_hyper_parameters_are_checked_without_running(method, hparams, needle):
    config = load_config(method_params={method: {"hparams": hparams}})
    with pytest.raises(PeftsError, match=re.escape(needle)):
        check_config(config)


def test_the_default_method_params_pass():
    check_method_params(default())


def test_specs_read_from_the_files_are_the_methods_own():
    """The dry run reads specs without importing torch; they must be the classes' specs."""
    from pefts.methods import METHODS

    for name, cls in METHODS.items():
        declared = declared_specs(name)
        assert declared is not None, name
        assert {k: v.describe() for k, v in declared.items()} == \
            {k: v.describe() for k, v in cls.specs.items()}, name


@pytest.mark.parametrize("config, missing", [
    ({"sigmas": [0.5], "methods": ["lora"]}, "dataset, base, certify"),
    ({**default(), "base": {"arch": "vit_tiny_patch16_224"}}, "base.input_size"),
])
def test_an_incomplete_configfile_is_refused(config, missing):
    with pytest.raises(PeftsError, match=f"lacks {missing}: a first --configfile replaces "
                                         "config.yaml and must be a complete config"):
        check_complete(config, ["partial.yaml"])
    check_complete(default(), ["full.yaml"])


def test_the_dry_run_refuses_them_in_one_line(tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("sigmas: [0.5]\nmethods: [lora]\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("method_params: {lora: {hparams: {rnak: 2}}}\n")
    for args, needle in (
        (["--configfile", str(partial)], "overlays it key by key"),
        # a second --configfile overlays the first: the typo is in a complete config
        (["--configfile", "config.yaml", str(typo)], "method_params.lora.hparams.rnak"),
    ):
        result = snakemake("-n", "--cores", "1", *args, "--config", f"results={tmp_path}/r")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and len(errors) == 1 and needle in errors[0], result.stderr
