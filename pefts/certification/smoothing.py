"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019): CERTIFY and PREDICT.

``Smooth`` keeps Cohen's API. The base classifier maps a batch of [0,1] images to
logits (or probabilities). Noise is drawn on the model's device and class counts stay
there until the end, so a batch costs one forward pass and no host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm

from pefts.certification.arguments import check_argument
from pefts.certification.bounds import lower_confidence_bound, radius_cap
from pefts.certification.guards import (
    nonfinite,
    refuse_batch_dependence,
    refuse_nonfinite,
    refuse_training_mode,
)
from pefts.certification.noise import NoiseStream
from pefts.errors import PeftsError

__all__ = ["Certificate", "Smooth", "lower_confidence_bound", "radius_cap"]


@dataclass(frozen=True)
class Certificate:
    prediction: int
    radius: float
    n_a: int
    p_a_lower: float


def check_sampling_args(n0: int | None, n: int, alpha: float, batch_size: int) -> None:
    """By the rules of ``pefts.certify``'s arguments (and so of the CLI's options)."""
    if n0 is not None:
        check_argument("n0", n0)
    check_argument("n", n)
    check_argument("alpha", alpha)
    check_argument("batch", batch_size)


def batch_sizes(num: int, batch_size: int) -> list[int]:
    """Cohen's batch schedule: full batches, then the rest."""
    return [batch_size] * (num // batch_size) + ([num % batch_size] if num % batch_size else [])


class Smooth:
    """A smoothed classifier g(x) = argmax_c P[f(x + d) = c], d ~ N(0, sigma^2 I)."""

    ABSTAIN = -1

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
        check_argument("sigma", sigma)
        if num_classes < 1:
            raise PeftsError(f"num_classes must be positive, got {num_classes}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self._batch_checked = False

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
        selection: torch.Generator | None = None, estimation: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Cohen's CERTIFY: (class, L2 radius), or (ABSTAIN, 0.0)."""
        cert = self.certify_detailed(x, n0, n, alpha, batch_size, selection, estimation)
        return cert.prediction, cert.radius

    def certify_detailed(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
        selection: torch.Generator | None = None, estimation: torch.Generator | None = None,
    ) -> Certificate:
        check_sampling_args(n0, n, alpha, batch_size)
        # Selection and estimation use independent samples: reusing the selection
        # samples in the bound would make it invalid.
        c_a = int(self.sample_counts(x, n0, batch_size, selection).argmax())
        n_a = int(self.sample_counts(x, n, batch_size, estimation)[c_a])
        p_a_lower = lower_confidence_bound(n_a, n, alpha)
        if p_a_lower < 0.5:
            return Certificate(self.ABSTAIN, 0.0, n_a, p_a_lower)
        return Certificate(c_a, float(self.sigma * norm.ppf(p_a_lower)), n_a, p_a_lower)

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """Cohen's PREDICT: the top class, or ABSTAIN unless a binomial test separates
        it from the runner-up at level alpha."""
        check_sampling_args(None, n, alpha, batch_size)
        counts = self.sample_counts(x, n, batch_size, generator).cpu()
        top2 = counts.topk(min(2, self.num_classes))
        c1 = int(top2.values[0])
        c2 = int(top2.values[1]) if len(top2.values) > 1 else 0
        if binomtest(c1, c1 + c2, 0.5).pvalue > alpha:
            return self.ABSTAIN
        return int(top2.indices[0])

    @torch.inference_mode()
    def sample_counts(
        self, x: torch.Tensor, num: int, batch_size: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Class counts of f(x + d) over ``num`` noise draws, as a tensor on the model's device."""
        device = generator.device if generator is not None else self._device(x)
        x = x.to(device)
        self._check_model(x)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        # a seeded stream is drawn in the pieces every pefts sampler uses (the pool's fixed
        # and adaptive runs see the same noise); the global RNG as Cohen's code draws it,
        # one piece per batch
        ends = None if generator is not None else np.cumsum(batch_sizes(num, batch_size))
        stream = NoiseStream(generator, x.shape, num, device, ends)
        remaining = num
        found = torch.zeros((), dtype=torch.bool, device=device)
        while remaining > 0:
            size = min(batch_size, remaining)
            logits = self.base_classifier(x.unsqueeze(0) + stream.take(size) * self.sigma)
            found |= nonfinite(logits)  # read once, at the end: no sync per batch
            counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)
            remaining -= size
        refuse_nonfinite(self.base_classifier, found)
        return counts

    def _check_model(self, x: torch.Tensor) -> None:
        refuse_training_mode(self.base_classifier)
        if not self._batch_checked:  # once per Smooth: it costs a few forward passes
            refuse_batch_dependence(self.base_classifier, x, self.sigma)
            self._batch_checked = True

    def _device(self, x: torch.Tensor) -> torch.device:
        param = next(iter(getattr(self.base_classifier, "parameters", lambda: [])()), None)
        return param.device if param is not None else x.device
