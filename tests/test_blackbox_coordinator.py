"""BlackVIP's coordinator, prompt placement and SPSA-GC, checked against references
written here from BlackVIP's code (changdaeoh/BlackVIP: trainers/visual_prompters.py
DecoderManual and Coordinator, trainers/blackvip.py CustomCLIP.forward and
forward_backward, trainers/utils.py clip_clipping)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from pefts.methods.blackbox import assign
from pefts.models.blackbox import SPSA, Coordinator, SPSAConfig
from pefts.models.blackbox.coordinator import Frame, PromptedClassifier
from pefts.models.blackbox.query import QueryModel
from tests.fixtures_baselines import preset_blackbox

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def presets_coordinator(preset: str = "configs/imagenet-vitb16.yaml") -> Coordinator:
    """The coordinator a preset builds (its MAE ViT-B/16 encoder with random weights)."""
    h = preset_blackbox(preset)
    return Coordinator(3, h["features"], h["trigger"], h["widths"], h["grid"], h["seed"],
                       h["encoder"], None, encoder_pretrained=False)


@pytest.fixture(scope="module")
def coordinator() -> Coordinator:
    return presets_coordinator()


@pytest.mark.parametrize("preset", ["configs/cifar10-vitb16.yaml", "configs/imagenet-vitb16.yaml"])
def test_the_presets_coordinator_trains_blackvips_9920_parameters(preset, coordinator):
    h = preset_blackbox(preset)
    assert (h["grid"], h["trigger"], list(h["widths"])) == (7, 800, [64, 64, 32, 32, 16])
    assert h["encoder"] == "vit_base_patch16_224.mae"
    trained = coordinator.learnable()
    assert sum(p.numel() for p in trained) == 9_920  # BlackVIP's Table 2: 9.9K (not Fu & Wang's)
    assert coordinator.trigger.numel() == 800
    assert sum(p.numel() for p in coordinator.decoder.parameters()) == 9_120
    trigger = coordinator.trigger.detach()
    assert 0 <= float(trigger.min()) and float(trigger.max()) <= 0.1


# BlackVIP's DecoderManual(768, 1568, arch='vit-mae-base'), its parameters in
# parameters_to_vector order: p_trigger (1, 800), then body's layers in order.
# ConvTranspose2d weights are (in, out / groups, k, k).
REFERENCE_SHAPES = [
    ("trigger", (1, 800)),
    ("ct0.w", (32, 2, 2, 2)), ("ct0.b", (64,)), ("pw0.w", (64, 64, 1, 1)),
    ("bn0.w", (64,)), ("bn0.b", (64,)),
    ("ct1.w", (64, 1, 2, 2)), ("ct1.b", (64,)), ("pw1.w", (64, 32, 1, 1)),
    ("bn1.w", (32,)), ("bn1.b", (32,)),
    ("ct2.w", (32, 1, 2, 2)), ("ct2.b", (32,)), ("pw2.w", (32, 32, 1, 1)),
    ("bn2.w", (32,)), ("bn2.b", (32,)),
    ("ct3.w", (32, 1, 2, 2)), ("ct3.b", (32,)), ("pw3.w", (32, 16, 1, 1)),
    ("bn3.w", (16,)), ("bn3.b", (16,)),
    ("out.w", (16, 3, 2, 2)),
]


def reference_decoder(w: torch.Tensor, z: torch.Tensor, stats: list | None) -> torch.Tensor:
    """BlackVIP's decoder equations on the flat vector w: cat(z, trigger) -> (N, 32, 7,
    7); per stage grouped 2x2 stride-2 transposed conv (groups 32, 64, 32, 32), 1x1
    transposed conv, BatchNorm (batch statistics when ``stats`` is None, else the given
    running mean/var), GELU; a last 2x2 stride-2 transposed conv to 3 channels."""
    t, at = {}, 0
    for name, shape in REFERENCE_SHAPES:
        size = torch.Size(shape).numel()
        t[name] = w[at:at + size].view(shape)
        at += size
    assert at == len(w) == 9_920
    n = len(z)
    h = torch.cat([z, t["trigger"].repeat(n, 1)], dim=1).reshape(n, -1, 7, 7)
    for i, groups in enumerate([32, 64, 32, 32]):
        h = F.conv_transpose2d(h, t[f"ct{i}.w"], t[f"ct{i}.b"], stride=2, groups=groups)
        h = F.conv_transpose2d(h, t[f"pw{i}.w"])
        if stats is None:
            mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        else:
            mean, var = stats[i]
        h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        h = F.gelu(h * t[f"bn{i}.w"].view(1, -1, 1, 1) + t[f"bn{i}.b"].view(1, -1, 1, 1))
    return F.conv_transpose2d(h, t["out.w"], stride=2)


def test_the_decoder_writes_blackvips_prompt_from_the_same_weights(coordinator):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(9_920, generator=gen) * 0.2
    z = torch.randn(4, 768, generator=gen)
    assign(coordinator.learnable(), w)
    coordinator.train()  # SPSA's mode: BatchNorm on the batch's statistics
    with torch.no_grad():
        ours = coordinator.decode(z, (224, 224))
    assert ours.shape == (4, 3, 224, 224)
    torch.testing.assert_close(ours, reference_decoder(w, z, None), rtol=1e-4, atol=1e-5)
    # evaluation: the running statistics (set to something other than their start)
    norms = [m for m in coordinator.decoder if isinstance(m, torch.nn.BatchNorm2d)]
    stats = []
    for bn in norms:
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    coordinator.eval()
    with torch.no_grad():
        ours = coordinator.decode(z, (224, 224))
    torch.testing.assert_close(ours, reference_decoder(w, z, stats), rtol=1e-4, atol=1e-5)
    # no output activation: the prompt is linear in the last layer's weights
    last = coordinator.decoder[-1].weight
    with torch.no_grad():
        last.mul_(20)
        torch.testing.assert_close(coordinator.decode(z, (224, 224)), 20 * ours)


def test_the_encoder_feature_is_the_mae_cls_of_the_last_hidden_state(coordinator):
    """Hugging Face's hidden_states[-1][:, 0] (BlackVIP): the last block's CLS before the
    final layernorm, read from the CLIP-normalised image as given."""
    import timm

    net = timm.create_model("vit_base_patch16_224.mae", pretrained=False, num_classes=0)
    net.load_state_dict(coordinator.encoder.net.state_dict(), strict=False)  # no final norm there
    for module in net.modules():  # HF's eps, as BlackVIP (test_authors_code checks that one)
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-12
    net.eval()
    u = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        last = net.forward_intermediates(u, indices=1, norm=False, return_prefix_tokens=True,
                                         output_fmt="NLC", intermediates_only=True)[0]
        expected = last[1][:, 0]  # (patch tokens, prefix tokens): the CLS
        torch.testing.assert_close(coordinator.encode(u), expected)


class Recorder(torch.nn.Module):
    """A black box that remembers what it was shown."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.mean((2, 3))[:, : self.classes]


def test_the_prompt_goes_on_the_clip_normalised_224_image_and_is_clipped_there():
    """CustomCLIP.forward: prompted = clip_clipping(image + P_EPS * prompt) on the
    normalised 224 image; a CIFAR image is upsampled (bicubic) to 224 first, and the
    prompt is computed from that (noisy) input itself."""
    coordinator = Coordinator(3, grid=7, widths=[4, 4, 4, 4, 4], trigger=8).eval()
    recorder = Recorder()
    eps = 0.3
    model = PromptedClassifier(coordinator, QueryModel(recorder),
                               Frame((224, 224), CLIP_MEAN, CLIP_STD), eps=eps)
    z = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.3
    with torch.no_grad():
        model(z)
        image = F.interpolate(z, size=(224, 224), mode="bicubic", align_corners=False)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        image = (image - mean) / std
        prompt = coordinator(image)  # the coordinator reads the normalised frame
        prompted = image + eps * prompt
        # clip_clipping's constants, as BlackVIP writes them
        low = torch.tensor([-1.79226253, -1.75209713, -1.48021977]).view(1, 3, 1, 1)
        high = torch.tensor([1.93033625, 2.07488384, 2.14589699]).view(1, 3, 1, 1)
        prompted = torch.maximum(torch.minimum(prompted, high), low)
    shown = recorder.seen[-1]  # the black box receives the [0,1] image of that
    assert shown.shape == (2, 3, 224, 224)
    torch.testing.assert_close((shown - mean) / std, prompted, rtol=1e-5, atol=1e-5)
    assert float(shown.min()) >= -1e-6 and float(shown.max()) <= 1 + 1e-6


def blackvip_spsa_gc(w: torch.Tensor, loss, steps: int, gen: torch.Generator,
                     o: float, c: float, a: float, alpha: float, gamma: float, b1: float,
                     sp_avg: int) -> torch.Tensor:
    """forward_backward of BlackVIP's trainer, written from its code; the perturbation
    drawn as ours does (magnitude (U + 1) / 2, then its sign) so the two runs see the
    same perturbations."""
    step, m1 = 0, None
    for _ in range(steps):
        step += 1  # run_epoch: self.step += 1 before forward_backward
        ak = a / ((step + o) ** alpha)
        ck = c / (step ** gamma)
        ghats = []
        for _ in range(sp_avg):
            p_side = (torch.rand(len(w), generator=gen) + 1) / 2
            flip = torch.rand(len(w), generator=gen) < 0.5
            perturb = torch.where(flip, -p_side, p_side)
            loss1, loss2 = loss(w + ck * perturb), loss(w - ck * perturb)
            ghats.append((loss1 - loss2) / ((2 * ck) * perturb))
        ghat = torch.stack(ghats).mean(0)
        m1 = b1 * m1 + ghat if step > 1 else ghat
        w = w - ak * (ghat + b1 * m1)
    return w


def test_three_spsa_gc_steps_match_blackvips_update_equations():
    target = torch.tensor([0.3, -1.0, 2.0, 0.5])

    def loss(theta: torch.Tensor) -> float:
        return float(((theta - target) ** 2 * torch.tensor([1.0, 3.0, 0.5, 2.0])).sum())

    config = SPSAConfig(a=0.05, p=0.4, o=1.0, c=0.01, gamma=0.2, momentum=0.9, perturbations=3)
    start = torch.tensor([1.0, 0.0, -1.0, 0.0])
    optimiser = SPSA(start, config, torch.Generator().manual_seed(7))
    for _ in range(3):
        optimiser.step(loss)
    expected = blackvip_spsa_gc(start.clone(), loss, 3, torch.Generator().manual_seed(7),
                                o=1.0, c=0.01, a=0.05, alpha=0.4, gamma=0.2, b1=0.9, sp_avg=3)
    assert optimiser.k == 3
    torch.testing.assert_close(optimiser.theta, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(optimiser.theta, start)


def test_the_spsa_estimate_is_unbiased_on_a_quadratic():
    """E[(L(w + cD) - L(w - cD)) / (2c D_i)] = grad_i L exactly for a quadratic, since the
    entries of D are independent with mean 0 (the c^2 terms cancel)."""
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]], dtype=torch.float64)
    b = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss(theta: torch.Tensor) -> float:
        return float(0.5 * theta @ A @ theta + b @ theta)

    draws = 40_000
    optimiser = SPSA(w, SPSAConfig(c=0.05, perturbations=draws), torch.Generator().manual_seed(0))
    estimate, _ = optimiser.gradient(loss, 1)
    true = A @ w + b
    # per draw, g_i - grad_i = sum_{j != i} grad_j D_j / D_i: its spread sets the tolerance
    spread = float(true.abs().sum()) * 2
    assert torch.all((estimate - true).abs() < 4 * spread / draws ** 0.5), (estimate, true)


def test_training_mode_batch_statistics_and_evaluation_is_per_image():
    """SPSA queries in training mode (BlackVIP's trainer), where a prompt depends on the
    batch; evaluation and certification in eval mode, a function of the one input."""
    coordinator = Coordinator(3, grid=2, widths=[8, 8], trigger=4)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        coordinator.train()
        assert not coordinator.encoder.training  # the frozen encoder never trains
        assert not torch.allclose(coordinator(x)[:1], coordinator(x[:1]), atol=1e-4)
        coordinator.eval()
        torch.testing.assert_close(coordinator(x)[:1], coordinator(x[:1]))


def test_a_prompt_decoded_at_another_size_runs_under_bf16_autocast():
    """A decoder whose map is not the frame's size is resized in fp32: torch's CPU
    antialiased resize has no bf16 kernel."""
    coordinator = Coordinator(grid=7, widths=[4, 4, 4]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        prompt = coordinator(x)
    assert prompt.shape == x.shape and torch.isfinite(prompt).all()


def test_presets_read_blackvips_hyper_parameters():
    """ImageNet: their ImageNet row (docs/configuration.md: moms 0.9, gamma 0.2, c 0.005,
    p_eps 0.3; a, alpha, o from vit_b16.yaml) and 500 epochs of 125 steps."""
    h = preset_blackbox("configs/imagenet-vitb16.yaml")
    assert {k: h[k] for k in ("a", "p", "o", "c", "gamma", "momentum", "perturbations", "eps",
                              "steps")} == dict(a=0.01, p=0.4, o=1.0, c=0.005, gamma=0.2,
                                                momentum=0.9, perturbations=5, eps=0.3,
                                                steps=62_500)
    with open("configs/imagenet-vitb16.yaml") as f:
        assert yaml.safe_load(f)["method_params"]["blackbox"]["train"]["batch_size"] == 128
