"""What the bound assumes of the base classifier, checked where the certifier runs.

The Clopper-Pearson bound needs the predictions f(x + d) to be independent draws: a
model in training mode (dropout, BatchNorm batch statistics) or one whose output for a
sample depends on the rest of its batch breaks that, whatever the method. A NaN logit
has no argmax (torch returns its index), so a vote on it would be a number made up.
"""

from __future__ import annotations

import torch

from pefts.errors import PeftsError


def refuse_training_mode(model: object) -> None:
    if isinstance(model, torch.nn.Module):
        training = next((name or type(model).__name__ for name, m in model.named_modules()
                         if m.training), None)
        if training is not None:
            raise PeftsError(f"cannot certify a model in training mode ({training} is "
                             "training): call .eval() first")


@torch.inference_mode()
def refuse_batch_dependence(model: object, x: torch.Tensor, sigma: float,
                            probe: torch.Tensor | None = None) -> None:
    """Compare a small noisy batch (default: 4 Gaussian samples around x) with its samples
    run one by one."""
    if probe is None:
        gen = torch.Generator(device=x.device).manual_seed(0)  # leaves the callers' streams alone
        probe = x.unsqueeze(0) + torch.randn((4, *x.shape), generator=gen, device=x.device) * sigma
    batched = model(probe).float()
    alone = torch.cat([model(probe[i:i + 1]) for i in range(len(probe))]).float()
    # loose enough for batched vs single kernels (TF32, bf16), far below a batch effect
    tolerance = 1e-2 * (1.0 + float(alone.abs().max()))
    if float((batched - alone).abs().max()) > tolerance:
        raise PeftsError("the model's output for one input depends on the rest of its batch "
                         "(batch statistics?): randomized smoothing needs independent samples")


def model_name(model: object) -> str:
    """The caller's network's class name, under pefts's wrappers (autocast, compile)."""
    from pefts.certification.fastpath import Executed

    while isinstance(model, Executed) or isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        model = model.net if isinstance(model, Executed) else model._orig_mod
    return type(model).__name__


def nonfinite(logits: torch.Tensor) -> torch.Tensor:
    """Whether any logit is NaN or infinite, as a tensor on their device: reading it
    back would cost a sync per batch, so callers gather it and read it where they sync."""
    return ~torch.isfinite(logits).all()


def refuse_nonfinite(model: object, found: torch.Tensor | bool) -> None:
    if bool(found):
        raise PeftsError(f"the model ({model_name(model)}) returned non-finite logits (NaN or "
                         "inf) for noisy inputs: they are no votes, so certification stopped "
                         "(fp16 overflow? try precision fp32)")
