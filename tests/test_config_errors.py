"""Config errors name the key and its section; methods' hyper-parameters are checked at
the dry run; a --configfile that is not a complete config is refused, saying how
overlays work."""

from __future__ import annotations

import copy
import re

import click
import pytest
import yaml

from pefts.errors import PeftsError
from pefts.study.config import (
    check_complete,
    check_config,
    check_method_params,
    declared_specs,
    schema_problem,
)
from tests.test_experiments import load_config
from tests.test_workflow import ROOT, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("section, key, expected", [
    ("certify", "nn", "unknown key certify.nn in section certify (did you mean 'n'?)"),
    ("dataset", "resise", "unknown key dataset.resise in section dataset (did you mean 'resize'?)"),
    ("summary", "radius", "unknown key summary.radius in section summary (did you mean 'radii'?)"),
    (None, "sigma", "unknown key sigma in section (top level) (did you mean 'sigmas'?)"),
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
                              "method_params.lora.train (did you mean 'epochs'?)")


def test_a_bad_value_names_its_key():
    config = default()
    config["certify"]["alpha"] = 2
    assert schema_problem(config, SCHEMA) == "certify.alpha must be a finite float in (0, 1), got 2"
    assert schema_problem(default(), SCHEMA) is None


@pytest.mark.parametrize("path, value, expected", [
    (("certify", "n"), [1000], "certify.n must be a finite int >= 1, got [1000]"),
    (("certify", "n"), 0, "certify.n must be a finite int >= 1, got 0"),
    (("sigmas",), None, "sigmas must be a non-empty list, each item a finite float > 0, got None"),
    (("sigmas",), [0.5, -1], "sigmas.1 must be a finite float > 0, got -1"),
    (("dataset", "crop"), "8", "dataset.crop must be a finite int >= 1 (or null), got '8'"),
    (("dataset", "resize"), [8], "dataset.resize must be a finite int >= 1 or a list of 2, each "
                                 "item a finite int >= 1 (or null), got [8]"),
    (("dataset", "name"), "cifar", "dataset.name must be one of 'digits', 'cifar10', 'imagenet', "
                                   "'imagefolder', got 'cifar' (did you mean 'cifar10'?)"),
    (("certify", "adaptive"), "yes", "certify.adaptive must be true or false, got 'yes'"),
    (("summary", "radii"), 0.5, "summary.radii must be a non-empty list, each item a finite "
                                "float >= 0, got 0.5"),
])
def test_a_bad_value_says_what_its_key_must_be(path, value, expected):
    """The key, the expected type and range, in the words a hyper-parameter's error uses."""
    from tests.test_refusal_table import with_value

    assert schema_problem(with_value(path, value), SCHEMA) == expected


def test_the_schemas_image_options_are_the_packages():
    """`pefts prepare --images` is checked against pefts.data.IMAGE_SPECS, the config's
    dataset section against the JSON schema: both must say the same."""
    from pefts.data import IMAGE_SPECS
    from pefts.study.config import param_of

    dataset = yaml.safe_load(SCHEMA.read_text())["properties"]["dataset"]["properties"]
    for name, spec in IMAGE_SPECS.items():
        assert param_of(dataset[name]).describe() == spec.describe(), name


@pytest.mark.parametrize("method, hparams, needle", [
    ("lora", {"rnak": 2}, "unknown key method_params.lora.hparams.rnak (did you mean 'rank'?)"),
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


# a bad value a user types in a config overlay, and what the one line must say
BAD_VALUES = [
    ("dataset: {crop: '8'}", "dataset.crop must be a finite int >= 1 (or null), got '8'"),
    ("certify: {n: [1000]}", "certify.n must be a finite int >= 1, got [1000]"),
    # JSON Schema counts 2.0 as an integer; the shard count was a traceback
    ("certify: {shards: 2.0}", "certify.shards must be a finite int >= 1 or 'auto', got 2.0"),
    ("sigmas: null", "sigmas must be a non-empty list, each item a finite float > 0, got None"),
    ("methods: [none, adaptor]", "unknown method 'adaptor' in methods (did you mean 'adapter'?)"),
    ("certify: {alpha: 1.0e-320}", "config value certify.alpha must be a finite number, got "
                                   "1e-320, which underflows"),
    # the config side of the n-too-small refusal, in both modes
    ("certify: {n: 9, adaptive: false}", "certify.n 9 at alpha 0.001 can never certify: "),
    ("certify: {n: 9, adaptive: true}", "certify.n 9 at alpha 0.001 can never certify adaptively"),
    ("method_params: {lora: {hparams: {rnak: 2}}}",
     "unknown key method_params.lora.hparams.rnak (did you mean 'rank'?)"),
]


@pytest.mark.parametrize("overlay, needle", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_both_config_readers_refuse_a_bad_value_naming_its_key(run_cli, tmp_path, overlay, needle):
    """`snakemake -n` (the Snakefile's reader) stops before any job, and `pefts
    fetch-weights` (the CLI's reader, shared with `pefts plan`) refuses: each in one line
    naming the key; no traceback, nothing created."""
    from tests.test_cli_errors import error_line, one_line_error

    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay + "\n")
    results = tmp_path / "r"
    result = snakemake("-n", "--cores", "1", "--configfile", "config.yaml", str(bad),
                       "--config", f"results={results}")
    error_line(result, f"error: config is invalid: {needle}")
    assert "Job stats" not in result.stdout and not results.exists()
    code, _, err = run_cli("fetch-weights", "--configfile", "config.yaml", "--configfile", bad,
                           "--results", results)
    one_line_error(code, err, f"error: config is invalid: {needle}")
    assert not results.exists()


def test_the_clis_config_reader_refuses_in_a_process_of_its_own(tmp_path):
    """What was a traceback or "Error validating config file." without the key."""
    from tests.test_cli_errors import error_line, pefts_process

    for overlay, needle in BAD_VALUES[1:3]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(overlay + "\n")
        for command in ("fetch-weights", "plan"):
            result = pefts_process(command, "--configfile", "config.yaml", "--configfile", bad,
                                   cwd=ROOT)
            error_line(result, f"error: config is invalid: {needle}")


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


# --- the dry run refuses what a job would (issue 29) ------------------------------------

# keys a rule reads that reach no job option: what checks them instead
NOT_OPTIONS = {
    "certify.shards": "the shard count of the paths (int-checked by its Param)",
    "certify.adaptive": "a flag", "certify.sound": "a flag", "certify.merge_lora": "a flag",
    "certify.grid": "a list: --grid (schema items >= 0, non-empty)",
    "certify.sound_compare": "checked against methods",
    "summary.radii": "a list: --radii (schema items >= 0, non-empty)",
    "summary.paper": "an enum", "threads": "Snakemake's threads", "device": "free text",
    "base.arch": "free text", "base.model_kwargs": "JSON", "base.mean": "a list",
    "base.std": "a list", "base.train": "JSON, checked by TRAIN_SPECS",
    "experiments.twobirds.source_train": "JSON, checked by TRAIN_SPECS",
    "experiments.twobirds.adapt_train": "JSON, checked by TRAIN_SPECS",
    "experiments.twobirds.source_classes": "a list (schema: distinct, >= 0)",
    "experiments.twobirds.target_classes": "a list (schema: distinct, >= 0)",
    "gpus_per_job": "also --gpus",
    # whole sections handed to code that reads their keys (listed in JOB_OPTIONS)
    "dataset": "common.smk data_options: --seed, --images (IMAGE_SPECS)",
    "experiments.twobirds": "pefts.study.experiments.Study",
}


def keys_the_rules_read() -> set[str]:
    """Every config key a rule file reads directly (CERT[...], EXP[...], config[...])."""
    prefix = {"CERT": "certify.", "EXP": "experiments.", "config": ""}
    found = set()
    for rules in (ROOT / "workflow" / "rules").glob("*.smk"):
        for name, keys in re.findall(r"\b(CERT|EXP|config)((?:\[[\"'][a-z_0-9]+[\"']\])+)",
                                     rules.read_text()):
            found.add(prefix[name] + ".".join(re.findall(r"[a-z_0-9]+", keys)))
    return found


def test_every_key_a_rule_reads_is_checked_by_the_jobs_option_or_said_why_not():
    from pefts.study.config import JOB_OPTIONS

    unclassified = keys_the_rules_read() - set(JOB_OPTIONS) - set(NOT_OPTIONS) - {"certify", "experiments"}
    assert not unclassified, f"map these to the job's option in JOB_OPTIONS: {unclassified}"
    rules = "".join(p.read_text() for p in (ROOT / "workflow").rglob("*.smk"))
    rules += (ROOT / "pefts" / "study" / "experiments.py").read_text()
    for key, (command, option, kind) in JOB_OPTIONS.items():
        assert f"pefts {command} " in rules, key  # a rule runs that command
        assert f"{option} {{" in rules or f'"{option}"' in rules or f"{option} " in rules, key
        # the very type the job's option converts with, not a copy that could drift
        assert job_option(command, option).type is kind, (key, job_option(command, option).type)


def job_option(command: str, option: str) -> click.Option:
    """The click option ``option`` of `pefts command`."""
    from pefts.cli import cli

    return next(p for p in cli.commands[command].params if option in p.opts)


# values a user might type for any key; each must get the same verdict from the dry run
# as from the job's option, which reads it as the rule writes it (str(value))
PROBES = [-1, 0, 1, 2, 2.0, 2000.0, 0.5, 1.5, 2**63, "x", "fp16", True]


def probe_configs():
    from pefts.study.config import JOB_OPTIONS

    for key, (command, option, _) in JOB_OPTIONS.items():
        for value in PROBES:
            yield key, command, option, value


def test_the_dry_run_refuses_exactly_what_the_jobs_option_refuses():
    """For every key that a rule hands to a job's option and many values, the dry run's
    verdict (in-process, pefts.study.config.validated) is the job option's: the same click type
    reads both. Where the dry run refuses a value the option accepts, another check of
    the same job must refuse it too (n too small to ever certify at alpha)."""
    from pefts.study.config import validated

    also_refused_by_the_job = ("can never certify", "GPUs per job asked for")
    filled = default()
    validated(filled, SCHEMA)  # the schema's defaults, filled in once
    mismatches = []
    for key, command, option, value in probe_configs():
        *path, last = key.split(".")
        config = copy.deepcopy(filled)
        section = config
        for part in path:
            section = section[part]
        if last == "*":
            section[:] = [value]  # the list holding this one value
        else:
            section[last] = value
        try:
            problem = schema_problem(config, SCHEMA)
            if problem:
                raise PeftsError(problem)
            check_config(config)
            dry = None
        except PeftsError as err:
            dry = str(err)
        try:
            job_option(command, option).type.convert(str(value), None, None)
            job = True
        except click.BadParameter:
            job = False
        if job is False and dry is None:
            mismatches.append(f"{key}={value!r}: the dry run accepts what the job refuses")
        if job and dry is not None and not any(s in dry for s in also_refused_by_the_job):
            mismatches.append(f"{key}={value!r}: the dry run refuses ({dry}), the job accepts")
        if dry is not None:
            assert "\n" not in dry and key.removesuffix(".*") in dry, dry
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("path, value, needle", [
    (("certify", "n"), 2000.0, "certify.n must be a finite int >= 1, got 2000.0"),
    (("certify", "shards"), 2.0, "certify.shards must be a finite int >= 1 or 'auto', got 2.0"),
    (("certify", "seed"), -1, "certify.seed must be a finite int in [0, "),
    (("summary", "radii"), [], "summary.radii must be a non-empty list"),
    (("methods",), ["lora", "none", "lora"], "methods repeats 'lora'"),
    (("sigmas",), [0.5, 0.50], "sigmas repeats 0.5"),
    (("experiments", "noise_learning", "sigmas"), [0.5, 0.5], "noise_learning.sigmas repeats 0.5"),
    (("experiments", "ablation", "lora_rank"), [2, 4, 2], "ablation.lora_rank repeats 2"),
    (("experiments", "ablation", "prompt_length"), [1, 1], "ablation.prompt_length repeats 1"),
    (("experiments", "twobirds", "target_classes"), [5, 5, 6], "target_classes repeats 5"),
    (("base", "train"), {"seed": -1}, "base.train.seed must be a finite int >= 0, got -1"),
    (("base", "std"), [0.5], "base.mean and base.std must have one value per channel each"),
])
def test_what_a_job_would_refuse_hours_later_is_refused_at_the_dry_run(path, value, needle):
    from pefts.study.config import validated
    from tests.test_refusal_table import with_value

    with pytest.raises(PeftsError, match=re.escape(needle)):
        validated(with_value(path, value), SCHEMA)


def test_the_schemas_training_options_are_the_jobs():
    """A train section reaches the job as JSON, checked there by TRAIN_SPECS: the schema
    must say the same, or the dry run passes a seed of -1 that the job refuses."""
    import yaml as _yaml

    from pefts.study.config import param_of
    from pefts.training.loop import TRAIN_SPECS

    train = _yaml.safe_load(SCHEMA.read_text())["$defs"]["train"]["properties"]
    for name, node in train.items():
        assert param_of(node).describe() == TRAIN_SPECS[name].describe(), name


def test_the_config_check_imports_neither_the_cli_nor_torch():
    """The dry run converts values with the jobs' option types (pefts.option_types), below
    the CLI: every DAG build would pay seconds for torch, and the config, read by the
    CLI's `pefts plan`, must not import the CLI back."""
    import subprocess
    import sys

    code = ("import sys, yaml; from pefts.study.config import validated; "
            "validated(yaml.safe_load(open('config.yaml')), 'workflow/schemas/config.schema.yaml'); "
            "assert 'pefts.cli' not in sys.modules, 'pefts.cli imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
