"""The fast path gives the same predictions (docs/fastpath.md): each method's tiny model
with perturbed trained parts, on a fixed batch of noisy inputs, eager against compiled
(bf16 both) and fp32 against bf16. Compiling on a CPU takes a minute a model: slow tier."""

from __future__ import annotations

import pytest
import torch

from pefts.certification.fastpath import executed
from pefts.methods import get_method
from tests.test_methods import ROUND_TRIP_HPARAMS, small_base

# methods built from the base alone (the black box and the diffusion row need external
# networks: docs/fastpath.md says what was checked for them)
METHODS = ["none", "lora", "prompt", "adapter", "full", "denoiser", "sunet"]


def perturbed(method: str) -> torch.nn.Module:
    peft = get_method(method, **ROUND_TRIP_HPARAMS.get(method, {}))
    model = peft.build(small_base())
    torch.manual_seed(3)  # trained parts away from their (often identity) initial values
    with torch.no_grad():
        for t in peft.trainable_state(model).values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    return model.eval()


def predictions(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        out = model(x).float()
    return out.argmax(1), out


def noisy_batch(n: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 8, 8, generator=gen)
    return x + 0.25 * torch.randn(n, 3, 8, 8, generator=gen)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


# compiled: the hand-written wrappers (deep prompts, adapters, merged LoRA); a compile costs
# a minute of CPU, and the plain timm ViT (none, full) and the denoisers' convolutions
# have no code of ours between Dynamo and the library's modules
COMPILED = ["lora", "prompt", "adapter"]


def test_bf16_predicts_as_eager_fp32():
    x = noisy_batch()
    for method in METHODS:
        model = perturbed(method)
        fp32, fp32_logits = predictions(executed(model, "fp32"), x)
        bf16, bf16_logits = predictions(executed(model, "bf16", merge=method == "lora"), x)
        # bf16 keeps 8 bits of mantissa: logits within a few hundredths, predictions equal
        # but for near-ties
        scale = 1.0 + float(fp32_logits.abs().max())
        assert float((bf16_logits - fp32_logits).abs().max()) < 0.05 * scale, method
        assert agreement(bf16, fp32) >= 0.95, method


@pytest.mark.slow
@pytest.mark.parametrize("method", COMPILED)
def test_compiled_predicts_as_eager_bf16(method, tmp_path):
    x = noisy_batch()
    model = perturbed(method)
    fp32, fp32_logits = predictions(executed(model, "fp32"), x)
    bf16, bf16_logits = predictions(executed(model, "bf16", merge=method == "lora"), x)
    fast, fast_logits = predictions(
        executed(model, "bf16", compile_net=True, compile_cache=tmp_path / "cc"), x)
    scale = 1.0 + float(fp32_logits.abs().max())
    assert float((fast_logits - bf16_logits).abs().max()) < 0.05 * scale
    assert agreement(fast, bf16) >= 0.95
