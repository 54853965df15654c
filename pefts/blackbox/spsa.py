"""SPSA-GC (Spall 1992; BlackVIP's gradient-corrected variant): zeroth-order descent
that needs only loss values, never a gradient of the model being queried."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pefts.errors import PeftsError

Loss = Callable[[torch.Tensor], float]


@dataclass(frozen=True)
class SPSAConfig:
    a: float = 0.01  # step size a_k = a / (k + 1)^p
    p: float = 0.4
    c: float = 0.01  # perturbation size c_k = c / (k + 1)^gamma
    gamma: float = 0.1
    momentum: float = 0.9
    perturbations: int = 5  # gradient estimates averaged per step

    def step_size(self, k: int) -> float:
        return self.a / (k + 1) ** self.p

    def perturbation_size(self, k: int) -> float:
        return self.c / (k + 1) ** self.gamma


def rademacher(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random signs of ``like``'s shape, drawn where ``generator`` lives (a CPU generator
    gives the same signs whatever device ``like`` is on)."""
    where = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, like.shape, generator=generator, device=where).to(like.device)
    return (bits * 2 - 1).to(like.dtype)


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
        self.velocity = torch.zeros_like(self.theta)
        self.generator = generator
        self.k = 0

    def gradient(self, loss: Loss, at: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Two-sided estimate at ``at``, averaged over the perturbations, and the mean
        loss seen."""
        c_k = self.config.perturbation_size(self.k)
        grad = torch.zeros_like(self.theta)
        seen = 0.0
        for _ in range(self.config.perturbations):
            delta = rademacher(self.theta, self.generator)
            plus, minus = loss(at + c_k * delta), loss(at - c_k * delta)
            grad += (plus - minus) / (2 * c_k) * delta
            seen += plus + minus
        return grad / self.config.perturbations, seen / (2 * self.config.perturbations)

    def step(self, loss: Loss) -> float:
        """BlackVIP's gradient correction (Nesterov): estimate the gradient at the
        look-ahead point theta + beta m, then m <- beta m - a_k g, theta <- theta + m."""
        beta = self.config.momentum
        grad, mean_loss = self.gradient(loss, self.theta + beta * self.velocity)
        self.velocity = beta * self.velocity - self.config.step_size(self.k) * grad
        self.theta = self.theta + self.velocity
        self.k += 1
        return mean_loss


def minimize(loss: Loss, theta: torch.Tensor, steps: int, config: SPSAConfig | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``steps`` SPSA-GC steps on a fixed loss and return the final parameters."""
    optimiser = SPSA(theta, config, generator)
    for _ in range(steps):
        optimiser.step(loss)
    return optimiser.theta
