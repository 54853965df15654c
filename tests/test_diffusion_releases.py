"""The diffusion checkpoints Carlini et al. certify with, as the authors released them:
our UNet has their keys, shapes and parameter counts (against a list written from the
authors' own unet.py, tests/data/diffusion_keys.py), loads a checkpoint strictly, picks
t* on each checkpoint's own schedule and takes one denoising step with it.

No download: the released files are stood in for by random weights of our own UNet at
the release's settings (full size on the meta device, small sizes for real)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pefts.errors import PeftsError
from pefts.methods import get_method
from pefts.models.classifier import BaseSpec, build_classifier
from pefts.models.diffusion import releases
from pefts.models.diffusion.loading import build_unet, load_release, load_state
from pefts.models.diffusion.unet import UNet, UNetConfig
from tests.test_baselines import one_thread  # noqa: F401  (one intra-op thread: faster here)

KEYS = json.loads((Path(__file__).parent / "data" / "diffusion_keys.json").read_text())
RELEASES = sorted(releases.RELEASES)
CIFAR, IMAGENET = "improved-diffusion-cifar10-uncond", "guided-diffusion-256-uncond"
# small UNets with each release's schedule and structure (scale-shift norm, residual or
# convolutional resampling, head count or head width), for tests that run them
SMALL = {
    CIFAR: dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(16,)),
    # six levels like the real one: downsampling 32, so 224 = 7 x 32 runs unresized
    IMAGENET: dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 1, 1, 1, 1, 1),
                   attention_resolutions=(8,), num_head_channels=16),
}


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """The authors' key list as a state dict of meta tensors (no memory)."""
    return {k: torch.empty(shape, device="meta") for k, shape in KEYS[name]["keys"].items()}


@pytest.mark.parametrize("name", RELEASES)
def test_our_unet_has_the_released_keys_shapes_and_size(name):
    unet = build_unet(name, "meta")
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert list(ours) == list(KEYS[name]["keys"])  # same keys, in the authors' order
    assert ours == KEYS[name]["keys"]
    params = sum(p.numel() for p in unet.parameters())
    assert params == KEYS[name]["parameters"] == {CIFAR: 52_546_438, IMAGENET: 552_814_086}[name]


# the small networks the authors' code ran for tests/data/diffusion_keys.json, as ours
SMALL_AUTHORS = {IMAGENET: dict(model_channels=32, num_head_channels=16, image_size=64),
                 CIFAR: dict(model_channels=32, num_res_blocks=1)}


@pytest.mark.parametrize("name", RELEASES)
def test_our_unet_computes_what_the_authors_unet_computes(name):
    """Same fixed weights and inputs as the authors' unet.py was run on: the same outputs
    (heads, attention order, scale-shift norm, resampling, timestep embedding)."""
    from tests.data.diffusion_keys import PROBES, SMALL_INPUT, TIMESTEPS, fixed_input, fixed_weights

    unet = UNet(UNetConfig(**{**releases.RELEASES[name].unet, **SMALL_AUTHORS[name]})).eval()
    unet.load_state_dict(fixed_weights(unet))
    with torch.no_grad():
        out = unet(fixed_input(SMALL_INPUT[name]), torch.tensor(TIMESTEPS)).flatten()
    probes = out[:: len(out) // PROBES][:PROBES]
    torch.testing.assert_close(probes, torch.tensor(KEYS[name]["small_output"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", RELEASES)
def test_a_full_size_checkpoint_loads_strictly_on_the_meta_device(name):
    unet = build_unet(name, "meta")
    load_state(unet, meta_state(name), "the released file")
    state = meta_state(name)
    key = next(k for k in state if "qkv" in k)
    del state[key]
    with pytest.raises(PeftsError, match=f"1 missing.*{key}"):
        load_state(build_unet(name, "meta"), state, "the released file")
    state = {**meta_state(name), "label_emb.weight": torch.empty(1000, 4, device="meta")}
    with pytest.raises(PeftsError, match="1 unexpected.*label_emb"):
        load_state(build_unet(name, "meta"), state, "the released file")
    state = meta_state(name)
    state["out.2.weight"] = torch.empty(3, *state["out.2.weight"].shape[1:], device="meta")
    with pytest.raises(PeftsError, match=r"another shape.*out\.2\.weight \(3,"):
        load_state(build_unet(name, "meta"), state, "the released file")


@pytest.fixture
def small_releases(monkeypatch):
    """Each release with a small UNet of the same structure and the real schedule."""
    for name, unet in SMALL.items():
        release = releases.RELEASES[name]
        monkeypatch.setitem(releases.RELEASES, name, replace(release, unet={**release.unet, **unet}))
    return releases.RELEASES


def checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """Random weights of ``name``'s (small) UNet saved as the fetched file would be."""
    torch.manual_seed(seed)
    unet = build_unet(name)
    with torch.no_grad():  # the authors zero a few output convs at init: not here
        for p in unet.parameters():
            p.normal_(0, 0.05)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", RELEASES)
def test_the_loader_reads_a_saved_checkpoint_back_exactly(name, small_releases, tmp_path):
    file = checkpoint(name, tmp_path / "w.safetensors")
    unet, abar, scale = load_release(file, name)
    torch.manual_seed(0)
    saved = build_unet(name)  # the same seed: the same random weights before the normal_
    with torch.no_grad():
        for p in saved.parameters():
            p.normal_(0, 0.05)
    for key, value in saved.state_dict().items():
        assert torch.equal(unet.state_dict()[key], value), key
    assert not any(p.is_meta for p in unet.parameters())
    # the authors' .pt (a plain state dict, read with weights_only) loads the same way
    torch.save(saved.state_dict(), tmp_path / "w.pt")
    from_pt = load_release(tmp_path / "w.pt", name)[0]
    assert all(torch.equal(from_pt.state_dict()[k], v) for k, v in saved.state_dict().items())
    with pytest.raises(PeftsError, match="does not exist"):
        load_release(tmp_path / "none.safetensors", name)
    other = next(n for n in RELEASES if n != name)
    with pytest.raises(PeftsError, match="not the checkpoint this UNet expects"):
        load_release(file, other)


def hand_schedule(name: str) -> np.ndarray:
    """alphas_cumprod from the papers' formulas, in float64 with numpy."""
    if name == IMAGENET:  # Ho et al.'s linear betas
        return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    f = [math.cos((t / 4000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(4001)]
    betas = np.minimum(1 - np.array(f[1:]) / np.array(f[:-1]), 0.999)
    return np.cumprod(1 - betas)


def carlini_timestep(abar: np.ndarray, sigma: float) -> int:
    """Their certify.py: t from 1 up until sqrt(1 - abar) / sqrt(abar) reaches 2 sigma."""
    t, level = 0, 0.0
    while level < 2 * sigma:
        t += 1
        level = math.sqrt(1 - abar[t]) / math.sqrt(abar[t])
    return t


def small_base(num_classes: int = 10, side: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(BaseSpec("vit_tiny_patch16_224", num_classes, side, model_kwargs=dict(
        img_size=side, patch_size=8, embed_dim=32, depth=1, num_heads=2))).eval()


@pytest.mark.parametrize("name,side,sigma", [(CIFAR, 32, 0.25), (CIFAR, 32, 1.0),
                                             (IMAGENET, 224, 0.5)])
def test_one_denoising_step_on_each_schedule(name, side, sigma, small_releases, tmp_path):
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) at Carlini et al.'s t*, the UNet fed
    t* on the linear schedule and t* * 1000 / 4000 on the cosine one, eps its first 3
    output channels; clipped to [-1, 1], back to [0, 1]."""
    method = get_method("diffusion", release=name, weights=str(checkpoint(name, tmp_path / "w.safetensors")))
    model = method.build(small_base(side=side))
    gen = torch.Generator().manual_seed(1)
    z = torch.rand(2, 3, side, side, generator=gen) + sigma * torch.randn(2, 3, side, side, generator=gen)
    data = [(z[0], 0)]
    t = method.fit(model, data, sigma, None, "cpu")["timestep"]
    abar = hand_schedule(name)
    assert t == carlini_timestep(abar, sigma)
    a = torch.tensor(abar[t], dtype=torch.float32)
    x_t = a.sqrt() * (2 * z - 1)  # the noisy image at the forward process's law at t*
    fed = torch.full((2,), t * (1000 / 4000 if name == CIFAR else 1.0))
    with torch.no_grad():
        eps = model.denoiser.unet(x_t, fed)[:, :3]
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        out = model.denoiser(z)
    assert out.shape == z.shape  # 224 crops run unresized through the 256 model
    inside = (x0.abs() < 1).float().mean()
    assert inside > 0.25  # the comparison is not all clipping
    torch.testing.assert_close(out, (x0.clamp(-1, 1) + 1) / 2, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_t_star_on_each_released_schedule(sigma, small_releases, tmp_path):
    for name in RELEASES:
        weights = checkpoint(name, tmp_path / f"{name}.safetensors")
        method = get_method("diffusion", release=name, weights=str(weights))
        model = method.build(small_base())
        assert model.denoiser.set_sigma(sigma) == carlini_timestep(hand_schedule(name), sigma), name


def test_a_classifier_of_its_own_sees_the_denoised_image_at_its_size(small_releases, tmp_path):
    """Carlini et al.'s ImageNet row: the denoised image resized bicubic with antialiasing to
    the classifier's own input size, normalised as it was trained."""
    import timm

    from pefts.models.diffusion.classifier import ResizedClassifier

    arch = "test_vit.r160_in1k"  # a small timm model with its own pretrained config (160 px)
    torch.manual_seed(3)
    net = timm.create_model(arch, pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "c.safetensors"))
    hparams = dict(release=CIFAR, weights=str(checkpoint(CIFAR, tmp_path / "w.safetensors")),
                   classifier=arch, classifier_file=str(tmp_path / "c.safetensors"))
    method = get_method("diffusion", **hparams)
    model = method.build(small_base(num_classes=net.num_classes)).eval()
    method.fit(model, None, 0.5, None, "cpu")
    assert isinstance(model.classifier, ResizedClassifier) and model.classifier.size == 160
    assert method.frozen_parts(model)["classifier"] == sum(p.numel() for p in net.parameters())
    z = torch.rand(2, 3, 32, 32)
    cfg = net.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    seen = []
    model.classifier.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        denoised = model.denoiser(z)
        resized = torch.nn.functional.interpolate(denoised, (160, 160), mode="bicubic", antialias=True)
        torch.testing.assert_close(model(z), net.eval()((resized - mean) / std))
    torch.testing.assert_close(seen[0], (resized - mean) / std)
    with pytest.raises(PeftsError, match="1000 classes, the data 10"):
        get_method("diffusion", **hparams).build(small_base(num_classes=10))
    with pytest.raises(PeftsError, match="classifier weights file .* does not exist"):
        get_method("diffusion", **{**hparams, "classifier_file": str(tmp_path / "none")}).build(
            small_base(num_classes=1000))
    with pytest.raises(PeftsError, match="does not fit"):
        get_method("diffusion", **{**hparams, "classifier_file": hparams["weights"]}).build(
            small_base(num_classes=1000))


def test_bad_release_settings_stop_with_the_config_key():
    from pefts.methods.diffusion import RELEASE_NAMES

    assert RELEASE_NAMES == tuple(releases.RELEASES)  # the hyper-parameter's choices
    with pytest.raises(PeftsError, match="release of method 'diffusion' must be one of"):
        get_method("diffusion", release="adm-512", weights="w")
    with pytest.raises(PeftsError, match=r"checkpoint file: set method_params\.diffusion\.hparams\.weights"):
        get_method("diffusion", release=CIFAR)
