"""Sound randomized smoothing in floating point (Voracek & Hein, ICLR 2023): the noise is
the Gaussian discretised to the 1/255 grid, drawn exactly; the network sees exact grid
values; the certificate is the sampled distribution's; and a classifier that reads the
rounding of x + noise makes the standard certifier contradict itself, not the sound one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom, norm

from pefts import certify
from pefts.certification.bounds import lower_confidence_bound
from pefts.certification.sound import BITS, LEVELS, MARGIN, DiscreteGaussian
from pefts.errors import PeftsError


class Spy(torch.nn.Module):
    """A fixed linear classifier that keeps every input it sees."""

    def __init__(self, pixels: int, classes: int = 3):
        super().__init__()
        self.linear = torch.nn.Linear(pixels, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return self.linear(z.flatten(1))


def grid_images(count: int, shape=(3, 4, 4), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, LEVELS + 1, (count, *shape), generator=gen) / LEVELS


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_noise_law_is_the_rounded_gaussian_to_a_tiny_total_variation(sigma):
    noise = DiscreteGaussian(sigma)
    thresholds = noise.thresholds(torch.device("cpu")).numpy()
    assert np.all(np.diff(thresholds) >= 0) and 0 <= thresholds[0] and thresholds[-1] <= 2 ** BITS
    mass = np.diff(np.concatenate([[0], thresholds, [2 ** BITS]])) / 2.0 ** BITS
    values = np.arange(-noise.half, noise.half + 1)
    scale = LEVELS * sigma
    rounded = norm.cdf((values + 0.5) / scale) - norm.cdf((values - 0.5) / scale)
    assert np.abs(mass - rounded).max() < 1e-15  # float64 can check no closer
    assert 0 < noise.tv < 1e-14


def test_noise_is_drawn_exactly_from_uniform_integers_against_the_thresholds():
    noise = DiscreteGaussian(0.25)
    cpu = torch.device("cpu")
    drawn = noise.draw(300, (2, 3), torch.Generator().manual_seed(7), cpu)
    uniform = torch.randint(0, 2 ** BITS, (300, 2, 3), generator=torch.Generator().manual_seed(7),
                            dtype=torch.int64)
    counted = (noise.thresholds(cpu) <= uniform.unsqueeze(-1)).sum(-1) - noise.half
    assert drawn.dtype == torch.int32 and torch.equal(drawn.long(), counted)
    many = noise.draw(200_000, (1,), torch.Generator().manual_seed(1), cpu).double()
    # the rounded Gaussian's variance: sigma^2 + 1/12 level^2 (Sheppard)
    assert abs(many.var().item() / ((LEVELS * 0.25) ** 2 + 1 / 12) - 1) < 0.02
    assert abs(many.mean().item()) < 0.5


def test_the_network_sees_exact_grid_values_and_standard_mode_does_not():
    images = grid_images(3)
    for sound in (True, False):
        spy = Spy(48).eval()
        certify(spy, images, [0, 1, 2], sigma=0.25, n=200, n0=20, adaptive=False, batch=100,
                sound=sound, num_classes=3)
        seen = torch.cat(spy.seen)
        levels = (seen.double() * LEVELS).round()
        on_grid = torch.equal(seen, (levels / LEVELS).float())
        assert on_grid == sound
        if sound:  # (k + d) / 255 with integer d: the image's levels plus the noise's
            assert torch.equal(seen[0], (levels[0] / LEVELS).float())


def test_sound_certificate_is_the_sampled_distributions_not_the_continuous_formula():
    images = grid_images(6)
    model = Spy(48).eval()
    sigma, n, alpha = 0.25, 400, 0.001
    gap = DiscreteGaussian(sigma).tv + MARGIN
    rows = certify(model, images, [0] * 6, sigma=sigma, n=n, n0=20, alpha=alpha,
                   adaptive=False, batch=200, sound=True)
    assert (rows["predict"] >= 0).any()
    for row in rows.itertuples():
        raw = lower_confidence_bound(int(row.nA), n, alpha)
        assert row.pA_lower == pytest.approx(max(0.0, raw - gap), abs=0, rel=1e-15)
        if row.predict >= 0:
            continuous = sigma * norm.ppf(raw)
            assert row.radius == np.nextafter(sigma * norm.ppf(row.pA_lower), 0.0)
            assert row.radius < continuous
    standard = certify(model, images, [0] * 6, sigma=sigma, n=n, n0=20, alpha=alpha,
                       adaptive=False, batch=200)
    for row in standard.itertuples():
        assert row.pA_lower == lower_confidence_bound(int(row.nA), n, alpha)


def test_sound_mode_refuses_images_off_the_grid():
    with pytest.raises(PeftsError, match="8-bit grid"):
        certify(Spy(48).eval(), torch.rand(2, 3, 4, 4), [0, 1], sigma=0.25, n=100, sound=True)


def test_sound_rows_do_not_depend_on_pool_or_batch_size():
    images = grid_images(5)
    model = Spy(48).eval()
    runs = [certify(model, images, [0, 1, 2, 0, 1], sigma=0.5, n=1000, n0=32, batch=b, pool=p,
                    sound=True).drop(columns="time") for b, p in ((64, 2), (500, 8))]
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_sound_certificates_hold_against_the_exact_smoothed_threshold_classifier():
    """f(z) = 1[z >= 1/2] on one pixel: rounded-Gaussian smoothing at k / 255 gives
    P[f = 1] = Phi((k - 127.5) / (255 sigma)) exactly, so the true radius is
    |k - 127.5| / 255. Over 400 independent images a sound certifier over-claims it in
    about an alpha fraction at most."""

    class Threshold(torch.nn.Module):
        def forward(self, z):
            above = (z.flatten(1)[:, :1] >= 0.5).float()
            return torch.cat([1 - above, above], 1)

    sigma, alpha, count = 0.25, 0.05, 400
    images = torch.full((count, 1, 1, 1), 150 / LEVELS)
    rows = certify(Threshold(), images, [1] * count, sigma=sigma, n=300, n0=16, alpha=alpha,
                   adaptive=False, batch=1000, num_classes=2, sound=True)
    true_radius = (150 - 127.5) / LEVELS
    over = int(((rows["predict"] == 1) & (rows["radius"] > true_radius)).sum())
    assert (rows["predict"] == 1).mean() > 0.5  # p = Phi(22.5 / 63.75) = 0.64
    assert over <= binom.ppf(0.999, count, alpha), over


class RoundingReader(torch.nn.Module):
    """Reads how x + d was rounded to float32. For |z| in [0.5, 1) the float grid is
    2^-24; at x = 64 / 255 (an odd multiple of 2^-25) the noise's own grid makes the sum
    a tie far more often than one float32 step away, and ties round to even. Class 1
    iff more than half of those pixels are even multiples of 2^-24 (net of odd ones)."""

    def forward(self, z):
        z = z.double().flatten(1)
        band = (z.abs() >= 0.5) & (z.abs() < 1)
        parity = torch.remainder(z * 2.0 ** 24, 2)
        net = ((parity == 0) & band).sum(1) - ((parity == 1) & band).sum(1)
        score = net / band.sum(1).clamp(min=1) - 0.5
        return torch.stack([-score, score], 1).float()


def test_rounding_reader_makes_the_standard_certifier_contradict_itself_not_the_sound_one():
    reader = RoundingReader().eval()
    x0 = torch.full((1, 3, 32, 32), 64 / LEVELS)  # an 8-bit image
    adversarial = torch.nextafter(x0, torch.ones_like(x0))  # one float32 step up, a valid image
    distance = float((adversarial - x0).norm())
    assert 0 < distance < 1e-5
    options = dict(sigma=0.5, n=1000, n0=32, alpha=0.001, adaptive=False, batch=500,
                   num_classes=2)

    standard = certify(reader, torch.cat([x0, adversarial]), [1, 0], **options)
    # x0: class 1 certified far beyond the distance to the adversarial example, where
    # the same certifier certifies class 0: two certificates that cannot both hold
    assert standard.loc[0, "predict"] == 1 and standard.loc[0, "radius"] > 0.5 > 1e5 * distance
    assert standard.loc[1, "predict"] == 0 and standard.loc[1, "radius"] > 0

    # sound: the network sees (k + d) / 255, so its rounding is a function of the
    # integer k + d, part of the base classifier. The adversarial example is the same
    # 8-bit image to it (same row), and every grid image inside the radius certifies
    # the same class
    step = torch.zeros_like(x0)
    step[0, 0, 0, 0] = 1 / LEVELS
    neighbours = torch.cat([x0, x0 + step, x0 - step, x0 + 8 * step])
    sound = certify(reader, neighbours, [1, 1, 1, 1], sound=True, **options)
    again = certify(reader, adversarial, [1], sound=True, **options)
    pd.testing.assert_frame_equal(again.drop(columns="time"), sound[:1].drop(columns="time"))
    distances = (neighbours - x0).flatten(1).norm(dim=1)
    inside = distances < sound.loc[0, "radius"]
    assert inside[1:].any()
    assert (sound.loc[inside.numpy(), "predict"] == sound.loc[0, "predict"]).all()


@pytest.fixture(scope="module")
def both_modes(tmp_path_factory, digits, tiny_base, none_model):
    """`pefts certify` on a default-style model (the tiny digits ViT), standard and sound."""
    from pefts.cli import cli

    out = tmp_path_factory.mktemp("sound")
    common = ["--model", none_model, "--base", tiny_base, "--data", digits, "--sigma", "0.5",
              "--n", "500", "--n0", "32", "--skip", "3", "--max", "40", "--adaptive",
              "--grid", "0,0.25,0.5"]
    runs = {}
    for name, extra in {"standard": [], "sound": ["--sound"],
                        "sound-0": ["--sound", "--shard", "0/2", "--pool", "3"],
                        "sound-1": ["--sound", "--shard", "1/2"]}.items():
        path = out / f"{name}.tsv"
        cli.main([*map(str, ["certify", *common, *extra, "--out", path])], standalone_mode=False)
        runs[name] = path
    return runs


def test_sound_counts_match_the_standard_mode_on_the_default_model(both_modes):
    standard = pd.read_csv(both_modes["standard"], sep="\t")
    sound = pd.read_csv(both_modes["sound"], sep="\t")
    assert list(sound["idx"]) == list(standard["idx"]) and len(sound) == 40
    for radius in (0.0, 0.25, 0.5):
        count = {name: int(((f["correct"] == 1) & (f["radius"] >= radius)).sum())
                 for name, f in (("standard", standard), ("sound", sound))}
        assert abs(count["standard"] - count["sound"]) <= 3, (radius, count)
    # the same decisions image by image, not only the same totals
    assert (standard["predict"] >= 0).sum() > 25
    assert (standard["predict"] == sound["predict"]).sum() >= 36


def test_sound_is_in_the_sidecar_and_shards_merge_to_the_single_run(both_modes, tmp_path,
                                                                    run_cli):
    record = json.loads(both_modes["sound"].with_name("sound.tsv.json").read_text())
    assert record["settings"]["sound"] is True and record["certification"]["sound"] is True
    assert record["settings"]["pixel_levels"] == 16  # digits: quantised to the 8-bit grid
    standard = json.loads(both_modes["standard"].with_name("standard.tsv.json").read_text())
    assert "sound" not in standard["settings"] and standard["certification"]["sound"] is False
    merged = tmp_path / "merged.tsv"
    code, _, err = run_cli("merge", both_modes["sound-0"], both_modes["sound-1"], "--out", merged)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(merged, sep="\t").drop(columns="time"),
                                  pd.read_csv(both_modes["sound"], sep="\t").drop(columns="time"))


def test_tables_refuse_to_mix_sound_and_standard_runs_and_label_them(both_modes, tmp_path,
                                                                     run_cli):
    runs = ["--run", "none", "0.5", both_modes["standard"], "--run", "none", "0.5",
            both_modes["sound"]]
    out = ["--out-tsv", tmp_path / "s.tsv", "--out-md", tmp_path / "s.md"]
    code, _, err = run_cli("summarize", *runs, *out)
    assert code != 0 and "sound" in err and "--mixed" in err
    code, printed, err = run_cli("summarize", *runs, *out, "--mixed")
    assert code == 0, err
    assert printed.count("sound (8-bit images") == 1
    code, printed, err = run_cli("summarize", "--run", "none", "0.5", both_modes["sound"], *out)
    assert code == 0 and "sound (8-bit images" in printed
