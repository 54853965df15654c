"""The paper's baselines at their real sizes on 2-3 CIFAR-sized images: a random
ViT-B/16 base, the CIFAR-10 preset's SUNet (99.6M), a random-weight MAE ViT-B/16 file
as the coordinator's encoder and a random CLIP ViT-B/16 file as the queried black box;
the diffusion row of each preset with random weights of its released checkpoint
(52.5M at 32x32, 552.8M on a 224 crop) and, on ImageNet, of its BEiT-L/16 classifier
at 512. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
import yaml
from scipy.stats import norm
from torch.utils.data import TensorDataset

from pefts.methods import get_method
from pefts.models.classifier import BaseSpec, build_classifier
from pefts.smoothing import Smooth
from pefts.training.loop import TrainConfig
from tests.fixtures_baselines import paper_baseline_overrides
from tests.test_baselines import one_thread  # noqa: F401  (one intra-op thread: much faster here)
from tests.test_experiments import ROOT

pytestmark = pytest.mark.slow

PRESET = yaml.safe_load((ROOT / "configs" / "cifar10-vitb16.yaml").read_text())
SIGMA, N0, N, ALPHA = 0.25, 1, 4, 0.1  # the smallest n whose certificates can be > 0


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> dict:
    return paper_baseline_overrides(tmp_path_factory.mktemp("weights"), image_size=32)


def preset_hparams(method: str, overrides: dict) -> dict:
    return {**PRESET["method_params"][method].get("hparams", {}),
            **overrides.get(method, {}).get("hparams", {})}


def vitb16_base() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(BaseSpec("vit_base_patch16_224", 10, 224)).eval()


def images(count: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(4)
    return TensorDataset(torch.rand(count, 3, 32, 32, generator=gen), torch.arange(count) % 10)


def certify_two(model: torch.nn.Module) -> None:
    smooth = Smooth(model.eval(), 10, SIGMA)
    cap = SIGMA * norm.ppf(ALPHA ** (1 / N))
    for i, x in enumerate(images(2).tensors[0]):
        gens = (torch.Generator().manual_seed(2 * i), torch.Generator().manual_seed(2 * i + 1))
        label, radius = smooth.certify(x, N0, N, ALPHA, N, *gens)
        assert label in range(-1, 10) and 0 <= radius <= cap + 1e-9


@pytest.mark.parametrize("method", ["sunet", "blackbox"])
def test_paper_baseline_at_real_size(method, overrides):
    hparams = preset_hparams(method, overrides)
    if method == "blackbox":
        hparams |= {"perturbations": 1, "steps": 1}  # one step, not the preset's 5,000
    if method == "sunet":
        hparams["stability_epochs"] = 1  # one step of each phase, not the preset's 20 epochs
    peft = get_method(method, **hparams)
    peft.class_names = [f"class {c}" for c in range(10)]  # what build_model sets
    model = peft.build(vitb16_base())
    cfg = TrainConfig(epochs=1, batch_size=3, lr=2e-4, optimizer="adam")
    before = {k: v.clone() for k, v in peft.trainable_state(model).items()}
    metrics = peft.fit(model, images(3), SIGMA, cfg, "cpu")
    after = peft.trainable_state(model)
    # one step of each phase moved the trained weights
    assert any(not torch.equal(before[k], after[k]) for k in after if after[k].is_floating_point())
    if method == "sunet":
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"SUNet (CIFAR-10 preset) trains {trained:,} parameters (paper: 99.7M)")
        assert abs(trained - 99.7e6) < 0.002 * 99.7e6
        assert "stability_loss" in metrics
    if method == "blackbox":
        assert model.coordinator.encoder.out_features == 768  # the MAE ViT-B/16's CLS token
        assert sum(p.numel() for p in model.coordinator.learnable()) == 9_920
        assert model.frame.size == (224, 224)  # CIFAR's 32 x 32 is prompted at 224
        assert metrics["spsa_steps"] == 1 and not model.coordinator.decoder.training
        # the preset queries zero-shot CLIP ViT-B/16 (149.6M), frozen beside the encoder
        assert peft.frozen_parts(model)["coordinator encoder"] > 85e6
        assert 149e6 < peft.frozen_parts(model)["queried CLIP"] < 150e6
        assert metrics["queries"] == 2 * 3
    certify_two(model)


def random_file(net: torch.nn.Module, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("preset_file,side,classes,unet_params", [
    ("cifar10-vitb16.yaml", 32, 10, 52_546_438), ("imagenet-vitb16.yaml", 224, 1000, 552_814_086)])
def test_diffusion_row_at_the_presets_size(preset_file, side, classes, unet_params, tmp_path):
    """The preset's own diffusion hyper-parameters, with random weights of the released
    checkpoint (and classifier) where `pefts fetch-weights` would put the real ones;
    one image, one noisy sample (a UNet pass on a 224 crop takes minutes on a CPU)."""
    import timm

    from pefts.models.diffusion.loading import build_unet

    hparams = dict(yaml.safe_load((ROOT / "configs" / preset_file).read_text())
                   ["method_params"]["diffusion"]["hparams"])
    torch.manual_seed(0)
    hparams["weights"] = random_file(build_unet(hparams["release"]), tmp_path / "unet.safetensors")
    if hparams.get("classifier"):
        hparams["classifier_file"] = random_file(timm.create_model(hparams["classifier"]),
                                                 tmp_path / "classifier.safetensors")
    peft = get_method("diffusion", **hparams)
    torch.manual_seed(0)
    model = peft.build(build_classifier(BaseSpec("vit_base_patch16_224", classes, 224)).eval())
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(4))
    metrics = peft.fit(model, TensorDataset(image, torch.zeros(1, dtype=torch.long)), SIGMA, None, "cpu")
    parts = peft.frozen_parts(model)
    print(f"{preset_file}: t* = {metrics['timestep']}, frozen {parts}")
    assert parts["diffusion UNet"] == unet_params
    assert metrics["unet_size"] == [side, side] and not metrics["resized"]  # 224 runs unresized
    if hparams.get("classifier"):  # BEiT-L/16 at 512, Carlini et al.'s ImageNet classifier
        assert model.classifier.size == 512 and 300e6 < parts["classifier"] < 310e6
    # one noisy sample through the whole row (UNet, then the classifier), as certify runs
    # it: one pass of the 553M UNet on the 224 crop takes a minute and more on one CPU
    # thread, and Smooth's statistics do not depend on the network (tests/test_smoothing.py)
    noisy = image + SIGMA * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.eval()(noisy)
    assert logits.shape == (1, classes) and torch.isfinite(logits).all()
