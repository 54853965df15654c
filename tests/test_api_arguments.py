"""`pefts.certify` answers only the question it can: every bad argument of issue 29 ends
in a ValueError or TypeError naming it, NaN logits are never votes, the caller's model
comes back in its mode, the printed rows say how they were certified, and `seed` and
`grid` change what they should. The API's rules are the CLI's and the config's."""

from __future__ import annotations

import random
import subprocess
import sys

import click
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import pefts
from pefts.certification.arguments import CERTIFY_ARGUMENTS
from pefts.errors import PeftsError, PeftsTypeError

torch.manual_seed(0)
LINEAR = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
IMAGES = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
LABELS = [0, 1, 2, 3]
FIXED = dict(sigma=0.25, n=200, n0=16, adaptive=False)


class NanLogits(nn.Module):
    """Finite on the clean probe, NaN from its ``after``-th call on (noisy batches)."""

    def __init__(self, after: int = 1):
        super().__init__()
        self.net, self.after, self.calls = LINEAR, after, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out if self.calls <= self.after else out * float("nan")


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)  # (N,), not (N, classes)


class Pair(nn.Module):
    def forward(self, x):
        return LINEAR(x), x  # a tuple, not a tensor


def with_pixel(value: float) -> torch.Tensor:
    images = IMAGES.clone()
    images[1, 0, 2, 2] = value
    return images


BAD = [  # (arguments changed, error class, text the message must hold)
    (dict(labels=[-1, 1, 2, 3]), ValueError, "labels"),
    (dict(labels=[0, 1, 2, 10]), ValueError, "labels"),
    (dict(labels=[0, 1.5, 2, 3]), TypeError, "labels"),
    (dict(labels=torch.tensor([0, 1.5, 2, 3])), TypeError, "labels"),
    (dict(labels=[True, 1, 2, 3]), TypeError, "labels"),
    (dict(labels=[0, 1, 2]), ValueError, "labels"),
    (dict(labels=[0, 1, 2, 2**70]), ValueError, "labels"),
    (dict(images=with_pixel(float("nan"))), ValueError, "images hold 1 non-finite value"),
    (dict(images=with_pixel(float("inf"))), ValueError, "images hold 1 non-finite value"),
    (dict(images=IMAGES * 255), ValueError, "divide by 255"),
    (dict(images=(IMAGES * 255).to(torch.uint8)), TypeError, "images"),
    (dict(images=(IMAGES - 0.5) * 4), ValueError, "normalisation"),
    (dict(images=IMAGES[:, 0]), ValueError, "images"),
    (dict(images=IMAGES.tolist()), TypeError, "images"),
    (dict(sigma=float("inf")), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-0.25), ValueError, "sigma"),
    (dict(sigma="0.25"), TypeError, "sigma"),
    (dict(sigma=1e308), ValueError, "sigma"),
    (dict(n=1000.5), TypeError, "n must"),
    (dict(n=True), TypeError, "n must"),
    (dict(n=5), ValueError, "n 5"),
    (dict(n0=16.0), TypeError, "n0"),
    (dict(n0=0), ValueError, "n0"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.0), TypeError, "seed"),
    (dict(batch=0), ValueError, "batch"),
    (dict(precision="fp64"), ValueError, "precision"),
    (dict(adaptive="no"), TypeError, "adaptive"),
    (dict(num_classes=9), ValueError, "num_classes=9"),
    (dict(adaptive=True, rtol=0), ValueError, "rtol"),
    (dict(adaptive=True, rtol=float("nan")), ValueError, "rtol"),
    (dict(adaptive=True, grid=[0.0, -0.5]), ValueError, "grid"),
    (dict(adaptive=True, grid=[float("inf")]), ValueError, "grid"),
    (dict(adaptive=True, grid=[]), ValueError, "grid"),
    (dict(grid=[0.5]), ValueError, "grid applies only with adaptive"),
    (dict(model=NanLogits(after=0)), ValueError, "NanLogits"),
    (dict(model=NanLogits(after=1)), ValueError, "NanLogits"),  # NaN once noise comes
    (dict(model=Flat()), ValueError, "shape"),
    (dict(model=Pair()), TypeError, "model"),
    (dict(model=lambda x: x), TypeError, "model"),
    (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(48, 1))), ValueError, "2 logits"),
    (dict(device="gpu"), ValueError, "device"),
    (dict(device="meta"), ValueError, "device"),
    (dict(device=0), TypeError, "device"),
    (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(48, 10, device="meta")), device="cpu"),
     ValueError, "the model is on meta but device='cpu'"),
    (dict(progress="yes"), TypeError, "progress"),
]


@pytest.mark.parametrize("bad, error, needle", BAD, ids=[f"{i}-{n}" for i, (_, _, n) in enumerate(BAD)])
def test_each_bad_argument_is_refused_naming_it(bad, error, needle):
    args = dict(model=LINEAR, images=IMAGES, labels=LABELS, **FIXED)
    args.update(bad)
    with pytest.raises(error, match=needle) as caught:
        pefts.certify(**args)
    assert isinstance(caught.value, PeftsError)  # one line in the CLI, ValueError in Python
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_a_value_error_naming_the_device():
    with pytest.raises(ValueError, match="device='cuda': .*no usable CUDA"):
        pefts.certify(LINEAR, IMAGES, LABELS, device="cuda", **FIXED)


def test_pefts_errors_are_caught_the_usual_way():
    assert issubclass(PeftsError, ValueError)
    assert issubclass(PeftsTypeError, TypeError) and issubclass(PeftsTypeError, PeftsError)
    try:
        pefts.certify(LINEAR, IMAGES, LABELS, sigma=-1, n=200)
    except ValueError as err:
        assert "sigma" in str(err)


def test_the_cli_prints_a_type_error_as_one_line(monkeypatch, capsys):
    from pefts import cli

    def fails(**_):
        raise PeftsTypeError("n must be a finite int >= 1, got 1000.5 (float)")

    monkeypatch.setattr(cli.cli, "main", fails)
    with pytest.raises(SystemExit) as code:
        cli.main()
    assert code.value.code == 1
    assert capsys.readouterr().err == "error: n must be a finite int >= 1, got 1000.5 (float)\n"


def test_nan_logits_are_never_votes_in_cohens_path_either():
    from pefts.certification.smoothing import Smooth

    smooth = Smooth(NanLogits(after=0).eval(), 10, 0.25)
    with pytest.raises(PeftsError, match=r"the model \(NanLogits\) returned non-finite"):
        smooth.certify(IMAGES[0], 16, 200, 0.001, 50)


@pytest.mark.parametrize("adaptive", [True, False])
def test_an_empty_batch_is_an_empty_frame_with_the_columns(adaptive):
    rows = pefts.certify(LINEAR, IMAGES[:0], [], sigma=0.25, n=200, n0=16, adaptive=adaptive)
    full = pefts.certify(LINEAR, IMAGES[:1], [0], sigma=0.25, n=200, n0=16, adaptive=adaptive)
    assert len(rows) == 0 and list(rows.columns) == list(full.columns)
    assert dict(rows.dtypes) == dict(full.dtypes)
    assert "0 images" in repr(rows)


@pytest.mark.parametrize("training", [True, False])
def test_the_callers_model_mode_comes_back(training):
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 10)).train(training)
    pefts.certify(model, IMAGES, LABELS, **FIXED)
    assert [m.training for m in model.modules()] == [training] * 4
    model[1].eval()  # a mixed model, and after an error
    with pytest.raises(ValueError):
        pefts.certify(model, IMAGES, LABELS, **{**FIXED, "num_classes": 9})
    assert [m.training for m in model.modules()] == [training, training, False, training]


def test_the_printed_rows_say_how_they_were_certified():
    fixed = pefts.certify(LINEAR, IMAGES, LABELS, **FIXED)
    head = repr(fixed).splitlines()[0]
    for part in ("fixed n 200", "n0 16", "alpha 0.001", "sigma 0.25", "fp32", "sound=False",
                 f"{16 * 4 + 200 * 4:,} samples used"):
        assert part in head, (part, head)
    adaptive = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.25, n=500, n0=16)
    head = adaptive.summary()
    used = int(adaptive["n_used"].sum()) + 16 * 4
    assert f"adaptive, n_max {adaptive.attrs['n_max']} (grid 0,0.25,0.5,0.75,1)" in head
    assert f"{used:,} samples used" in head and head in str(adaptive)
    # still a DataFrame: selections keep the header, reductions and files do not carry it
    assert repr(adaptive[["idx", "radius"]]).startswith("pefts.certify: adaptive")
    assert isinstance(adaptive["radius"], pd.Series) and adaptive["radius"].mean() >= 0
    assert "pefts.certify" not in adaptive.to_csv(sep="\t")
    both = pd.concat([adaptive, adaptive])
    assert len(both) == 8 and isinstance(both, pd.DataFrame)


def test_progress_bar_on_request_only(capsys):
    pefts.certify(LINEAR, IMAGES, LABELS, progress=True, **FIXED)
    assert "certify" in capsys.readouterr().err
    pefts.certify(LINEAR, IMAGES, LABELS, progress=False, **FIXED)
    pefts.certify(LINEAR, IMAGES, LABELS, **FIXED)  # 4 images, stderr not a terminal
    assert capsys.readouterr().err == ""


def test_certify_is_listed_while_torch_stays_unimported():
    code = ("import sys, pefts; assert 'certify' in dir(pefts), dir(pefts); "
            "assert 'torch' not in sys.modules; assert callable(pefts.certify)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_changes_the_noise():
    """Planted bug of issue 29: `seed` ignored."""
    first = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.5, n=400, n0=16, seed=0)
    again = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.5, n=400, n0=16, seed=0)
    other = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.5, n=400, n0=16, seed=1)
    columns = ["nA", "n_used"]
    pd.testing.assert_frame_equal(first[columns], again[columns])
    assert not first[columns].equals(other[columns])


def test_grid_changes_the_adaptive_stopping():
    """Planted bug of issue 29: `grid` ignored. Deciding radius 0 alone settles sooner
    than deciding every radius up to 1."""
    whole = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.5, n=2000, n0=16)
    zero = pefts.certify(LINEAR, IMAGES, LABELS, sigma=0.5, n=2000, n0=16, grid=[0.0])
    assert zero.attrs["grid"] == [0.0]
    assert zero["n_used"].sum() < whole["n_used"].sum()


def test_numpy_and_tensor_scalars_are_plain_numbers():
    rows = pefts.certify(LINEAR, IMAGES.numpy(), np.array(LABELS), sigma=np.float32(0.25),
                         n=np.int64(200), n0=torch.tensor(16), adaptive=False)
    assert rows.attrs["n"] == 200 and type(rows.attrs["n"]) is int


def test_the_api_rules_are_the_clis_and_the_configs():
    """The scalar arguments of `pefts.certify` against `pefts certify`'s option types and
    the config schema's certify section: the same ranges, the same choices."""
    import yaml

    from pefts.cli.certification import certify as certify_command
    from pefts.study.config import param_of

    def numbers(spec):
        return (spec.kind, spec.low, spec.high, spec.low_open, spec.high_open)

    options = {p.name: p.type for p in certify_command.params}
    compared = 0
    for name, spec in CERTIFY_ARGUMENTS.items():
        kind = options.get(name)
        if isinstance(kind, click.types._NumberRangeBase):
            low_open, high_open = getattr(kind, "min_open", False), getattr(kind, "max_open", False)
            cli = (int if isinstance(kind, click.IntRange) else float, kind.min, kind.max,
                   low_open, high_open)
            assert cli == numbers(spec), (name, cli, numbers(spec))
            compared += 1
        elif isinstance(kind, click.Choice):
            assert tuple(kind.choices) == spec.choices, name
            compared += 1
    assert compared >= 8  # sigma n n0 alpha batch seed rtol pool precision

    schema = yaml.safe_load(open("workflow/schemas/config.schema.yaml"))["properties"]
    section = schema["certify"]["properties"]
    nodes = {**section, "sigma": schema["sigmas"]["items"]}
    # certify.seed's range (the CLI's: 0 to 2**63 - 1) is the config half of issue 29
    for name in ("sigma", "n", "n0", "alpha", "grid", "rtol", "batch", "pool", "precision"):
        assert param_of(nodes[name]).describe() == CERTIFY_ARGUMENTS[name].describe(), name


def test_never_an_infinite_radius_nor_an_abstention_counted_correct():
    """Random inputs, each good ones with up to three random changes (most of them bad):
    each call either refuses with pefts's ValueError/TypeError or returns finite radii,
    labels in range and correct == (predict == label >= 0)."""
    rng = random.Random(29)
    changes = {
        "images": lambda a: a["images"] * rng.choice([255, -1, 4]) + rng.choice([0, -2]),
        "pixel": lambda a: with_pixel(rng.choice([float("nan"), float("inf"), 2.0]))[:len(a["labels"])],
        "precision": lambda a: a["images"].to(rng.choice([torch.float64, torch.float16])),
        "labels": lambda a: [rng.choice([0, 3, 9, -1, 10, 2.0, -5]) for _ in a["labels"]],
        "count": lambda a: a["labels"][:-1],
        "sigma": lambda a: rng.choice([1e-3, 3.0, 0, -1.0, float("inf"), float("nan"), "0.5", 1e38]),
        "n": lambda a: rng.choice([1000.5, True, 5, 9, 12, 0]),
        "n0": lambda a: rng.choice([1, 0, 2.5, -1]),
        "alpha": lambda a: rng.choice([0.5, 1.0, 0.0, 1e-300, float("nan")]),
        "seed": lambda a: rng.choice([7, -3, 2**64]),
        "grid": lambda a: rng.choice([[0.0], [0.0, 2.0], [-1.0], [float("nan")], [1e300]]),
        "rtol": lambda a: rng.choice([0.1, 0, -0.1, float("inf"), 1e-12]),
        "num_classes": lambda a: rng.choice([9, 10, 11, 1, 0]),
        "model": lambda a: rng.choice([NanLogits(after=rng.choice([0, 1, 3, 6])),
                                       nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()]),
    }
    refused = returned = 0
    for _ in range(80):
        count = rng.choice([0, 1, 3])
        args = dict(model=LINEAR, images=IMAGES[:count], labels=LABELS[:count], sigma=0.25, n=200,
                    n0=16, adaptive=rng.random() < 0.6, seed=0, progress=False)
        for name in rng.sample(sorted(changes), rng.choice([0, 1, 1, 2, 3])):
            key = {"pixel": "images", "precision": "images", "count": "labels"}.get(name, name)
            if key in ("grid", "rtol") and not args["adaptive"]:
                continue
            args[key] = changes[name](args)
        try:
            rows = pefts.certify(**args)
        except (ValueError, TypeError) as err:
            assert isinstance(err, PeftsError), repr(err)  # named by pefts, not a deep error
            refused += 1
            continue
        returned += 1
        assert np.isfinite(rows["radius"]).all() and (rows["radius"] >= 0).all()
        assert (rows.loc[rows["predict"] < 0, "correct"] == 0).all()
        assert (rows["correct"] == ((rows["predict"] == rows["label"]) & (rows["predict"] >= 0))).all()
        assert rows["label"].between(0, 9).all()
    assert refused >= 20 and returned >= 20, (refused, returned)
