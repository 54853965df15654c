"""SPSA-GC (Spall 1992; BlackVIP's gradient-corrected variant): zeroth-order descent
that needs only loss values, never a gradient of the model being queried.

As BlackVIP's trainer runs it (trainers/blackvip.py, forward_backward): the step k counts
from 1; a_k = a / (k + o)^alpha and c_k = c / k^gamma; the gradient estimate at the
current w is the mean over ``perturbations`` draws of (L(w + c_k D) - L(w - c_k D)) /
(2 c_k D), elementwise, D with entries +-U[0.5, 1] (segmented uniform: magnitude and
sign random); the correction m = g at k = 1, then m <- beta m + g; w <- w - a_k (g + beta m).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pefts.errors import PeftsError

Loss = Callable[[torch.Tensor], float]


@dataclass(frozen=True)
class SPSAConfig:
    """BlackVIP's SPSA_PARAMS [o, c, a, alpha, gamma] (``p`` is their alpha), MOMS (beta)
    and SP_AVG; the defaults are their configs/trainers/BLACKVIP/vit_b16.yaml."""

    a: float = 0.01  # step size a_k = a / (k + o)^p
    p: float = 0.4
    o: float = 1.0
    c: float = 0.01  # perturbation size c_k = c / k^gamma
    gamma: float = 0.1
    momentum: float = 0.9
    perturbations: int = 5  # gradient estimates averaged per step

    def step_size(self, k: int) -> float:
        return self.a / (k + self.o) ** self.p

    def perturbation_size(self, k: int) -> float:
        return self.c / k ** self.gamma


def segmented_uniform(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Entries +-U[0.5, 1]: magnitude (U[0, 1] + 1) / 2, then sign - with probability 1/2
    (BlackVIP's p_side and Bernoulli gather), drawn where ``generator`` lives (a CPU
    generator gives the same draws whatever device ``like`` is on)."""
    where = generator.device if generator is not None else like.device
    magnitude = (torch.rand(like.shape, generator=generator, device=where, dtype=like.dtype) + 1) / 2
    negative = torch.rand(like.shape, generator=generator, device=where) < 0.5
    return torch.where(negative, -magnitude, magnitude).to(like.device)


class SPSA:
    """One step per call to ``step(loss)``; ``loss`` must be the same function for all
    of a step's evaluations (same batch, same noise), so the paired differences
    measure the perturbation and nothing else."""

    def __init__(self, theta: torch.Tensor, config: SPSAConfig | None = None,
                 generator: torch.Generator | None = None):
        self.config = config or SPSAConfig()
        if self.config.perturbations < 1:
            raise PeftsError(f"perturbations must be >= 1, got {self.config.perturbations}")
        self.theta = theta.detach().clone()
        self.velocity = torch.zeros_like(self.theta)  # BlackVIP's m1
        self.generator = generator
        self.k = 0  # steps taken

    def gradient(self, loss: Loss, k: int) -> tuple[torch.Tensor, float]:
        """The estimate at theta for step ``k``, averaged over the perturbations, and the
        mean loss seen."""
        c_k = self.config.perturbation_size(k)
        grad = torch.zeros_like(self.theta)
        seen = 0.0
        for _ in range(self.config.perturbations):
            delta = segmented_uniform(self.theta, self.generator)
            plus, minus = loss(self.theta + c_k * delta), loss(self.theta - c_k * delta)
            grad += (plus - minus) / (2 * c_k * delta)
            seen += plus + minus
        return grad / self.config.perturbations, seen / (2 * self.config.perturbations)

    def step(self, loss: Loss) -> float:
        k = self.k + 1
        beta = self.config.momentum
        grad, mean_loss = self.gradient(loss, k)
        self.velocity = grad if k == 1 else beta * self.velocity + grad
        self.theta = self.theta - self.config.step_size(k) * (grad + beta * self.velocity)
        self.k = k
        return mean_loss


def minimize(loss: Loss, theta: torch.Tensor, steps: int, config: SPSAConfig | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``steps`` SPSA-GC steps on a fixed loss and return the final parameters."""
    optimiser = SPSA(theta, config, generator)
    for _ in range(steps):
        optimiser.step(loss)
    return optimiser.theta
