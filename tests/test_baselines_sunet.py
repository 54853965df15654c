"""The SUNet denoiser and the black box's timm encoder, on 8x8 digits and small models."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from pefts.errors import PeftsError
from pefts.methods import get_method
from pefts.methods.sunet import PAPER, SUNet
from pefts.models.blackbox import Coordinator
from pefts.training.loop import TrainConfig
from tests.fixtures_baselines import timm_weights_file
from tests.test_baselines import digits, noisy_images, one_thread, small_base  # noqa: F401
from tests.test_experiments import ROOT

# the embedded default's SUNet (config.yaml)
SMALL = yaml.safe_load((ROOT / "config.yaml").read_text())["method_params"]["sunet"]["hparams"]


def test_paper_size_sunet_has_the_published_parameter_count():
    with torch.device("meta"):  # 99.7M parameters: counted, never allocated
        net = SUNet(3, **PAPER)
    count = sum(p.numel() for p in net.parameters())
    print(f"SUNet at its released configuration: {count:,} parameters (paper: 99.7M)")
    assert abs(count - 99.7e6) < 0.001 * 99.7e6
    stages = [m for m in net.modules() if type(m).__name__ == "SwinTransformerStage"]
    assert len(stages) == 7  # four on the way down, three on the way up
    assert sum(type(m).__name__ == "SwinTransformerBlock" for m in net.modules()) == 8 * 7


def test_sunet_starts_as_the_identity_and_denoises_images_independently():
    method = get_method("sunet", **SMALL)
    model = method.build(small_base()).eval()
    z = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.denoiser(z), z)
        nn.init.normal_(model.denoiser.output.weight, std=0.1)
        together = model.denoiser(z)
        alone = torch.cat([model.denoiser(z[i:i + 1]) for i in range(5)])
    assert not torch.equal(together, z)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("denoiser.") for n in trainable)


def test_sunet_mse_training_denoises_held_out_images(digits):  # noqa: F811
    train, test = digits
    sigma = 0.5
    # MSE alone: the stability phase would pull towards this random base's labels
    method = get_method("sunet", **{**SMALL, "objective": "mse", "stability_epochs": 0})
    model = method.build(small_base())
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam")
    metrics = method.fit(model, train, sigma, cfg, "cpu")
    assert metrics["mse_denoised"] < metrics["mse_noisy"]
    clean, noisy = noisy_images(test, sigma)
    with torch.no_grad():
        denoised = model.eval().denoiser(noisy)
    mse_noisy = float(((noisy - clean) ** 2).mean())
    mse_denoised = float(((denoised - clean) ** 2).mean())
    print(f"SUNet held-out MSE: noisy {mse_noisy:.4f}, denoised {mse_denoised:.4f}")
    assert mse_denoised < 0.8 * mse_noisy


def test_sunet_stability_phase_and_state_round_trip(digits):  # noqa: F811
    train, test = digits
    hparams = {**SMALL, "objective": "mse+stability", "stability_epochs": 0.02}
    method = get_method("sunet", **hparams)
    base = small_base()
    model = method.build(copy.deepcopy(base))
    metrics = method.fit(model, train, 0.25, TrainConfig(epochs=0.02, batch_size=32), "cpu")
    assert {"mse_denoised", "stability_loss"} <= set(metrics)
    fresh = get_method("sunet", **hparams).build(copy.deepcopy(base))
    x = test.tensors[0][:8]
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(x), model.eval()(x))
        method.load_trainable(fresh, method.trainable_state(model))
        assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_sunet_refuses_shapes_it_cannot_build_or_denoise():
    with pytest.raises(PeftsError, match="multiple"):
        SUNet(3, img_size=10, patch_size=4, depths=[2, 2], heads=[2, 2])
    with pytest.raises(PeftsError, match="heads"):
        SUNet(3, img_size=8, patch_size=1, embed_dim=16, depths=[2, 2], heads=[2])
    net = get_method("sunet", **SMALL).make_denoiser(3)
    with pytest.raises(PeftsError, match="img_size"):
        net(torch.rand(1, 3, 16, 16))


# --- the black box's coordinator encoder -------------------------------------------------

@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return str(timm_weights_file(tmp_path_factory.mktemp("enc") / "vit.safetensors", "test_vit"))


def test_timm_encoder_reads_its_local_file_and_stays_frozen(encoder_file):
    import timm
    from safetensors.torch import load_file

    method = get_method("blackbox", encoder="test_vit", encoder_file=encoder_file)
    model = method.build(small_base())
    encoder = model.coordinator.encoder
    saved = load_file(encoder_file)
    assert all(torch.equal(v, saved[k]) for k, v in encoder.net.state_dict().items())
    assert not any(p.requires_grad for p in encoder.parameters())
    state = method.trainable_state(model)
    assert not any("encoder" in k for k in state)
    # every saved tensor but the final norm, which the CLS of the last hidden state skips
    used = {k: v for k, v in saved.items() if not k.startswith("norm.")}
    assert len(used) < len(saved)
    assert method.frozen_parameters(model) == sum(v.numel() for v in used.values())
    # BlackVIP's feature: the CLS token of the last block's output (before the final
    # norm), of the input as the coordinator is given it, resized to the net's size only
    x = torch.rand(2, 3, 8, 8)
    net = timm.create_model("test_vit", num_classes=0)
    net.load_state_dict(saved)
    size = net.pretrained_cfg["input_size"][-2:]
    resized = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        net.eval()
        tokens = net.blocks(net.norm_pre(net._pos_embed(net.patch_embed(resized))))
        torch.testing.assert_close(encoder(x), tokens[:, 0])
    # the decoder reads the features and the trigger, reshaped into its grid (BlackVIP)
    coordinator = model.coordinator
    cells = coordinator.decoder[0].in_channels * coordinator.grid ** 2
    assert net.num_features + coordinator.trigger.numel() <= cells
    with torch.no_grad():
        for p in method.trainable_state(model).values():
            if p.is_floating_point():  # not BatchNorm's batch count
                p.add_(0.1)
        assert model.coordinator(x).abs().sum() > 0


def test_rebuilding_from_the_file_gives_the_same_prompts(encoder_file):
    hparams = dict(encoder="test_vit", encoder_file=encoder_file)
    first, second = (get_method("blackbox", **hparams) for _ in range(2))
    a, b = first.build(small_base()), second.build(small_base())
    with torch.no_grad():
        for p in first.trainable_state(a).values():
            if p.is_floating_point():  # not BatchNorm's batch count
                p.normal_(generator=torch.Generator().manual_seed(3))
    second.load_trainable(b, first.trainable_state(a))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.coordinator(x), b.coordinator(x))


def test_encoder_errors_name_the_problem(tmp_path):
    with pytest.raises(PeftsError, match="encoder_file"):
        Coordinator(encoder="test_vit", encoder_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(PeftsError, match="no_such_model"):
        Coordinator(encoder="no_such_model", encoder_pretrained=False)
