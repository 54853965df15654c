"""Summary quantities against hand-computed values, LoRA's targets pinned by name, and
the training recipe's knobs (validation split, denoiser stability rate, adapter norms)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from pefts.certification.results import average_certified_radius, certified_accuracy, summarize
from pefts.methods import get_method
from pefts.training.loop import TrainConfig, split_validation

from .test_methods import small_base, toy_data

# six images: two correct and certified (radii 0.3, 0.8), one correct with radius 0 at the
# boundary of abstaining, one wrong with a radius (a certified mistake), two abstentions
SMALL_TSV = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t1\t1\t0.3\t1\t0.1
1\t2\t2\t0.8\t1\t0.1
2\t3\t3\t0.0\t1\t0.1
3\t4\t5\t0.6\t0\t0.1
4\t5\t-1\t0.0\t0\t0.1
5\t6\t-1\t0.0\t0\t0.1
"""


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(SMALL_TSV), sep="\t")


@pytest.mark.parametrize("radius, expected", [
    (0.0, 3 / 6),   # images 0, 1, 2
    (0.3, 2 / 6),   # images 0, 1 (>= is inclusive)
    (0.5, 1 / 6),   # image 1 only; image 3's 0.6 is wrong
    (0.8, 1 / 6),
    (0.81, 0.0),
])
def test_certified_accuracy_by_hand(frame, radius, expected):
    assert certified_accuracy(frame, radius) == pytest.approx(expected, abs=1e-12)


def test_acr_by_hand(frame):
    # correct rows only, over all six: (0.3 + 0.8 + 0.0) / 6; the wrong 0.6 counts 0
    assert average_certified_radius(frame) == pytest.approx(1.1 / 6, abs=1e-12)


def test_summary_row_by_hand(frame):
    row = summarize([("m", 0.5, frame)], [0.0, 0.5]).iloc[0]
    assert row["images"] == 6
    assert row["r=0"] == pytest.approx(0.5) and row["r=0.5"] == pytest.approx(1 / 6)
    assert row["ACR"] == pytest.approx(1.1 / 6)
    assert row["abstain"] == pytest.approx(2 / 6)
    assert row["sec/img"] == pytest.approx(0.1)


# --- LoRA targets --------------------------------------------------------------------------

def test_lora_trains_q_and_v_of_every_block_and_the_head_only():
    base = small_base()
    depth = len(base.net.blocks)
    model = get_method("lora", rank=2).build(base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"net.blocks.{i}.attn.qkv.{part}.lora_{ab}.default.weight"
                for i in range(depth) for part in ("q", "v") for ab in ("A", "B")}
    assert trainable == expected | {"net.head.weight", "net.head.bias"}


# --- validation split ----------------------------------------------------------------------

def test_validation_split_is_seeded_disjoint_and_complete():
    data = toy_data(50)
    train, val = split_validation(data, TrainConfig(val_fraction=0.2, seed=3))
    assert len(val) == 10 and len(train) == 40
    assert set(train.indices).isdisjoint(val.indices)
    assert set(train.indices) | set(val.indices) == set(range(50))
    again = split_validation(data, TrainConfig(val_fraction=0.2, seed=3))[1]
    other = split_validation(data, TrainConfig(val_fraction=0.2, seed=4))[1]
    assert again.indices == val.indices and other.indices != val.indices


def test_finetune_reports_validation_accuracy(digits, tiny_base, tmp_path):
    from pefts.finetuning.runs import finetune

    meta = finetune(digits, tiny_base, tmp_path / "m.safetensors", "none", 0.25, {},
                    {"val_fraction": 0.25}, "cpu")
    assert 0.0 <= meta["metrics"]["noisy_val_accuracy"] <= 1.0


def test_training_never_sees_the_validation_images(digits, tiny_base, tmp_path, monkeypatch):
    """The data method.fit receives is the training split minus the validation images."""
    from pefts.finetuning.runs import finetune
    from pefts.methods.base import Method

    seen = {}

    def record(self, model, data, sigma, cfg, device):
        seen["size"] = len(data)
        return {}

    monkeypatch.setattr(Method, "fit", record)
    finetune(digits, tiny_base, tmp_path / "m.safetensors", "lora", 0.25, {}, {"val_fraction": 0.2},
             "cpu")
    from pefts.data import load_split

    total = len(load_split(digits, "train"))
    assert seen["size"] == total - round(0.2 * total)


# --- denoiser and adapter recipes ----------------------------------------------------------

def test_denoiser_stability_phase_has_its_own_learning_rate(monkeypatch):
    import pefts.methods.denoiser as denoiser

    rates = []

    def record(model, data, cfg, epochs, loss, device, desc, stream="train"):
        rates.append((desc.split()[1], cfg.lr, stream))
        return {"mse_denoised": 0.0, "stability_loss": 0.0}

    monkeypatch.setattr(denoiser, "optimise", record)
    method = get_method("denoiser", depth=3, channels=4, stability_lr=2e-5)
    method.fit(method.build(small_base()), toy_data(8), 0.25, TrainConfig(epochs=1, lr=1e-3), "cpu")
    # the second stage draws its own noise, not a replay of the first's
    assert rates == [("mse", 1e-3, "train"), ("stability", 2e-5, "stability")]


def test_denoiser_default_is_the_readme_recipe():
    """README: 'MSE, then the stability objective', at a much smaller rate."""
    method = get_method("denoiser")
    assert method.stability_epochs(TrainConfig(epochs=4)) > 0
    assert method.hparams["stability_lr"] <= TrainConfig().lr / 10


def test_adapter_can_train_the_layer_norms():
    plain = get_method("adapter", bottleneck=4).build(small_base())
    houlsby = get_method("adapter", bottleneck=4, train_norms=True).build(small_base())
    names = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    added = names(houlsby) - names(plain)
    norms = {n for n, m in houlsby.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert added == {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    assert any(".norm1." in n for n in added) and "net.norm.weight" in added
