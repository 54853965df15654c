"""`pefts benchmark-precision`: what bf16 autocast changes in the diffusion row's
certificates, against fp32 (Carlini et al.'s precision).

The same images are certified three times with Cohen's fixed n: fp32 and bf16 on the
same noise (seed 0), and fp32 again on other noise (seed 1). The bf16 run's departure
from fp32 on the same noise is the precision's effect; the two fp32 runs' departure
from each other is sampling error, the yardstick. On the same noise, the votes that
bf16 flips are counted directly.

The model is a diffusion denoiser of the CIFAR-10 release's code path (improved-
diffusion's UNet with its cosine 4,000-step schedule and timestep rescaling; small
widths by default, the released size with ``full_size``) with random weights, then a
tiny random ViT; images are random, each labelled with the fp32 model's prediction on
the clean image, so that "certified" means the smoothed prediction kept that label.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from pefts.certification.fastpath import executed
from pefts.certification.noise import ESTIMATION, generator
from pefts.certification.rows import CERTIFY_COLUMNS, certify_rows

RELEASE = "improved-diffusion-cifar10-uncond"
# the released UNet's structure at a fraction of its width and depth (CPU-sized)
SMALL_UNET = dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(16,))
NUM_CLASSES = 10
SIDE = 8  # CPU bf16 autocast is emulated and slow: small images keep the run in minutes


def diffusion_model(seed: int, full_size: bool = False) -> nn.Module:
    """Random-weight diffusion denoiser + tiny ViT, as the diffusion method builds them."""
    from pefts.methods.diffusion import DiffusionClassifier, DiffusionDenoiser
    from pefts.models.classifier import BaseSpec, build_classifier
    from pefts.models.diffusion.releases import get_release
    from pefts.models.diffusion.schedules import alphas_cumprod
    from pefts.models.diffusion.unet import UNet, UNetConfig

    release = get_release(RELEASE)
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(**{**release.unet, **({} if full_size else SMALL_UNET)}))
    with torch.no_grad():  # the authors zero the output convs at init: a trained model has none
        for p in unet.parameters():
            p.normal_(0, 0.05)
    denoiser = DiffusionDenoiser(unet, alphas_cumprod(release.schedule, release.steps),
                                 release.timestep_scale)
    base = build_classifier(BaseSpec("vit_tiny_patch16_224", NUM_CLASSES, SIDE, model_kwargs=dict(
        img_size=SIDE, patch_size=8, embed_dim=32, depth=1, num_heads=2)))
    return DiffusionClassifier(denoiser, base, base.spec.input_size).eval()


@dataclass
class PrecisionComparison:
    table: pd.DataFrame
    summary: list[str]


def compare_precisions(images: int, sigma: float, n: int, n0: int, alpha: float, batch: int,
                       radii: list[float], seed: int, device: torch.device,
                       full_size: bool = False, flip_samples: int = 1000) -> PrecisionComparison:
    """Certify ``images`` random images under fp32 and bf16 (same noise) and fp32 on
    other noise; count the votes bf16 flips on ``flip_samples`` noisy copies of each."""
    model = diffusion_model(seed, full_size).to(device)
    model.denoiser.set_sigma(sigma)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.rand(images, 3, SIDE, SIDE, generator=gen)
    fp32, bf16 = executed(model, "fp32"), executed(model, "bf16")
    with torch.no_grad():
        labels = fp32(xs.to(device)).argmax(1).cpu()
    dataset = [(x, int(y)) for x, y in zip(xs, labels, strict=True)]
    runs = {}
    for name, net, noise_seed in (("fp32", fp32, 1000 + seed), ("bf16", bf16, 1000 + seed),
                                  ("fp32, other noise", fp32, 2000 + seed)):
        rows = certify_rows(net, dataset, NUM_CLASSES, sigma, n0, n, alpha, batch, noise_seed,
                            device)(list(range(images)))
        frame = pd.DataFrame(list(rows), columns=CERTIFY_COLUMNS)
        frame["radius"] = frame["radius"].astype(float)
        runs[name] = frame
    table = pd.DataFrame({"measure": [f"certified r={r:g}" for r in radii]
                          + ["abstained", "mean nA"]})
    for name, frame in runs.items():
        counts = [int(((frame["correct"] == 1) & (frame["radius"] >= r)).sum()) for r in radii]
        table[name] = [*counts, int((frame["predict"] == -1).sum()), round(frame["nA"].mean(), 1)]

    flipped = total = 0
    with torch.no_grad():
        for idx, (x, _) in enumerate(dataset):
            noise = torch.randn((flip_samples, *x.shape), generator=generator(seed, idx, ESTIMATION, "cpu"))
            noisy = (x.unsqueeze(0) + sigma * noise).to(device)
            for start in range(0, flip_samples, batch):
                part = noisy[start:start + batch]
                flipped += int((fp32(part).argmax(1) != bf16(part).argmax(1)).sum())
                total += len(part)

    def moved(a: str, b: str) -> tuple[float, int]:
        gap = (runs[a]["nA"] - runs[b]["nA"]).abs()
        return float(gap.mean()), int((runs[a]["radius"] - runs[b]["radius"]).abs().gt(0).sum())

    same, other = moved("bf16", "fp32"), moved("fp32, other noise", "fp32")
    widest = lambda col: int((table[col][:len(radii)] - table["fp32"][:len(radii)]).abs().max())  # noqa: E731
    summary = [
        f"Votes bf16 flips against fp32 on the same noise: {flipped:,} of {total:,} "
        f"({flipped / total:.2%}).",
        f"Same noise, bf16 against fp32: nA moves by {same[0]:.2f} on average per image "
        f"(radius changed on {same[1]} of {images} images); certified counts differ by at most "
        f"{widest('bf16')} at any radius.",
        f"Other noise, fp32 against fp32 (sampling error): nA moves by {other[0]:.2f} on average "
        f"(radius changed on {other[1]} of {images}); certified counts differ by at most "
        f"{widest('fp32, other noise')}.",
    ]
    return PrecisionComparison(table, summary)
