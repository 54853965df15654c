"""The network as the certifier executes it: precision, memory layout, compilation.

A certificate holds for the model as executed, so the precision is part of a run's
settings and rows. Noise and noisy inputs stay fp32; only the network runs under
autocast, which keeps the smoothing distribution exactly Gaussian.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from pefts.errors import PeftsError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Executed(nn.Module):
    """Runs ``net`` under autocast (bf16/fp16) and in channels-last layout if asked."""

    def __init__(self, net: nn.Module, precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        if precision not in PRECISIONS:
            raise PeftsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.net, self.precision, self.channels_last = net, precision, channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            return self.net(x).float()


def merge_lora(net: nn.Module) -> int:
    """Fold every peft LoRA layer into its base weight (inference only); returns how many.

    One Linear instead of base + two low-rank matmuls per projection; the outputs agree
    up to float rounding, which is why merging is an option recorded in the settings.
    """
    if "peft" not in sys.modules:  # no LoRA layer exists before peft is imported (1 s)
        return 0
    from peft.tuners.lora import LoraLayer

    merged = 0
    for module in net.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()
            merged += 1
    return merged


# Inductor's on-disk cache (FX graphs, generated kernels, Triton binaries) is this folder
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(folder: str | Path) -> Path:
    """Make torch.compile keep and reuse its compiled artifacts in ``folder`` (created).

    Every shard of a run compiles the same graph; by default Inductor caches it under the
    node's /tmp, which a shard on another node of a cluster never sees. In the run's
    folder (a shared filesystem) the first shard compiles and the others load: Dynamo
    still traces, but code generation and the C++/Triton builds are skipped. The cache
    is keyed by graph, torch version and device, so a stale or foreign entry is never
    used, only recompiled. Set before the first compilation of the process."""
    path = Path(folder).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PeftsError(f"compile cache folder {folder} cannot be created ({err.strerror})") from None
    os.environ[CACHE_ENV] = str(path)
    return path


def executed(net: nn.Module, precision: str = "fp32", channels_last: bool = False,
             compile_net: bool = False, merge: bool = False,
             compile_cache: str | Path | None = None) -> nn.Module:
    """The network with the fast-path options applied, in eval mode; compiled with its
    artifacts cached in ``compile_cache`` when given (``use_compile_cache``)."""
    net = net.eval()
    if merge:
        merge_lora(net)
    model: nn.Module = Executed(net, precision, channels_last).eval()
    return compiled(model, compile_cache) if compile_net else model


def compiled(model: nn.Module, compile_cache: str | Path | None = None) -> nn.Module:
    """``model`` compiled (lazily: the first call compiles), its artifacts kept in
    ``compile_cache`` when given."""
    if compile_cache is not None:
        use_compile_cache(compile_cache)
    return torch.compile(model, dynamic=True)

