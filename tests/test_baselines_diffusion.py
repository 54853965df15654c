"""Diffusion denoised smoothing with a tiny random UNet in a local diffusers folder."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import norm
from torch import nn

from pefts.errors import PeftsError
from pefts.finetuning.runs import finetune
from pefts.methods import get_method, load_model
from pefts.methods.diffusion import DiffusionDenoiser, timestep_for_sigma
from pefts.models.classifier import BaseSpec, build_classifier, count_parameters
from pefts.reporting.parameters import parameter_markdown, parameter_table
from pefts.runtime.artifacts import load_meta
from pefts.smoothing import Smooth
from pefts.study.config import check_config
from tests.fixtures_baselines import unet_folder

SPEC = BaseSpec("vit_tiny_patch16_224", 10, 8,
                model_kwargs=dict(img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(unet_folder(tmp_path_factory.mktemp("ddpm")))


def small_base() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier(SPEC).eval()


def hand_alphas_cumprod() -> torch.Tensor:
    """DDPM's linear schedule (Ho et al.): beta from 1e-4 to 0.02 over 1000 steps."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class Recorder(nn.Module):
    """A stand-in UNet that records its inputs and predicts the noise it is told;
    ``levels`` gives it a config that says how much it downsamples."""

    def __init__(self, sample_size: int, eps=None, levels: int | None = None):
        super().__init__()
        self.config = SimpleNamespace(sample_size=sample_size, in_channels=3)
        if levels:
            self.config.block_out_channels = (8,) * levels
        self.eps = eps
        self.calls = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        self.calls.append((x_t.clone(), t.clone()))
        eps = self.eps(x_t, t) if self.eps else torch.zeros_like(x_t)
        return SimpleNamespace(sample=eps)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_timestep_matches_the_hand_computed_noise_level(weights, sigma):
    abar = hand_alphas_cumprod()
    ratio = ((1 - abar) / abar).sqrt()
    expected = next(t for t in range(1000) if ratio[t] >= 2 * sigma)
    assert ratio[expected - 1] < 2 * sigma <= ratio[expected]
    method = get_method("diffusion", weights=weights)
    model = method.build(small_base())
    assert method.fit(model, None, sigma, None, "cpu")["timestep"] == expected
    assert model.denoiser.timestep((8, 8)) == expected
    torch.testing.assert_close(model.denoiser.alphas_cumprod, abar.float())


def test_known_timesteps_of_the_linear_schedule():
    # the first t with sqrt((1 - abar) / abar) >= 2 sigma, from the formula by hand
    abar = hand_alphas_cumprod()
    assert [timestep_for_sigma(abar, s) for s in (0.25, 0.5, 1.0)] == [145, 259, 396]
    with pytest.raises(PeftsError, match="beyond"):
        timestep_for_sigma(abar, 200.0)


def test_scaling_into_the_unet_space_and_back():
    abar = hand_alphas_cumprod().float()
    unet = Recorder(8)
    denoiser = DiffusionDenoiser(unet, abar)
    t = denoiser.set_sigma(0.5)
    z = torch.rand(3, 3, 8, 8) * 1.4 - 0.2  # noisy images leave [0, 1]
    out = denoiser(z)
    x_t, steps = unet.calls[0]
    # x_t = sqrt(abar_t*) (2z - 1): the forward process's law at t*
    torch.testing.assert_close(x_t, abar[t].sqrt() * (2 * z - 1))
    assert steps.tolist() == [t] * 3
    # with a zero noise estimate the estimate is 2z - 1 itself, clipped to [-1, 1]
    torch.testing.assert_close(out, z.clamp(0, 1))


def test_a_perfect_noise_estimate_recovers_the_clean_image():
    abar = hand_alphas_cumprod().float()
    clean = torch.rand(2, 3, 8, 8)
    sigma = 0.25
    z = clean + sigma * torch.randn(2, 3, 8, 8)

    def true_noise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[int(t[0])]
        return (x_t - a.sqrt() * (2 * clean - 1)) / (1 - a).sqrt()

    denoiser = DiffusionDenoiser(Recorder(8, true_noise), abar)
    denoiser.set_sigma(sigma)
    torch.testing.assert_close(denoiser(z), clean)


def test_other_sizes_are_resized_to_the_unet_and_back():
    unet = Recorder(8)
    denoiser = DiffusionDenoiser(unet, hand_alphas_cumprod().float())
    denoiser.set_sigma(0.25)
    out = denoiser(torch.rand(2, 3, 6, 6))
    assert unet.calls[0][0].shape == (2, 3, 8, 8) and out.shape == (2, 3, 6, 6)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize("side,resized", [(224, False), (200, True), (336, True)])
def test_the_unet_sees_the_noise_level_of_t_star(side, resized):
    """A 256x256 UNet with guided-diffusion's six levels (downsampling 32): a 224 image
    runs unresized (224 = 7 x 32), 200 and 336 need a resize (up and down). Fed a constant image plus
    noise of std sigma, the UNet's input must carry the noise of the forward process at
    t* (std sqrt(1 - abar_t*)), within 2%."""
    abar = hand_alphas_cumprod().float()
    unet = Recorder(256, levels=6)
    denoiser = DiffusionDenoiser(unet, abar)
    sigma = 0.5
    denoiser.set_sigma(sigma)
    gen = torch.Generator().manual_seed(3)
    constant = torch.full((2, 3, side, side), 0.4)
    denoiser(constant + sigma * torch.randn(constant.shape, generator=gen))
    x_t, steps = unet.calls[0]
    t = int(steps[0])
    assert t == denoiser.timestep((side, side))
    assert tuple(x_t.shape[-2:]) == ((256, 256) if resized else (side, side))
    # away from the border, where the resize sees no padding
    seen = (x_t - abar[t].sqrt() * (2 * 0.4 - 1))[..., 16:-16, 16:-16]
    level = float(seen.std())
    assert abs(level / float((1 - abar[t]).sqrt()) - 1) < 0.02, (level, t)


def test_denoiser_is_a_deterministic_function_of_the_noisy_input(weights):
    method = get_method("diffusion", weights=weights)
    model = method.build(small_base())
    method.fit(model, None, 0.25, None, "cpu")
    z = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model.denoiser(z)
        torch.manual_seed(2)
        model.train()  # a frozen pretrained UNet never switches dropout on
        second = model.denoiser(z)
    assert torch.equal(first, second)
    assert not torch.equal(first, z)  # the random UNet does change the image
    assert not any(p.requires_grad for p in model.parameters())


def test_batch_independence_in_eval_mode(weights):
    method = get_method("diffusion", weights=weights)
    model = method.build(small_base()).eval()
    method.fit(model, None, 0.5, None, "cpu")
    z = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        together = model(z)
        alone = torch.cat([model(z[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_a_bare_model_folder_loads_too(tmp_path):
    folder = unet_folder(tmp_path / "flat", pipeline_layout=False)
    model = get_method("diffusion", weights=str(folder)).build(small_base())
    assert model.denoiser.unet.config.sample_size == 8


def test_missing_weights_stop_with_the_config_key(tmp_path):
    with pytest.raises(PeftsError, match=r"method_params\.diffusion\.hparams\.weights"):
        get_method("diffusion")
    with pytest.raises(PeftsError, match="does not exist"):
        get_method("diffusion", weights=str(tmp_path / "none")).build(small_base())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftsError, match="no diffusers UNet"):
        get_method("diffusion", weights=str(tmp_path / "empty")).build(small_base())


def test_config_with_diffusion_needs_its_weights(tmp_path):
    import yaml
    from snakemake.utils import validate

    from tests.test_experiments import ROOT

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["methods"] = [*config["methods"], "diffusion"]
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    with pytest.raises(PeftsError, match=r"method_params\.diffusion\.hparams\.weights"):
        check_config(config)
    config["method_params"]["diffusion"] = {"hparams": {"weights": str(tmp_path)}}
    check_config(config)


def test_finetune_certify_and_parameter_table(weights, digits, tiny_base, tmp_path, run_cli):
    """The production path: finetune picks t*, the artifact keeps it, certify reloads it,
    and the table counts the UNet beside the 0 trainable parameters."""
    out = tmp_path / "diffusion.safetensors"
    meta = finetune(digits, tiny_base, out, "diffusion", 0.5, {"weights": weights}, {},
                    device="cpu", eval_max=20)
    assert meta["trainable_params"] == 0
    unet_params = count_parameters(get_method("diffusion", weights=weights)
                                   .build(small_base()).denoiser.unet)
    assert meta["frozen_added_params"] == unet_params > 0
    assert meta["metrics"]["timestep"] == 259

    model, _ = load_model(out, tiny_base)
    assert model.denoiser.timestep((8, 8)) == 259

    table = parameter_table([("diffusion", 0.5, out)])
    row = table.iloc[0]
    assert row["trainable"] == 0 and row["frozen added"] == unet_params
    assert f"{unet_params:,}" in parameter_markdown(table)

    tsv = tmp_path / "cert.tsv"
    code, _, err = run_cli("certify", "--model", out, "--base", tiny_base, "--data", digits,
                           "--sigma", "0.5", "--n0", "8", "--n", "32", "--batch", "32",
                           "--max", "2", "--out", tsv)
    assert code == 0, err
    rows = tsv.read_text().splitlines()
    assert rows[0].startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime") and len(rows) == 3
    cap = 0.5 * norm.ppf(0.001 ** (1 / 32))  # the largest radius n = 32 can certify
    for line in rows[1:]:
        radius = float(line.split("\t")[3])
        assert 0 <= radius <= cap + 1e-9 and math.isfinite(radius)
    assert load_meta(out)["hparams"]["weights"] == weights


def test_smooth_certifies_through_the_denoiser(weights):
    method = get_method("diffusion", weights=weights)
    model = method.build(small_base()).eval()
    method.fit(model, None, 0.25, None, "cpu")
    smooth = Smooth(model, 10, 0.25)
    gen = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    label, radius = smooth.certify(torch.rand(3, 8, 8), 8, 32, 0.001, 16, *gen)
    assert label == Smooth.ABSTAIN or (label in range(10) and radius > 0)


def test_benchmark_reports_the_diffusion_denoiser_beside_the_plain_model(weights, run_cli, tmp_path):
    out = tmp_path / "bench.tsv"
    code, stdout, err = run_cli("benchmark", "--diffusion", weights, "--n", "40", "--batch", "20",
                                "--n0", "4", "--repeats", "1", "--threads", "1", "--out", out)
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(out, sep="\t").set_index("measure")
    row = next(m for m in table.index if m.startswith("raw forward, diffusion denoiser"))
    assert "-parameter UNet" in row and row in stdout
    assert table.loc[row, "samples"] == 40 and table.loc[row, "samples_per_s"] > 0
    # a UNet pass per sample costs more than the tiny classifier alone
    assert table.loc[row, "vs_raw_forward"] < 1
    code, _, err = run_cli("benchmark", "--diffusion", str(tmp_path / "none"))
    assert code != 0 and "does not exist" in err


def test_benchmark_times_a_released_unet_without_its_weights(run_cli, tmp_path):
    """The authors' architecture with random weights: a UNet pass costs the same whatever
    its weights, so the timing needs no download; a file that is not there is refused."""
    out = tmp_path / "bench.tsv"
    code, stdout, err = run_cli("benchmark", "--diffusion-release", "improved-diffusion-cifar10-uncond",
                                "--n", "8", "--batch", "8", "--n0", "2", "--repeats", "1",
                                "--threads", "1", "--out", out)
    assert code == 0, err
    assert "(52,546,438-parameter UNet)" in stdout  # improved-diffusion's CIFAR-10 model
    code, _, err = run_cli("benchmark", "--diffusion", str(tmp_path / "none.pt"),
                           "--diffusion-release", "improved-diffusion-cifar10-uncond")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "none.pt" in err, err


def test_a_saved_ddpm_pipeline_is_a_weights_folder(tmp_path):
    """The README's recipe: DDPMPipeline.from_pretrained(name).save_pretrained(folder),
    here with a local random pipeline in place of the hub's."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from tests.fixtures_baselines import TINY_UNET

    DDPMPipeline(unet=UNet2DModel(**TINY_UNET), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "p")
    method = get_method("diffusion", weights=str(tmp_path / "p"))
    model = method.build(small_base())
    assert method.fit(model, None, 0.25, None, "cpu")["timestep"] == 145
