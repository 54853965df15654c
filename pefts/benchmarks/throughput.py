"""`pefts benchmark`: how much smoothing costs on top of the network's own forward pass.

Four figures from one run, on one input, with one batch schedule:

* raw forward: ``model(batch)`` on pre-drawn noisy inputs, the ceiling any sampler can reach;
* ``Smooth.sample_counts``: our sampler (noise drawn and counts kept on the device);
* a Cohen-style loop, a copy of ``_sample_noise``/``_count_arr`` from Cohen et al.'s
  ``core.py`` (counts on the host after every batch), kept here only as the yardstick;
* ``Smooth.certify`` end to end (n0 selection + n estimation samples) for one image;
* the pipeline's pool certifier at fixed n on the same image (on the 8-bit grid), in
  the standard and in the sound mode (``pefts.certification.sound``), side by side.

Every figure is the best (shortest) of ``repeats`` timed runs after one untimed warm-up;
the median is reported beside it so noisy machines show up as a gap between the two.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pefts.certification.adaptive import fixed_plan
from pefts.certification.pool import Pool
from pefts.certification.smoothing import Smooth, batch_sizes
from pefts.data.grid import quantised
from pefts.errors import PeftsError
from pefts.models.classifier import count_parameters

RAW = "raw forward (inference_mode)"
SAMPLER = "Smooth.sample_counts"
COHEN = "Cohen-style loop (host counts)"
CERTIFY = "Smooth.certify (n0 + n, one image)"
POOL = "pool certifier, standard (n0 + n, one image)"
SOUND = "pool certifier, sound (n0 + n, one image)"
ROWS = (RAW, SAMPLER, COHEN, CERTIFY, POOL, SOUND)
COLUMNS = ("measure", "samples", "best_s", "median_s", "samples_per_s", "vs_raw_forward")

BUILTIN_NAME = "built-in tiny ViT (random weights)"
BUILTIN_SIGMA = 0.25  # the noise level does not change the cost of a forward pass


@dataclass
class Subject:
    """The classifier under test and the single image it is smoothed at."""

    net: nn.Module
    num_classes: int
    sigma: float
    x: torch.Tensor
    name: str


@dataclass
class BenchmarkResult:
    table: pd.DataFrame
    device: str
    threads: int
    subject: str
    batch: int
    n: int
    n0: int
    repeats: int

    def _row(self, measure: str) -> pd.Series:
        return self.table.set_index("measure").loc[measure]

    @property
    def overhead_ratio(self) -> float:
        """Sampler throughput over raw forward throughput: 1.0 means smoothing is free."""
        return float(self._row(SAMPLER)["samples_per_s"] / self._row(RAW)["samples_per_s"])

    @property
    def speedup_vs_cohen(self) -> float:
        return float(self._row(SAMPLER)["samples_per_s"] / self._row(COHEN)["samples_per_s"])

    @property
    def sound_ratio(self) -> float:
        """Sound over standard certifier throughput: 1.0 means soundness is free."""
        return float(self._row(SOUND)["samples_per_s"] / self._row(POOL)["samples_per_s"])

    @property
    def certify_seconds_per_image(self) -> float:
        return float(self._row(CERTIFY)["best_s"])

    def header(self) -> str:
        return (f"device: {self.device}; torch threads: {self.threads}; model: {self.subject}; "
                f"batch {self.batch}, n {self.n}, n0 {self.n0}; best of {self.repeats} repeat(s)")

    def summary(self) -> str:
        return (f"certifier/raw forward = {self.overhead_ratio:.3f}, "
                f"certifier/Cohen-style = {self.speedup_vs_cohen:.2f}x, "
                f"certify = {self.certify_seconds_per_image:.3f} s/image "
                f"(n0={self.n0}, n={self.n}; best of {self.repeats}), "
                f"sound/standard certifier = {self.sound_ratio:.3f}")


def builtin_subject(device: torch.device, num_classes: int = 10) -> Subject:
    """A small timm ViT on 3x8x8 images, so the benchmark needs no files."""
    from pefts.models.classifier import BaseSpec, build_classifier

    torch.manual_seed(0)  # same weights and image every run, so runs are comparable
    spec = BaseSpec("vit_tiny_patch16_224", num_classes, 8,
                    model_kwargs=dict(img_size=8, patch_size=2, embed_dim=64, depth=4,
                                      num_heads=4))
    net = build_classifier(spec).to(device).eval()
    return Subject(net, num_classes, BUILTIN_SIGMA, torch.rand(3, 8, 8, device=device),
                   BUILTIN_NAME)


def artifact_subject(model: str | Path, base: str | Path, device: torch.device,
                     image_size: int | None = None) -> Subject:
    """A fine-tuned artifact on one random image; the artifact does not record the data's
    native resolution, so it defaults to the size the network sees."""
    from pefts.methods import load_model
    from pefts.runtime.artifacts import load_meta

    net, meta = load_model(model, base, device)
    spec = load_meta(base)["spec"]
    side = image_size or int(spec["input_size"])
    channels = int(spec.get("model_kwargs", {}).get("in_chans", 3))
    torch.manual_seed(0)
    x = torch.rand(channels, side, side, device=device)
    return Subject(net, int(meta["num_classes"]), float(meta.get("sigma", BUILTIN_SIGMA)), x,
                   f"{Path(model).name} ({meta.get('method')}) on {channels}x{side}x{side}")


def count_arr(arr: np.ndarray, length: int) -> np.ndarray:
    """Cohen et al.'s ``_count_arr``, kept as written: a Python loop over host predictions."""
    counts = np.zeros(length, dtype=int)
    for idx in arr:
        counts[idx] += 1
    return counts


def cohen_sample_counts(net: nn.Module, x: torch.Tensor, num: int, batch_size: int,
                        sigma: float, num_classes: int) -> np.ndarray:
    """Cohen et al.'s ``_sample_noise``: global RNG, no_grad, and a host copy per batch.

    It draws from the global generator with ``randn_like`` on a batch of the same shape as
    ``Smooth.sample_counts`` does with ``generator=None``, so after the same
    ``torch.manual_seed`` both see identical noise and must return identical counts.
    """
    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        for size in batch_sizes(num, batch_size):
            batch = x.repeat((size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = net(batch + noise).argmax(1)
            counts += count_arr(predictions.cpu().numpy(), num_classes)
        return counts


def synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this the timer stops before the work does
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:  # platform.processor() is often empty on Linux; /proc/cpuinfo names the CPU
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device} ({model})" if model else str(device)


def run_benchmark(subject: Subject, device: torch.device, batch: int = 1000, n: int = 10000,
                  n0: int = 100, repeats: int = 3, alpha: float = 0.001,
                  seed: int = 0) -> BenchmarkResult:
    """Time the four measures on ``subject`` and return the table with its context."""
    if min(batch, n, n0, repeats) < 1:
        raise PeftsError("batch, n, n0 and repeats must all be at least 1")
    net, x, sigma = subject.net.eval(), subject.x.to(device), subject.sigma
    smooth = Smooth(net, subject.num_classes, sigma)
    schedule = batch_sizes(n, batch)
    # Inputs for the raw row are drawn once, outside the timer: that row is the network
    # alone, the ceiling for any sampler that must also draw noise and count.
    noisy = x.unsqueeze(0) + sigma * torch.randn((min(batch, n), *x.shape), device=device)

    @torch.inference_mode()
    def raw() -> None:
        for size in schedule:
            net(noisy[:size])

    def sampler() -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        smooth.sample_counts(x, n, batch, gen)

    def cohen() -> None:
        cohen_sample_counts(net, x, n, batch, sigma, subject.num_classes)

    def certify() -> None:
        selection = torch.Generator(device=device).manual_seed(seed)
        estimation = torch.Generator(device=device).manual_seed(seed + 1)
        smooth.certify(x, n0, n, alpha, batch, selection, estimation)

    plan, on_grid = fixed_plan(sigma, alpha, n), quantised(x)

    def pooled(sound: bool) -> Callable[[], None]:
        def run() -> None:
            pool = Pool(net, subject.num_classes, plan, n0, seed, device, batch, 1, sound)
            list(pool.run([(0, on_grid, 0)]))
        return run

    measures: dict[str, tuple[Callable[[], None], int]] = {
        RAW: (raw, n), SAMPLER: (sampler, n), COHEN: (cohen, n), CERTIFY: (certify, n0 + n),
        POOL: (pooled(False), n0 + n), SOUND: (pooled(True), n0 + n)}
    # A warm-up pass absorbs one-off costs (allocator growth, kernel selection, lazy init)
    # that would otherwise land on whichever measure happens to run first.
    for fn, _ in measures.values():
        fn()
    # Repeats go round-robin rather than measure by measure, so slow drift of the machine
    # (turbo clocks, a neighbour's load) spreads over all rows instead of biasing one.
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, (fn, _) in measures.items():
            times[name].append(timed(fn, device))

    raw_rate = n / min(times[RAW])
    rows = []
    for name, (_, samples) in measures.items():
        best = min(times[name])
        rate = samples / best
        rows.append({"measure": name, "samples": samples, "best_s": best,
                     "median_s": statistics.median(times[name]), "samples_per_s": rate,
                     "vs_raw_forward": rate / raw_rate})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return BenchmarkResult(table, device_name(device), torch.get_num_threads(), subject.name,
                           batch, n, n0, repeats)


def to_markdown(table: pd.DataFrame) -> str:
    # per column: seconds keep 4 significant digits, rates read best as whole numbers
    return table.to_markdown(index=False, floatfmt=("", "", ".4g", ".4g", ",.0f", ".3f")) + "\n"


def named_subject(arch: str, num_classes: int, image_size: int, method: str, device: torch.device,
                  sigma: float = BUILTIN_SIGMA) -> Subject:
    """A random-weight timm model by name (no download), optionally wrapped by a PEFT method,
    so a GPU machine can time e.g. ViT-B/16 with LoRA without any files."""
    from pefts.methods import build_model, get_method
    from pefts.models.classifier import BaseSpec, build_classifier

    torch.manual_seed(0)
    spec = BaseSpec(arch, num_classes, 224 if "224" in arch else image_size)
    classes = [str(c) for c in range(num_classes)]
    net = build_model(get_method(method), build_classifier(spec), classes, classes)
    x = torch.rand(3, image_size, image_size, device=device)
    return Subject(net.to(device).eval(), num_classes, sigma, x,
                   f"{arch} ({method}, random weights) on 3x{image_size}x{image_size}")


DIFFUSION = "raw forward, diffusion denoiser in front"


def diffusion_denoiser(weights: str | Path | None, release: str | None) -> nn.Module:
    """The denoiser to time: a diffusers folder, a released checkpoint file (``release``
    names its architecture), or, with a release and no file, that architecture with
    random weights (a UNet pass costs the same whatever its weights; nothing is fetched)."""
    from pefts.methods.diffusion import RELEASE_NAMES, DiffusionDenoiser, load_unet

    if release is None:
        if Path(weights).is_file():
            raise PeftsError(f"--diffusion {weights} is a file: without --diffusion-release it "
                             "must be a diffusers folder (UNet2DModel and scheduler configs); a "
                             "released checkpoint file needs --diffusion-release, one of "
                             f"{', '.join(RELEASE_NAMES)}")
        return DiffusionDenoiser(*load_unet(weights))
    from pefts.models.diffusion.loading import load_release

    return DiffusionDenoiser(*load_release(weights, release))


def add_diffusion_row(result: BenchmarkResult, subject: Subject, denoiser: nn.Module,
                      device: torch.device) -> BenchmarkResult:
    """Time the raw forward pass with a diffusion denoiser (one UNet pass per sample, the
    dominant cost of diffusion denoised smoothing) in front of the subject's network,
    with the same batch schedule, and add it to the table beside the plain forward."""
    from pefts.methods.denoiser import DenoisedClassifier

    denoiser = denoiser.to(device)
    unet = denoiser.unet
    denoiser.set_sigma(subject.sigma)
    net = DenoisedClassifier(denoiser, subject.net).eval()
    x, n = subject.x.to(device), result.n
    schedule = batch_sizes(n, result.batch)
    noisy = x.unsqueeze(0) + subject.sigma * torch.randn((min(result.batch, n), *x.shape), device=device)

    @torch.inference_mode()
    def raw() -> None:
        for size in schedule:
            net(noisy[:size])

    raw()  # warm-up, as for the other rows
    times = [timed(raw, device) for _ in range(result.repeats)]
    plain = float(result.table.set_index("measure").loc[RAW, "samples_per_s"])
    rate = n / min(times)
    row = {"measure": f"{DIFFUSION} ({count_parameters(unet):,}-parameter UNet)",
           "samples": n, "best_s": min(times), "median_s": statistics.median(times),
           "samples_per_s": rate, "vs_raw_forward": rate / plain}
    result.table = pd.concat([result.table, pd.DataFrame([row])], ignore_index=True)
    return result
