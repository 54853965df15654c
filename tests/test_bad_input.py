"""Bad values swept over every numeric option of every command, every hyper-parameter of
every registered method and every training option, derived from their declarations, so a
new option or method is covered without a new test.

The sweeps test the validator, not the ranges (a wrong declared range is caught by the
hand-written table in test_refusal_table.py). So each class of declaration (an option
type, a spec) gets every bad value once, on its first option; every other option of the
class gets one value, its boundary, which shows that it has the class's check."""

from __future__ import annotations

import math

import click
import pytest
import yaml

from pefts.cli import FiniteFloat, cli
from pefts.errors import PeftsError
from pefts.hparams import Param
from pefts.methods import METHODS, get_method
from pefts.methods.base import Method
from pefts.study.config import check_config
from pefts.training.loop import TRAIN_SPECS, TrainConfig

from .test_cli_errors import one_line_error
from .test_experiments import load_config


def numeric_types(param: click.Parameter) -> list[tuple[int | None, click.ParamType]]:
    """(position in a tuple or None, type) of each numeric part of an option."""
    kinds = (click.types.IntParamType, click.types.FloatParamType)
    if isinstance(param.type, click.Tuple):
        return [(i, t) for i, t in enumerate(param.type.types) if isinstance(t, kinds)]
    return [(None, param.type)] if isinstance(param.type, kinds) else []


def bad_values(kind: click.ParamType) -> list[str]:
    values = ["nan", "inf", "-inf", "x"]
    if isinstance(kind, click.types.IntParamType):
        values.append("1.5")
    else:
        values.append("1e-320")  # underflows: 1 / x overflows
    low = getattr(kind, "min", None)
    if low is not None:
        values.append(str(low if getattr(kind, "min_open", False) else low - 1))
    high = getattr(kind, "max", None)
    if high is not None:
        values.append(str(high if getattr(kind, "max_open", False) else high + 1))
    return values


def trimmed(items, kind_of, values_of):
    """(item, value) pairs: every value for the first item of each kind, the most telling
    one (the last: a boundary when there is one) for the others."""
    seen: set = set()
    pairs = []
    for item in items:
        kind = kind_of(item)
        values = values_of(item)
        pairs += [(item, v) for v in (values if kind not in seen else values[-1:])]
        seen.add(kind)
    return pairs


def type_key(kind: click.ParamType) -> tuple:
    return (type(kind).__name__, getattr(kind, "min", None), getattr(kind, "max", None),
            getattr(kind, "min_open", None), getattr(kind, "max_open", None))


OPTIONS = [(name, param, position, kind)
           for name, command in sorted(cli.commands.items())
           for param in command.params if isinstance(param, click.Option)
           for position, kind in numeric_types(param)]
CASES = [(name, param, position, value) for (name, param, position, _), value in
         trimmed(OPTIONS, lambda o: type_key(o[3]), lambda o: bad_values(o[3]))]


def test_the_sweep_covers_the_numeric_options():
    swept = {(name, param.opts[0]) for name, param, _, _ in CASES}
    for option in [("certify", "--sigma"), ("certify", "--alpha"), ("predict", "--n"),
                   ("summarize", "--run"), ("parameters", "--radius"), ("merge", "--skip")]:
        assert option in swept


def test_no_numeric_option_lets_nan_through():
    """A plain float option accepts nan and inf: each must be a FiniteFloat."""
    for name, param, _, _ in CASES:
        for _, kind in numeric_types(param):
            if isinstance(kind, click.types.FloatParamType):
                assert isinstance(kind, FiniteFloat), f"{name} {param.opts[0]} is a plain float"


@pytest.mark.parametrize("command, param, position, value", CASES,
                         ids=[f"{c}{p.opts[0]}={v}" for c, p, _, v in CASES])
def test_every_numeric_option_refuses_bad_values(run_cli, command, param, position, value):
    if position is None:
        args = [param.opts[0], value]
    else:
        parts = ["lora" if isinstance(t, click.types.StringParamType) else "f.tsv"
                 for t in param.type.types]
        parts[position] = value
        args = [param.opts[0], *parts]
    code, _, err = run_cli(command, *args)
    one_line_error(code, err, param.opts[0])


@pytest.mark.parametrize("args, needle", [
    (["summarize", "--radii", "0,nan", "--out-tsv", "t", "--out-md", "m"], "--radii"),
    (["summarize", "--radii", "0,-1", "--out-tsv", "t", "--out-md", "m"], "--radii"),
    (["summarize", "--radii", "0,1e-320", "--out-tsv", "t", "--out-md", "m"], "--radii"),
    (["train-base", "--data", "d", "--out", "o.safetensors", "--arch", "a", "--input-size", "8",
      "--std", "0.5,0,0.5"], "--std"),
    (["train-base", "--data", "d", "--out", "o.safetensors", "--arch", "a", "--input-size", "8",
      "--mean", "0.5,inf,0.5"], "--mean"),
    (["train-base", "--data", "d", "--out", "o.safetensors", "--arch", "a", "--input-size", "8",
      "--mean", "0.5,0.5"], "--mean"),
    (["prepare", "--dataset", "digits", "--out", "o", "--classes", "1,x"], "--classes"),
])
def test_numbers_inside_text_options_are_checked(run_cli, args, needle):
    code, _, err = run_cli(*args)
    one_line_error(code, err, needle)


def test_certify_refuses_nan_sigma(run_cli, digits, tiny_base, none_model, tmp_path):
    out = tmp_path / "out.tsv"
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", digits,
                           "--sigma", "nan", "--n0", "8", "--n", "16", "--max", "2", "--out", out)
    one_line_error(code, err, "--sigma")
    assert not out.exists()


# --- hyper-parameters of every method, from their specs ---------------------------------------

def bad_hparams(spec: Param) -> list:
    missing = [] if spec.optional else [None]
    if spec.kind is list:
        return [[], 3, "1,2", *[[v] for v in bad_hparams(spec.items)], *missing]
    if spec.kind is bool:
        return ["yes", 1, *missing]
    if spec.kind is str:
        return ["no such choice" if spec.choices else "", 3, *missing]
    values = [math.nan, math.inf, -math.inf, "1", True, *missing]
    if spec.kind is int:
        values.append(1.5)
    else:
        values.append(1e-320)
    if spec.low is not None:
        values.append(spec.low if spec.low_open else spec.low - 1)
    if spec.high is not None:
        values.append(spec.high if spec.high_open else spec.high + 1)
    return values


def spec_key(spec: Param) -> str:
    return spec.describe() + ("?" if spec.optional else "")


HPARAMS = [(method, name, spec) for method, cls in sorted(METHODS.items())
           for name, spec in sorted(cls.specs.items())]
HPARAM_CASES = [(method, name, value) for (method, name, _), value in
                trimmed(HPARAMS, lambda h: spec_key(h[2]), lambda h: bad_hparams(h[2]))]


def test_every_method_declares_a_spec_per_hyper_parameter():
    for cls in METHODS.values():
        assert set(cls.specs) == set(cls.defaults)
    assert {m for m, _, _ in HPARAM_CASES} >= {"lora", "prompt", "adapter", "denoiser", "blackbox",
                                               "sunet", "diffusion"}


@pytest.mark.parametrize("method, name, value", HPARAM_CASES,
                         ids=[f"{m}.{n}={v!r}" for m, n, v in HPARAM_CASES])
def test_every_hyper_parameter_refuses_bad_values(method, name, value):
    with pytest.raises(PeftsError, match=f"hyper-parameter {name} of method '{method}'"):
        get_method(method, **{name: value})


def test_finetune_refuses_a_negative_lora_rank_in_one_line(run_cli, digits, tiny_base, tmp_path):
    out = tmp_path / "m.safetensors"
    for hparams in ('{"rank": -2}', '{"dropout": NaN}', '{"rank": 2.5}'):
        code, _, err = run_cli("finetune", "--data", digits, "--base", tiny_base, "--method",
                               "lora", "--sigma", "0.5", "--hparams", hparams, "--out", out)
        one_line_error(code, err, "of method 'lora'")
    assert not out.exists()


def test_a_method_without_specs_cannot_be_defined():
    with pytest.raises(TypeError, match="specs"):
        class Undeclared(Method):  # noqa: F841
            name = "undeclared"
            defaults = {"width": 3}


# --- training options and the pipeline config -------------------------------------------------

TRAIN_CASES = [(name, value) for (name, _), value in
               trimmed(sorted(TRAIN_SPECS.items()), lambda t: spec_key(t[1]),
                       lambda t: bad_hparams(t[1]))]


def test_every_training_option_has_a_spec():
    assert set(TRAIN_SPECS) == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize("name, value", TRAIN_CASES, ids=[f"{n}={v!r}" for n, v in TRAIN_CASES])
def test_every_training_option_refuses_bad_values(name, value):
    with pytest.raises(PeftsError, match=f"training option {name} must be"):
        TrainConfig.from_dict({name: value})


@pytest.mark.parametrize("text, key", [
    ("sigmas: [0.25, .nan]", "sigmas.1"),
    ("certify: {alpha: .nan}", "certify.alpha"),
    ("sigmas: [.inf]", "sigmas.0"),
    ("certify: {alpha: 1.0e-320}", "certify.alpha"),
    ("base: {mean: [0.5, -2.0e-315, 0.5]}", "base.mean.1"),
])
def test_config_refuses_non_finite_numbers(text, key):
    config = load_config(**yaml.safe_load(text))
    with pytest.raises(PeftsError, match=f"config value {key} must be a finite number"):
        check_config(config)


# --- input files' content ---------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    ({"num_test": -1}, "num_test must be an integer >= 0"),
    ({"num_classes": "ten"}, "num_classes must be an integer >= 1"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"classes": ["a"]}, "classes must list num_classes"),
])
def test_a_malformed_manifest_is_refused(run_cli, digits, tiny_base, none_model, tmp_path,
                                         change, needle):
    import json

    manifest = {**json.loads(digits.read_text()), **change}
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(manifest))
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", bad,
                           "--sigma", "0.5", "--out", tmp_path / "o.tsv")
    one_line_error(code, err, needle)
    bad.write_text("[1, 2]")
    code, _, err = run_cli("certify", "--model", none_model, "--base", tiny_base, "--data", bad,
                           "--sigma", "0.5", "--out", tmp_path / "o.tsv")
    one_line_error(code, err, "is not a JSON object")


@pytest.mark.parametrize("meta, needle", [
    ([], "no kind"),
    ({"kind": "finetuned", "method": "none", "hparams": []}, "hparams must be a JSON dict"),
    ({"kind": "finetuned", "hparams": {}}, "method must be a JSON str"),
    ({"kind": "finetuned", "method": "none", "hparams": {}}, "classes must be a JSON list"),
])
def test_malformed_weights_metadata_is_refused(run_cli, digits, tiny_base, none_model, tmp_path,
                                               meta, needle):
    import json
    import shutil

    model = tmp_path / "model.safetensors"
    shutil.copy(none_model, model)
    model.with_suffix(".json").write_text(json.dumps(meta))
    code, _, err = run_cli("certify", "--model", model, "--base", tiny_base, "--data", digits,
                           "--sigma", "0.5", "--out", tmp_path / "o.tsv")
    one_line_error(code, err, needle)


def test_a_malformed_base_spec_is_refused(tiny_base, tmp_path):
    import json
    import shutil

    from pefts.models.classifier import load_base

    base = tmp_path / "base.safetensors"
    shutil.copy(tiny_base, base)
    meta = json.loads(tiny_base.with_suffix(".json").read_text())
    meta["spec"]["colour"] = 3
    base.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PeftsError, match="malformed spec"):
        load_base(base)
