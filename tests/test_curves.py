"""Training curves (pefts.training.curves) in-process: a row per epoch beside the weights, the
rows of a run stopped and resumed are those of an uninterrupted run (none twice, none
lost), a run that starts over starts a new curve, and measuring the validation accuracy
between epochs does not change the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pefts.training import checkpoints, curves
from pefts.training.checkpoints import Interrupted, checkpointing
from pefts.training.loop import optimise
from tests.test_checkpoints import CFG, Augmented, assert_equal_models, tiny_model, train

STEPS = ["4", "8", "12"]  # three epochs of four steps


def run(out, evaluate=None, crash_at=None, save_fails_at=None, monkeypatch=None,
        settings="settings") -> nn.Module:
    """The tests' noisy training of a tiny model with dropout, its curve recorded."""
    model = tiny_model()
    calls = [0]

    def loss(x, y):
        calls[0] += 1
        if calls[0] == crash_at:
            raise RuntimeError("crash")
        logits = model(x + torch.randn_like(x) * 0.5)
        ce = nn.functional.cross_entropy(logits, y)
        return ce, {"train_loss": float(ce.detach()) * len(y),
                    "train_accuracy": float((logits.argmax(1) == y).sum())}

    if save_fails_at is not None:
        real_save = checkpoints.Checkpoint.save

        def save(self, state):
            if state["step"] == save_fails_at:
                raise OSError("killed while saving")
            real_save(self, state)

        monkeypatch.setattr(checkpoints.Checkpoint, "save", save)
    try:
        with checkpointing(out, settings, 0.0) as checkpoint, \
                curves.recording(out, fresh=checkpoint.saved is None,
                                 evaluate=evaluate and curves.evaluating(model, evaluate)):
            optimise(model, Augmented(), CFG, CFG.epochs, loss, "cpu", "test")
    finally:
        if save_fails_at is not None:
            monkeypatch.undo()
    return model


def rows(out) -> list[dict[str, str]]:
    return curves.read_curve(curves.curve_path(out))


def test_a_row_per_epoch_beside_the_weights(tmp_path):
    out = tmp_path / "model.safetensors"
    run(out, evaluate=lambda: 0.25)
    assert curves.curve_path(out) == tmp_path / "model.curve.tsv"
    table = rows(out)
    assert [r["step"] for r in table] == STEPS
    assert [float(r["epoch"]) for r in table] == [1.0, 2.0, 3.0]
    for row in table:
        assert float(row["loss"]) > 0 and 0 <= float(row["train_accuracy"]) <= 1
        assert float(row["val_accuracy"]) == 0.25 and row["validation"] == ""
        assert float(row["lr"]) > 0 and float(row["samples_per_s"]) > 0
    # the cosine schedule: the rate of each epoch's last step falls
    assert float(table[0]["lr"]) > float(table[1]["lr"]) > float(table[2]["lr"])


def test_without_a_validation_split_the_curve_says_so(tmp_path):
    run(tmp_path / "m")
    assert all(r["val_accuracy"] == "" and r["validation"] == curves.NO_VALIDATION
               for r in rows(tmp_path / "m"))


@pytest.mark.parametrize("stop", ["crash mid-epoch", "killed saving an epoch's end"])
def test_a_resumed_run_keeps_its_rows_and_writes_none_twice(tmp_path, monkeypatch, stop):
    whole = tmp_path / "whole"
    run(whole)
    out = tmp_path / "stopped"
    if stop == "crash mid-epoch":
        with pytest.raises(RuntimeError, match="crash"):
            run(out, crash_at=7)  # checkpoint at step 4, row of step 4 written
    else:  # the row of step 8 is written, its checkpoint is not: step 8 is computed again
        with pytest.raises(OSError, match="killed while saving"):
            run(out, save_fails_at=8, monkeypatch=monkeypatch)
        assert [r["step"] for r in rows(out)] == ["4", "8"]
    before = rows(out)
    run(out)
    after = rows(out)
    assert [r["step"] for r in after] == STEPS
    assert after[0] == before[0]  # kept, not rewritten by the resumed run
    for left, right in zip(after, rows(whole), strict=True):
        assert (left["loss"], left["train_accuracy"], left["lr"]) == \
            (right["loss"], right["train_accuracy"], right["lr"])


def test_a_run_that_starts_over_starts_a_new_curve(tmp_path):
    out = tmp_path / "m"
    run(out)
    with pytest.raises(RuntimeError, match="crash"):
        run(out, crash_at=3, settings="other settings")  # ignores the old checkpoint
    assert rows(out) == []


def test_validation_between_epochs_leaves_the_weights_alone(tmp_path):
    """The evaluation switches dropout off; the training must go on with it on."""
    def evaluate():
        for module in model_under_test.modules():
            module.eval()
        return 0.5

    plain = train(tmp_path / "plain")
    model_under_test = None

    def evaluating(model, fn):
        nonlocal model_under_test
        model_under_test = model
        return real(model, fn)

    real = curves.evaluating
    curves.evaluating = evaluating
    try:
        measured = run(tmp_path / "measured", evaluate=evaluate)
    finally:
        curves.evaluating = real
    assert_equal_models(measured, plain)


def test_an_interrupted_run_keeps_its_curve_until_resumed(tmp_path):
    import os
    import signal

    out = tmp_path / "m"
    model = tiny_model()
    calls = [0]

    def loss(x, y):
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), signal.SIGUSR1)
        return nn.functional.cross_entropy(model(x), y), {}

    with pytest.raises(Interrupted), checkpointing(out, "s", 0.0) as checkpoint, \
            curves.recording(out, fresh=checkpoint.saved is None):
        optimise(model, Augmented(), CFG, CFG.epochs, loss, "cpu", "test")
    assert [r["step"] for r in rows(out)] == ["4"]


def test_the_report_draws_a_figure_per_method_and_names_runs_without_a_curve(tmp_path, run_cli):
    """Two sigmas of one method (one with two stages, as a denoiser), a method that
    trains nothing, and the base: a figure each, the untrained run named in a note."""
    trained = [tmp_path / f"s{i}" / "model.safetensors" for i in (1, 2)]
    for i, model in enumerate(trained):
        model.parent.mkdir()
        curve = curves.Curve(curves.curve_path(model), True, None)
        for _ in range(i + 1):
            curve.begin_stage()
            for step in (4, 8):
                curve.add(step / 4, step, {"train_loss": 1 / step, "train_accuracy": 0.5},
                          0.1, 100.0)
    untrained = tmp_path / "none" / "model.safetensors"
    base = tmp_path / "base" / "base.safetensors"
    base.parent.mkdir()
    curves.Curve(curves.curve_path(base), True, lambda: 0.7).add(1.0, 3, {"train_loss": 2.0}, 0.01, 5.0)
    table = curves.run_table(curves.read_curve(curves.curve_path(trained[1])))
    assert list(table["epoch_run"]) == [1.0, 2.0, 3.0, 4.0]  # the second stage continues
    code, out, err = run_cli("plot-curves", "--run", "lora", "0.25", trained[0],
                             "--run", "lora", "0.5", trained[1], "--run", "none", "0.25",
                             untrained, "--base", base,
                             "--out", tmp_path / "figures" / "curves_{run}.png")
    assert code == 0, err
    for label, lines in (("lora", 2), ("none", 0), ("base", 1)):
        assert (tmp_path / "figures" / f"curves_{label}.png").stat().st_size > 0
        assert f"{label}: {lines} curve(s)" in out
    code, _, err = run_cli("plot-curves", "--run", "lora", "0.25", trained[0], "--run", "none",
                           "0.25", untrained, "--out", tmp_path / "one.png")
    assert code != 0 and "--out must contain {run}" in err


@pytest.mark.parametrize("method, hparams", [
    ("lora", {"rank": 2}),
    ("denoiser", {"depth": 2, "channels": 4, "objective": "mse+stability", "stability_epochs": 1}),
    ("blackbox", {"encoder": "conv", "query": "base", "perturbations": 1, "steps": 0}),
])
def test_every_training_job_writes_its_curve_beside_its_weights(method, hparams, digits,
                                                                 tiny_base, tmp_path):
    """The jobs as the pipeline runs them (pefts.finetuning.runs.finetune): a row per epoch of each
    stage (the denoiser's two, SPSA's steps), the held-out accuracy measured; the base's
    training (tiny_base) wrote its own."""
    from pefts.finetuning.runs import finetune

    out = tmp_path / "model.safetensors"
    finetune(digits, tiny_base, out, method, 0.5, hparams,
             {"epochs": 2, "batch_size": 512, "lr": 1e-3}, device="cpu", eval_max=50)
    table = rows(out)
    stages = {"denoiser": ["0", "0", "1"]}.get(method, ["0", "0"])
    assert [r["stage"] for r in table] == stages
    assert all(0 <= float(r["val_accuracy"]) <= 1 and float(r["samples_per_s"]) > 0
               and float(r["lr"]) > 0 and r["loss"] for r in table)
    assert [r["step"] for r in rows(tiny_base)]  # the base's curve (clean: sigma 0)


def test_a_two_stage_run_resumed_in_its_second_stage_keeps_both(tmp_path):
    """The denoiser's way: MSE, then stability; killed in the second, the first stage's
    rows stay those of stage 0 and the second's are not written over them."""
    def two_stages(out, crash_at=None):
        model = tiny_model()
        calls = [0]

        def loss(x, y):
            calls[0] += 1
            if calls[0] == crash_at:
                raise RuntimeError("crash")
            return nn.functional.cross_entropy(model(x), y), {"train_loss": 1.0 * len(y)}

        with checkpointing(out, "s", 0.0) as checkpoint, \
                curves.recording(out, fresh=checkpoint.saved is None):
            optimise(model, Augmented(), CFG, CFG.epochs, loss, "cpu", "one")
            optimise(model, Augmented(), CFG, 2, loss, "cpu", "two", stream="two")

    two_stages(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="crash"):
        # after the second stage's first epoch end: its checkpoint says the first finished
        two_stages(tmp_path / "m", crash_at=12 + 6)
    two_stages(tmp_path / "m")
    keys = [(r["stage"], r["step"]) for r in rows(tmp_path / "m")]
    assert keys == [("0", "4"), ("0", "8"), ("0", "12"), ("1", "4"), ("1", "8")]
    assert keys == [(r["stage"], r["step"]) for r in rows(tmp_path / "whole")]
