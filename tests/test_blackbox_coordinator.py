"""BlackVIP's coordinator writes a full-resolution prompt that varies inside the image
(not a per-channel colour shift with structure only at the border), and SPSA-GC takes
its gradient estimate at the Nesterov look-ahead point, as BlackVIP defines it
(convergence on a quadratic: tests/test_baselines.py)."""

from __future__ import annotations

import pytest
import torch

from pefts.blackbox import SPSA, Coordinator, SPSAConfig


def randomise_last_layer(coordinator: Coordinator) -> None:
    """The decoder starts from a zero prompt; a random decoder has a random last layer."""
    last = coordinator.decoder[-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


def interior_and_border_std(prompt: torch.Tensor, cells: int) -> tuple[float, float]:
    """Mean over images and channels of the prompt's spatial std over ``cells`` x
    ``cells`` blocks (block means: the stride-2 stages' fine checkerboard, which even a
    constant input makes, averages out), inside the image and on its outer ring."""
    blocks = torch.nn.functional.adaptive_avg_pool2d(prompt, cells)
    inside = blocks[..., 1:-1, 1:-1].flatten(2)
    mask = torch.ones(cells, cells, dtype=torch.bool)
    mask[1:-1, 1:-1] = False
    edge = blocks[..., mask]
    return float(inside.std(-1).mean()), float(edge.std(-1).mean())


@pytest.mark.parametrize("encoder,size,grid,stages", [
    ("vit_tiny_patch16_224", 224, 7, 5),  # the presets' shape: CLS vector, 7 -> 224
    ("conv", 32, 8, 2),                   # the embedded default's conv encoder
])
def test_prompt_varies_inside_the_image_as_at_its_border(encoder, size, grid, stages):
    coordinator = Coordinator(3, trigger=16, hidden=8, grid=grid, encoder=encoder,
                              encoder_pretrained=False, stages=stages).eval()
    randomise_last_layer(coordinator)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prompt = coordinator(x)
    assert prompt.shape == x.shape
    inside, edge = interior_and_border_std(prompt, cells=grid)
    assert inside > 0.3 * edge and inside > 1e-3, (inside, edge)
    # image-dependent: another image gets another prompt
    assert (prompt[0] - prompt[1]).abs().mean() > 1e-4


def test_the_presets_decoder_is_blackvips_size():
    coordinator = Coordinator(3, trigger=800, hidden=8, grid=7, encoder="vit_tiny_patch16_224",
                              encoder_pretrained=False, stages=5)
    # vit_tiny's CLS is 192-d: (192 + 800) / 49 -> 21 channels of 7 x 7, then 5 stages
    assert coordinator.decoder[0].in_channels == 21
    assert [layer.stride for layer in coordinator.decoder] == [(2, 2)] * 5
    trained = sum(p.numel() for p in coordinator.learnable())
    assert trained < 12_000  # BlackVIP's coordinator trains about 10k parameters


def test_spsa_estimates_the_gradient_at_the_look_ahead_point():
    points: list[torch.Tensor] = []

    def loss(theta: torch.Tensor) -> float:
        points.append(theta.clone())
        return float((theta ** 2).sum())

    config = SPSAConfig(a=0.1, c=0.01, gamma=0.0, momentum=0.9, perturbations=1)
    optimiser = SPSA(torch.tensor([1.0, -2.5, 3.7]), config, torch.Generator().manual_seed(0))
    history = [optimiser.theta.clone()]
    for _ in range(4):
        optimiser.step(loss)
        history.append(optimiser.theta.clone())
    for k in range(1, 4):  # each step's query pair is centred at theta_k + beta * m_k
        centre = (points[2 * k] + points[2 * k + 1]) / 2
        velocity = history[k] - history[k - 1]
        assert torch.allclose(centre, history[k] + 0.9 * velocity, atol=1e-6)
        assert not torch.allclose(centre, history[k], atol=1e-3)



def test_a_prompt_decoded_larger_than_the_image_runs_under_bf16_autocast():
    """The presets certify in bf16: CIFAR's prompt is decoded at 224 and shrunk to 32 with
    an antialiased resize, which torch's CPU kernels refuse in bf16."""
    coordinator = Coordinator(grid=7, stages=5).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        prompt = coordinator(x)
    assert prompt.shape == x.shape and torch.isfinite(prompt).all()
