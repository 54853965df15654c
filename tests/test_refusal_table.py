"""The ranges that matter, written down by hand, independently of the declarations the
validators read: a wrong declared range (a LoRA rank of 0 allowed, say) fails here, where
the sweeps of test_bad_input.py, which take their bad values from the declarations,
cannot see it. Each refused value sits next to an accepted one, so a range that is too
strict fails too."""

from __future__ import annotations

import pytest

from pefts.errors import PeftsError
from pefts.methods import get_method
from pefts.study.config import check_config, schema_problem
from pefts.training.loop import TrainConfig
from tests.test_config_errors import SCHEMA, default

# method, hyper-parameter, refused, accepted
HYPER_PARAMETERS = [
    ("lora", "rank", 0, 1),
    ("lora", "alpha", 0, 0.5),
    ("lora", "dropout", 1.0, 0.0),
    ("lora", "dropout", -0.1, 0.5),
    ("prompt", "length", 0, 1),
    ("prompt", "dropout", 1.0, 0.0),
    ("adapter", "bottleneck", 0, 1),
    ("denoiser", "depth", 1, 2),
    ("denoiser", "channels", 0, 1),
    ("denoiser", "objective", "l1", "mse"),
    ("blackbox", "perturbations", 0, 1),
    ("blackbox", "momentum", 1.0, 0.0),
    ("blackbox", "eps", 0, 0.1),
    ("sunet", "window", 0, 1),
    ("sunet", "depths", [0], [1]),
]


@pytest.mark.parametrize("method, name, refused, accepted", HYPER_PARAMETERS)
def test_hyper_parameter_ranges(method, name, refused, accepted):
    with pytest.raises(PeftsError, match=f"hyper-parameter {name} of method '{method}'"):
        get_method(method, **{name: refused})
    get_method(method, **{name: accepted})


# training option, refused, accepted
TRAINING = [
    ("lr", 0, 1e-6), ("batch_size", 0, 1), ("epochs", -1, 0), ("momentum", -0.1, 0),
    ("weight_decay", -0.1, 0), ("warmup_epochs", -1, 0), ("optimizer", "lbfgs", "sgd"),
]


@pytest.mark.parametrize("name, refused, accepted", TRAINING)
def test_training_option_ranges(name, refused, accepted):
    with pytest.raises(PeftsError, match=f"training option {name} must be"):
        TrainConfig.from_dict({name: refused})
    TrainConfig.from_dict({name: accepted})


# command, option, refused, accepted (the other options are valid or never reached)
CERTIFY = ["certify", "--model", "m.safetensors", "--base", "b", "--data", "d", "--out", "o.tsv"]
OPTIONS = [
    ("--sigma", "0", "0.01"), ("--sigma", "-0.5", "0.5"),
    ("--alpha", "1", "0.5"), ("--alpha", "0", "0.001"),
    ("--n", "0", "100"), ("--n0", "0", "1"), ("--batch", "0", "1"), ("--skip", "0", "1"),
    ("--seed", "-1", "0"), ("--pool", "0", "1"), ("--rtol", "0", "0.1"),
]


@pytest.mark.parametrize("option, refused, accepted", OPTIONS)
def test_certify_option_ranges(run_cli, option, refused, accepted):
    sigma = [] if option == "--sigma" else ["--sigma", "0.5"]
    if option == "--rtol":
        sigma.append("--adaptive")  # an adaptive option, refused in fixed mode
    code, _, err = run_cli(*CERTIFY, *sigma, option, refused)
    assert code != 0 and option in err, err
    code, _, err = run_cli(*CERTIFY, *sigma, option, accepted)
    assert option not in err, err  # refused later, for the missing files, not for the value
    assert "does not exist" in err


# config key path, refused, accepted
CONFIG = [
    (("sigmas",), [0], [0.01]),
    (("certify", "alpha"), 1, 0.5),
    (("certify", "n0"), 0, 1),
    (("certify", "shards"), 0, 1),
    (("certify", "grid"), [-0.1], [0.0]),
    (("experiments", "ablation", "lora_rank"), [0], [1]),
    (("experiments", "ablation", "prompt_length"), [0], [1]),
    (("summary", "radii"), [-1], [0]),
    # what a job refuses hours later (issue 29): its option's range and type
    (("summary", "radii"), [], [0]),
    (("certify", "seed"), -1, 0),
    (("dataset", "seed"), -1, 0),
    (("certify", "n"), 2000.0, 2000),
    (("certify", "shards"), 2.0, 2),
    (("base", "train"), {"seed": -1}, {"seed": 0}),
    (("base", "train"), {"momentum": 1.0}, {"momentum": 0.9}),
]


def with_value(path, value) -> dict:
    config = default()
    section = config
    for key in path[:-1]:
        section = section.setdefault(key, {})
    section[path[-1]] = value
    return config


@pytest.mark.parametrize("path, refused, accepted", CONFIG)
def test_config_ranges(path, refused, accepted):
    assert ".".join(path) in (schema_problem(with_value(path, refused), SCHEMA) or "")
    assert schema_problem(with_value(path, accepted), SCHEMA) is None


def test_method_params_ranges_in_the_config():
    from tests.test_experiments import load_config

    for method, name, refused, _accepted in HYPER_PARAMETERS:
        with pytest.raises(PeftsError, match=f"method_params.{method}.hparams.{name} must be"):
            check_config(load_config(method_params={method: {"hparams": {name: refused}}}))
