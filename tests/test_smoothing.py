"""The certifier against classifiers whose smoothed radius is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from pefts.errors import PeftsError
from pefts.smoothing import Smooth, lower_confidence_bound, radius_cap

SIGMA = 0.5


class Linear2(nn.Module):
    """f(x) = 1[w.x + b > 0] as two logits; P[f(x+d) = 1] = Phi((w.x + b) / (sigma ||w||))."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w, b
        self.eval()  # the certifier refuses a module in training mode

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.w.flatten()).sum(1) + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.margin(x)
        return torch.stack([-m, m], dim=1)


class Constant(nn.Module):
    def __init__(self, cls: int, num_classes: int = 3):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.cls] = 1.0
        return logits


def linear_case(true_radius: float) -> tuple[Linear2, torch.Tensor]:
    """A linear classifier and a point at exactly ``true_radius`` from its boundary."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 4, generator=gen)
    x = torch.rand(3, 4, 4, generator=gen)
    model = Linear2(w, 0.0)
    b = true_radius * float(w.norm()) - float(model.margin(x[None]))
    return Linear2(w, b), x


def test_clopper_pearson_known_values():
    assert lower_confidence_bound(99_000, 100_000, 0.001) == pytest.approx(0.98898934, abs=1e-8)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))


def test_radius_cap_known_values():
    assert radius_cap(1.0, 100_000, 0.001) == pytest.approx(3.81, abs=0.005)
    assert radius_cap(1.0, 10_000, 0.001) == pytest.approx(3.20, abs=0.005)
    assert radius_cap(1.0, 1_000, 0.001) == pytest.approx(2.46, abs=0.005)


def test_constant_classifier_gets_exactly_the_cap():
    smooth = Smooth(Constant(2), 3, SIGMA)
    cls, radius = smooth.certify(torch.rand(3, 4, 4), n0=10, n=2000, alpha=0.001, batch_size=300)
    assert cls == 2
    assert radius == SIGMA * norm.ppf(0.001 ** (1 / 2000))
    assert radius == radius_cap(SIGMA, 2000, 0.001)


ALPHA, REPS = 0.1, 300
# the tests must be able to fail: a sound certifier exceeds this with probability 1e-4
TOLERANCE = binom.ppf(1 - 1e-4, REPS, ALPHA)


def overshoots(radius_of, true_radius: float) -> int:
    """In how many of REPS runs ``radius_of(smooth, x)`` claims more than the truth."""
    model, x = linear_case(true_radius)
    smooth = Smooth(model, 2, SIGMA)
    torch.manual_seed(0)
    return sum(radius_of(smooth, x) > true_radius for _ in range(REPS))


@pytest.mark.parametrize("true_radius", [0.1 * SIGMA, SIGMA, 2 * SIGMA])
def test_linear_classifier_radius_is_sound_over_repetitions(true_radius):
    """Over many runs the certificate exceeds the true radius in at most an alpha
    fraction, with a binomial tolerance."""
    def certified(smooth: Smooth, x: torch.Tensor) -> float:
        cls, radius = smooth.certify(x, n0=20, n=500, alpha=ALPHA, batch_size=500)
        assert cls in (1, Smooth.ABSTAIN)
        return radius

    over = overshoots(certified, true_radius)
    assert over <= TOLERANCE, f"{over} of {REPS} runs over the true radius"


def test_the_soundness_check_catches_an_unsound_certifier():
    """The point estimate nA/n in place of the lower bound overshoots about half the time."""
    def point_estimate(smooth: Smooth, x: torch.Tensor) -> float:
        return SIGMA * norm.ppf(int(smooth.sample_counts(x, 500, 500)[1]) / 500)

    assert overshoots(point_estimate, SIGMA) > TOLERANCE


# On the boundary (p = 1/2 exactly, true radius 0) every certificate over-claims. An honest
# certifier picks the class on independent samples, so it over-claims with probability
# <= alpha; one that picks the class from the very samples it counts gets two chances, about
# 2 * alpha. 2000 runs separate 0.1 from 0.2 by more than 8 standard deviations.
BOUNDARY_REPS = 2000
BOUNDARY_TOLERANCE = binom.ppf(1 - 1e-4, BOUNDARY_REPS, ALPHA)


def boundary_overclaims(certify) -> int:
    model, x = linear_case(0.0)
    smooth = Smooth(model, 2, SIGMA)
    torch.manual_seed(0)
    return sum(certify(smooth, x) > 0.0 for _ in range(BOUNDARY_REPS))


def cohen(smooth: Smooth, x: torch.Tensor) -> float:
    return smooth.certify(x, n0=10, n=100, alpha=ALPHA, batch_size=200)[1]


def reuses_selection(smooth: Smooth, x: torch.Tensor) -> float:
    """The classic mistake: the class and its count come from the same samples."""
    counts = smooth.sample_counts(x, 100, 200)
    n_a = int(counts.max())
    p_a_lower = lower_confidence_bound(n_a, 100, ALPHA)
    return SIGMA * norm.ppf(p_a_lower) if p_a_lower >= 0.5 else 0.0


def test_sound_on_the_decision_boundary():
    over = boundary_overclaims(cohen)
    assert over <= BOUNDARY_TOLERANCE, f"{over} of {BOUNDARY_REPS} runs certified a radius > 0"


def test_the_boundary_check_catches_selection_reuse():
    over = boundary_overclaims(reuses_selection)
    assert over > BOUNDARY_TOLERANCE, f"only {over} of {BOUNDARY_REPS}: the check is too weak"


class BatchCentred(nn.Module):
    """In eval mode, yet each logit is centred on the batch mean (like BatchNorm's batch
    statistics): one sample's class depends on the others."""

    def __init__(self):
        super().__init__()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).sum(1)
        m = m - m.mean()
        return torch.stack([-m, m], dim=1)


def test_a_batch_dependent_model_is_refused():
    smooth = Smooth(BatchCentred(), 2, SIGMA)
    with pytest.raises(PeftsError, match="depends on the rest of its batch"):
        smooth.certify(torch.rand(3, 4, 4), 10, 100, 0.001, 50)
    with pytest.raises(PeftsError, match="depends on the rest of its batch"):
        smooth.predict(torch.rand(3, 4, 4), 100, 0.001, 50)


def test_a_model_in_training_mode_is_refused():
    model, x = linear_case(1.0)
    model.train()
    with pytest.raises(PeftsError, match="training mode"):
        Smooth(model, 2, SIGMA).certify(x, 10, 100, 0.001, 50)
    with pytest.raises(PeftsError, match="training mode"):
        Smooth(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 2)).eval().train(),
               2, SIGMA).predict(x, 100, 0.001, 50)


def test_the_batch_probe_leaves_the_noise_streams_alone():
    """The once-per-Smooth batch probe draws its own noise: a certificate is the same
    whether or not the probe ran first."""
    from pefts.certification.noise import ESTIMATION, SELECTION, generator

    model, x = linear_case(0.1)
    probed, unprobed = Smooth(model, 2, SIGMA), Smooth(model, 2, SIGMA)
    unprobed._batch_checked = True
    certs = [s.certify_detailed(x, 50, 500, 0.001, 128, generator(0, 7, SELECTION, "cpu"),
                                generator(0, 7, ESTIMATION, "cpu")) for s in (probed, unprobed)]
    assert certs[0] == certs[1]


def test_linear_classifier_radius_converges_to_the_truth():
    true_radius = SIGMA * 1.0
    model, x = linear_case(true_radius)
    smooth = Smooth(model, 2, SIGMA)
    gaps = []
    for n in (1_000, 10_000, 100_000):
        torch.manual_seed(0)
        # averaged over a few runs so one lucky draw cannot reorder the gaps
        radii = [smooth.certify(x, n0=100, n=n, alpha=0.001, batch_size=20_000) for _ in range(5)]
        assert all(cls == 1 for cls, _ in radii)
        gaps.append(true_radius - sum(r for _, r in radii) / len(radii))
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 0.03 * SIGMA


def test_abstains_on_the_decision_boundary():
    model, x = linear_case(0.0)
    smooth = Smooth(model, 2, SIGMA)
    torch.manual_seed(0)
    assert smooth.certify(x, 100, 2000, 0.001, 1000) == (Smooth.ABSTAIN, 0.0)
    assert smooth.predict(x, 2000, 0.001, 1000) == Smooth.ABSTAIN


def test_predict_confident_class():
    assert Smooth(Constant(1), 3, SIGMA).predict(torch.rand(3, 4, 4), 100, 0.001, 64) == 1


def test_selection_and_estimation_use_independent_noise():
    """Seeded generators make certify reproducible; the two streams differ."""
    from pefts.certification.noise import ESTIMATION, SELECTION, generator

    model, x = linear_case(0.1)
    smooth = Smooth(model, 2, SIGMA)
    runs = [smooth.certify_detailed(x, 50, 500, 0.001, 128, generator(0, 7, SELECTION, "cpu"),
                                    generator(0, 7, ESTIMATION, "cpu")) for _ in range(2)]
    assert runs[0] == runs[1]
    a = torch.randn(5, generator=generator(0, 7, SELECTION, "cpu"))
    b = torch.randn(5, generator=generator(0, 7, ESTIMATION, "cpu"))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"n0": 0}, "n0"), ({"n": 0}, "n must"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
])
def test_rejects_bad_sampling_arguments(kwargs, message):
    args = {"n0": 10, "n": 100, "alpha": 0.001, "batch_size": 10, **kwargs}
    with pytest.raises(PeftsError, match=message):
        Smooth(Constant(0), 3, SIGMA).certify(torch.rand(3, 4, 4), **args)


def test_rejects_nonpositive_sigma():
    with pytest.raises(PeftsError, match="sigma"):
        Smooth(Constant(0), 3, 0.0)


def test_no_radius_above_the_cap_on_random_inputs():
    model, x = linear_case(10.0)  # far from the boundary: pA ~ 1
    cls, radius = Smooth(model, 2, SIGMA).certify(x, 10, 1000, 0.001, 1000)
    assert cls == 1 and radius <= radius_cap(SIGMA, 1000, 0.001) and math.isfinite(radius)


def test_the_adaptive_pool_refuses_the_same_models():
    """The pooled certifier runs the model without Smooth: the same guards hold there."""
    from pefts.certification.adaptive import AdaptivePlan
    from pefts.certification.pool import Pool

    plan = AdaptivePlan(SIGMA, 0.001, 1000, (0.0, 0.25))
    images = [(0, torch.rand(3, 4, 4), 1)]
    with pytest.raises(PeftsError, match="depends on the rest of its batch"):
        list(Pool(BatchCentred(), 2, plan, 10, 0, "cpu").run(images))
    model, _ = linear_case(1.0)
    with pytest.raises(PeftsError, match="training mode"):
        list(Pool(model.train(), 2, plan, 10, 0, "cpu").run(images))
