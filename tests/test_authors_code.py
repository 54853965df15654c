"""Ours against numbers the authors' own code produced (tests/data/authors_fixtures.json,
written by tests/data/authors_fixtures.py from Carlini et al.'s DRM.py and certify.py and
BlackVIP's Coordinator through Hugging Face transformers, on small networks with fixed
weights that these tests rebuild in our modules)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pefts.methods import get_method
from pefts.methods.diffusion import timestep_for_sigma
from pefts.models.classifier import BaseSpec, PixelClassifier
from pefts.models.diffusion import releases
from pefts.models.diffusion.loading import build_unet
from pefts.models.diffusion.schedules import alphas_cumprod
from tests.data.authors_fixtures import drm_image, drm_noise, mae_input, mae_weights, timm_mae
from tests.data.diffusion_keys import fixed_weights
from tests.test_baselines import one_thread  # noqa: F401  (one intra-op thread: faster here)

ROOT = Path(__file__).parent
FIXTURE = json.loads((ROOT / "data" / "authors_fixtures.json").read_text())
CIFAR, IMAGENET = "improved-diffusion-cifar10-uncond", "guided-diffusion-256-uncond"


@pytest.mark.parametrize("data,release", [("cifar10", CIFAR), ("imagenet", IMAGENET)])
def test_t_star_and_the_noise_carlini_et_al_certify(data, release):
    """Their certify.py's t* on each released schedule, t = 1 at the smallest sigma (their
    loop never tests t = 0), and the noise their q_sample adds at t*, which the docs quote."""
    spec = releases.RELEASES[release]
    abar = alphas_cumprod(spec.schedule, spec.steps)
    doc = (ROOT.parent / "docs" / "baselines.md").read_text()
    for row in FIXTURE["carlini"][data]:
        t = timestep_for_sigma(abar, row["sigma"])
        assert t == row["t"], row
        a = float(abar[t])
        assert math.sqrt(1 - a) / (2 * math.sqrt(a)) == pytest.approx(row["noise"], rel=1e-9)
        if row["sigma"] >= 0.25:
            assert f"{row['noise']:.6f}" in doc, f"docs/baselines.md lacks their noise {row['noise']:.6f}"


class Recorder(nn.Module):
    """A classifier that keeps what it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean((2, 3)).repeat(1, 4)[:, :10]


def test_the_cifar10_classifier_sees_the_denoised_image_as_carlini_et_al_resize_it(monkeypatch, tmp_path):
    """Their DiffusionRobustModel.forward on a small UNet of the released one's code path:
    the 32 x 32 estimate reaches the classifier at 224 through a bicubic, antialiased
    resize (PIL's kernel), not the base's bilinear input layer. Their denoise re-noises
    the clean image with q_sample; ours denoises the noisy image it is given, so the same
    x_t is ours at z = x + noise sqrt(1 - abar) / (2 sqrt(abar))."""
    drm = FIXTURE["carlini"]["drm_cifar10"]
    settings = FIXTURE["settings"]["drm_unet"]
    small = dict(model_channels=settings["num_channels"], num_res_blocks=settings["num_res_blocks"])
    release = releases.RELEASES[CIFAR]
    monkeypatch.setitem(releases.RELEASES, CIFAR, replace(release, unet={**release.unet, **small}))
    unet = build_unet(CIFAR)
    save_file({k: v.contiguous() for k, v in fixed_weights(unet).items()}, str(tmp_path / "w.safetensors"))
    method = get_method("diffusion", release=CIFAR, weights=str(tmp_path / "w.safetensors"))
    # mean = std = 0.5: the classifier's input is in their [-1, 1] frame
    classifier = Recorder()
    model = method.build(PixelClassifier(classifier, BaseSpec("recorder", 10, 224))).eval()
    x = drm_image()
    assert method.fit(model, [(x[0], 0)], drm["sigma"], None, "cpu")["timestep"] == drm["t"]
    a = float(model.denoiser.schedule[drm["t"]])
    z = x + drm_noise() * math.sqrt(1 - a) / (2 * math.sqrt(a))
    with torch.no_grad():
        denoised = model.denoiser(z)
        model(z)
    theirs = torch.tensor(drm["denoised"]).reshape(denoised.shape)
    torch.testing.assert_close(denoised * 2 - 1, theirs, atol=2e-5, rtol=0)
    fed = classifier.seen[0]
    assert list(fed.shape) == drm["classifier_input_shape"]
    probes = fed.flatten()[:: drm["probe_step"]][: len(drm["classifier_input_probes"])]
    torch.testing.assert_close(probes, torch.tensor(drm["classifier_input_probes"]), atol=2e-5, rtol=0)


def test_the_mae_feature_is_blackvips_hugging_face_one():
    """BlackVIP's Coordinator reads facebook/vit-mae-base through HF's ViT, whose
    LayerNorms use eps 1e-12 (timm's MAE: 1e-6). The fixture's weights put the first
    LayerNorm's token variance near 1e-6, where the two eps differ visibly."""
    from pefts.models.blackbox.encoder import TimmEncoder

    blackvip = FIXTURE["blackvip"]
    assert blackvip["hf"]["layer_norm_eps"] == 1e-12
    assert blackvip["max_diff_between_eps"] > 0.1  # the fixture can tell the two apart
    net = timm_mae()
    net.load_state_dict(mae_weights(net.state_dict()))
    encoder = TimmEncoder(net).eval()
    with torch.no_grad():
        feature = encoder(mae_input()).flatten()
    torch.testing.assert_close(feature, torch.tensor(blackvip["hf"]["feature"]), atol=1e-4, rtol=1e-4)
