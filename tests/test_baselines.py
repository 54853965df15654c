"""Denoised smoothing and black-box prompting baselines, on a tiny ViT and 8x8 digits."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from pefts.errors import PeftsError
from pefts.methods import get_method
from pefts.methods.denoiser import DnCNN
from pefts.models.blackbox import SPSA, QueryModel, SPSAConfig, minimize
from pefts.models.classifier import BaseSpec, build_classifier
from pefts.runtime.artifacts import load_artifact, save_artifact
from pefts.smoothing import Smooth
from pefts.training.loop import TrainConfig

SPEC = BaseSpec("vit_tiny_patch16_224", 10, 8,
                model_kwargs=dict(img_size=8, patch_size=2, embed_dim=64, depth=4, num_heads=4))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these models are tiny: a second thread costs more in synchronisation than it
    # saves, and on a shared 2-core machine it made the denoiser test 30x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def small_base() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier(SPEC).eval()


def noisy_images(data: TensorDataset, sigma: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.tensors[0]
    return x, x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sigma


# --- denoiser ---------------------------------------------------------------------------

def test_dncnn_has_the_published_architecture():
    model = get_method("denoiser").build(small_base())
    convs = [m for m in model.denoiser.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 17
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64] * 16 + [3]
    assert [c.in_channels for c in convs] == [3] + [64] * 16
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.denoiser.modules()) == 15
    assert sum(isinstance(m, nn.ReLU) for m in model.denoiser.modules()) == 16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("denoiser.") for n in trainable)
    z = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.denoiser.eval()(z), z)  # residual branch starts at zero


@pytest.mark.slow
def test_mse_training_denoises_held_out_images(digits):
    train, test = digits
    sigma = 0.5
    # the full 17-layer, 64-channel DnCNN, MSE alone: the stability phase optimises the
    # classifier's agreement, not the pixels this test measures
    method = get_method("denoiser", objective="mse")
    model = method.build(small_base())
    cfg = TrainConfig(epochs=2.5, batch_size=16, lr=1e-3, optimizer="adam")  # 219 steps
    metrics = method.fit(model, train, sigma, cfg, "cpu")
    assert metrics["mse_denoised"] < metrics["mse_noisy"]
    clean, noisy = noisy_images(test, sigma)
    with torch.no_grad():
        denoised = model.denoiser(noisy)
    mse_noisy = float(((noisy - clean) ** 2).mean())
    mse_denoised = float(((denoised - clean) ** 2).mean())
    print(f"held-out MSE: noisy {mse_noisy:.4f}, denoised {mse_denoised:.4f}")
    assert mse_denoised < 0.8 * mse_noisy


def test_stability_fine_tune_runs_and_reports(digits):
    train, _ = digits
    method = get_method("denoiser", depth=3, channels=8, objective="mse+stability",
                        stability_epochs=0.05)
    model = method.build(small_base())
    metrics = method.fit(model, train, 0.25, TrainConfig(epochs=0.05, batch_size=64), "cpu")
    assert {"mse_noisy", "mse_denoised", "stability_loss", "stability_agreement"} <= set(metrics)
    assert all(p.grad is None for p in model.classifier.parameters())


def test_denoiser_rejects_inconsistent_objectives():
    with pytest.raises(PeftsError):
        get_method("denoiser", objective="l1")
    with pytest.raises(PeftsError):
        get_method("denoiser", objective="mse", stability_epochs=2)


# --- black box --------------------------------------------------------------------------

def test_query_model_exposes_probabilities_only():
    base = small_base()
    query = QueryModel(base)
    assert list(query.parameters()) == [] and list(query.buffers()) == []
    assert query.state_dict() == {} and list(query.children()) == []
    assert not any(isinstance(v, nn.Module) for v in vars(query).values())
    for p in base.parameters():  # even a trainable base gets no gradient through a query
        p.requires_grad_(True)
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    probs = query(x)
    assert not probs.requires_grad and probs.grad_fn is None
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert (query.images, query.calls) == (4, 1)
    assert all(p.grad is None for p in base.parameters())


def test_blackbox_training_only_queries(digits, monkeypatch):
    train, _ = digits
    batch, steps, perturbations = 16, 3, 2
    data = TensorDataset(*(t[:batch * steps] for t in train.tensors))
    base = small_base()
    snapshot = copy.deepcopy(base.state_dict())
    method = get_method("blackbox", perturbations=perturbations, a=0.5)
    model = method.build(base)
    assert all(not p.requires_grad for p in base.parameters())
    coordinator_before = copy.deepcopy(method.trainable_state(model))

    def forbidden(*args, **kwargs):
        raise AssertionError("the black box was opened")

    # reading the base's weights or back-propagating anywhere fails the test
    for accessor in ("parameters", "named_parameters", "state_dict", "buffers", "named_buffers"):
        monkeypatch.setattr(base, accessor, forbidden)
    base.register_full_backward_hook(forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)

    metrics = method.fit(model, data, 0.25, TrainConfig(epochs=1, batch_size=batch), "cpu")
    monkeypatch.undo()

    assert metrics["spsa_steps"] == steps
    assert metrics["query_calls"] == model.query.calls == 2 * perturbations * steps
    assert metrics["queries"] == model.query.images == 2 * perturbations * batch * steps
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(v, snapshot[k]) for k, v in base.state_dict().items())
    after = method.trainable_state(model)
    assert any(not torch.equal(after[k], coordinator_before[k]) for k in after)


def test_blackbox_trains_only_a_tiny_coordinator():
    base = small_base()
    method = get_method("blackbox")
    model = method.build(base)
    state = method.trainable_state(model)
    assert state and all(k.startswith("coordinator.") and "encoder" not in k for k in state)
    assert sum(v.numel() for v in state.values()) < 10_000
    statistics = {f"coordinator.{k}" for k in model.coordinator.statistics()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(state) - statistics
    # smoothing the prompted model works through queries alone: it predicts, sample for
    # sample, what the base does on the prompted, clipped noisy input
    model.eval()
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))

    def smoothed(f):
        return Smooth(f, 10, 0.25).sample_counts(x, 64, 16, torch.Generator().manual_seed(0))

    def prompted_base(z):
        u = model.frame.normalise(z)
        return base(model.frame.pixels(model.frame.clip(u + model.coordinator(u))))

    counts = smoothed(model)
    assert torch.equal(counts, smoothed(prompted_base))
    assert model.query.images >= 64


def test_spsa_minimises_a_quadratic():
    target = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])

    def loss(theta: torch.Tensor) -> float:
        return float(((theta - target) ** 2).sum())

    start = torch.zeros(5)
    config = SPSAConfig(a=0.02, c=0.01, perturbations=2)
    end = minimize(loss, start, 200, config, torch.Generator().manual_seed(0))
    assert loss(end) < 0.01 * loss(start)


def test_spsa_evaluates_the_loss_twice_per_perturbation():
    calls = []
    optimiser = SPSA(torch.zeros(3), SPSAConfig(perturbations=4))
    for _ in range(5):
        optimiser.step(lambda theta: calls.append(theta.clone()) or float(theta.sum()))
    assert len(calls) == 2 * 4 * 5


# --- saving and loading -----------------------------------------------------------------

@pytest.mark.parametrize("name,hparams", [("denoiser", dict(depth=4, channels=8)),
                                          ("blackbox", dict(perturbations=1, a=0.5))])
def test_trainable_state_round_trip(digits, tmp_path, name, hparams):
    train, test = digits
    base = small_base()
    method = get_method(name, **hparams)
    model = method.build(copy.deepcopy(base))
    # a short fit moves the weights (and BatchNorm statistics) away from their init
    method.fit(model, train, 0.25, TrainConfig(epochs=0.03, batch_size=32), "cpu")
    save_artifact(tmp_path / "w.safetensors", method.trainable_state(model),
                  {"kind": "finetuned", "method": name, "hparams": hparams, "classes": []})
    tensors, _ = load_artifact(tmp_path / "w.safetensors")
    fresh_method = get_method(name, **hparams)
    fresh = fresh_method.build(copy.deepcopy(base))
    x = test.tensors[0][:16]
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(x), model.eval()(x))
        fresh_method.load_trainable(fresh, tensors)
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    with pytest.raises(PeftsError):
        fresh_method.load_trainable(fresh, {**tensors, "extra": torch.zeros(1)})


def test_denoiser_state_includes_batchnorm_statistics():
    method = get_method("denoiser", depth=4, channels=8)
    state = method.trainable_state(method.build(small_base()))
    assert any(k.endswith("running_mean") for k in state)
    assert any(k.endswith("running_var") for k in state)


def test_dncnn_rejects_degenerate_shapes():
    with pytest.raises(PeftsError):
        DnCNN(depth=1)
